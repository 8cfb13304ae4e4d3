"""spec.job as a way in (issue 11): image/ServiceAccount allow-lists, security contexts merged onto
the hardened defaults, the operator's labels winning; and the chart's jobDefaults (issue 13).
Plain builder tests; the admission of the built pod by a `restricted` namespace is in
test_e2e_job_policy.py."""

from __future__ import annotations

from typing import Any

import pytest

from mobackup.k8s import jobs, models

BACKUP = {"source": {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet", "name": "mo"}},
          "storageRef": {"name": "s3"}}
STORAGE = models.parse_storage({"s3": {"bucket": "bk", "credentialsSecretRef": {"name": "creds"}}})
OWNER = jobs.Owner("MOBackup", "nightly", "ns", "uid-1")
DEFAULTS = jobs.OperatorDefaults(image="reg/agent:1", service_account="job-sa")


def build(job: dict[str, Any], defaults: jobs.OperatorDefaults = DEFAULTS) -> dict[str, Any]:
    spec = models.parse_backup({**BACKUP, "job": job}, "ns")
    return jobs.backup_job(OWNER, spec, STORAGE, base_id=None, defaults=defaults)


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------- image, ServiceAccount

@pytest.mark.parametrize("job,field", [({"image": "evil/miner:latest"}, "spec.job.image"),
                                       ({"serviceAccountName": "cluster-admin-sa"}, "spec.job.serviceAccountName")])
def test_overrides_refused_by_default(job: dict[str, Any], field: str) -> None:
    with pytest.raises(jobs.JobPolicyError, match=f"{field} .* is not allowed: the operator allows no"):
        build(job)
    with pytest.raises(jobs.JobPolicyError, match="jobOverrides"):
        jobs.check_overrides(models.JobOverrides(job), DEFAULTS)


def test_overrides_allowed_by_the_allow_lists() -> None:
    d = jobs.OperatorDefaults.from_env({
        "MOBACKUP_AGENT_IMAGE": "reg/agent:1", "MOBACKUP_JOB_SERVICE_ACCOUNT": "job-sa",
        "MOBACKUP_JOB_ALLOWED_IMAGES": '["reg/agent:*", "mirror.local/mobackup@sha256:*"]',
        "MOBACKUP_JOB_ALLOWED_SERVICE_ACCOUNTS": '["backup-sa"]'})
    assert d.allowed_images == ("reg/agent:*", "mirror.local/mobackup@sha256:*")
    pod = pod_of(build({"image": "reg/agent:2", "serviceAccountName": "backup-sa"}, d))
    assert pod["containers"][0]["image"] == "reg/agent:2" and pod["serviceAccountName"] == "backup-sa"
    with pytest.raises(jobs.JobPolicyError, match=r"only images matching reg/agent:\*"):
        build({"image": "reg/other:2"}, d)
    with pytest.raises(jobs.JobPolicyError, match="only ServiceAccounts matching backup-sa"):
        build({"serviceAccountName": "default"}, d)
    # Naming the defaults is no override.
    pod = pod_of(build({"image": "reg/agent:1", "serviceAccountName": "job-sa"}))
    assert pod["containers"][0]["image"] == "reg/agent:1" and pod["serviceAccountName"] == "job-sa"


def test_allow_list_env_junk_allows_nothing() -> None:
    for junk in ("", "  ", "{}", "42"):
        assert jobs.OperatorDefaults.from_env({"MOBACKUP_JOB_ALLOWED_IMAGES": junk}).allowed_images == ()
    assert jobs.OperatorDefaults.from_env({"MOBACKUP_JOB_ALLOWED_IMAGES": "a:*, b:1"}).allowed_images == ("a:*", "b:1")


# ------------------------------------------------------------------------------- security contexts

def test_security_contexts_merge_onto_the_hardened_defaults() -> None:
    pod = pod_of(build({"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
                        "containerSecurityContext": {"readOnlyRootFilesystem": True,
                                                     "capabilities": {"drop": ["NET_RAW"]}}}))
    psc, csc = pod["securityContext"], pod["containers"][0]["securityContext"]
    assert psc == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                   "seccompProfile": {"type": "RuntimeDefault"}}
    assert csc["runAsNonRoot"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL", "NET_RAW"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The defaults when nothing is given.
    pod = pod_of(build({}))
    assert pod["securityContext"]["runAsUser"] == jobs.NON_ROOT_UID
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("job,message", [
    ({"securityContext": {"runAsUser": 0}}, r"securityContext.runAsUser: 0 \(root\)"),
    ({"containerSecurityContext": {"runAsUser": 0}}, r"containerSecurityContext.runAsUser: 0"),
    ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot: false"),
    ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
    ({"containerSecurityContext": {"privileged": True}}, "privileged"),
    ({"containerSecurityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}, "capabilities.add"),
    ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile.type 'Unconfined'"),
    ({"containerSecurityContext": {"procMount": "Unmasked"}}, "procMount"),
    # issue 18: what the restricted standard forbids beyond the above, and the defaults it does not demand
    ({"securityContext": {"runAsGroup": 0}}, r"securityContext.runAsGroup: 0 \(the root group\)"),
    ({"containerSecurityContext": {"runAsGroup": 0}}, r"containerSecurityContext.runAsGroup: 0"),
    ({"securityContext": {"fsGroup": 0}}, r"securityContext.fsGroup: 0"),
    ({"securityContext": {"supplementalGroups": [1000, 0]}}, r"securityContext.supplementalGroups: 0"),
    ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem: false"),
    ({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}, r"securityContext.seLinuxOptions"),
    ({"containerSecurityContext": {"seLinuxOptions": {"user": "system_u"}}},
     r"containerSecurityContext.seLinuxOptions"),
    ({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}, "appArmorProfile.type 'Unconfined'"),
    ({"containerSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}},
     r"containerSecurityContext.appArmorProfile"),
    ({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]}}, r"securityContext.sysctls"),
])
def test_security_contexts_never_weaken(job: dict[str, Any], message: str) -> None:
    with pytest.raises(jobs.JobPolicyError, match=message):
        build(job)
    with pytest.raises(jobs.JobPolicyError, match=message):
        jobs.check_overrides(models.JobOverrides(job), DEFAULTS)


def test_restricted_values_that_stay_allowed() -> None:
    pod = pod_of(build({"securityContext": {"runAsGroup": 1000, "supplementalGroups": [2000],
                                            "seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
                                            "appArmorProfile": {"type": "RuntimeDefault"}},
                        "containerSecurityContext": {"appArmorProfile": {"type": "Localhost",
                                                                         "localhostProfile": "mobackup"}}}))
    assert pod["securityContext"]["seLinuxOptions"]["type"] == "container_t"
    assert pod["containers"][0]["securityContext"]["appArmorProfile"]["type"] == "Localhost"


# ------------------------------------------------------------------------------- priority classes

@pytest.mark.parametrize("priority", ["system-node-critical", "system-cluster-critical", "high"])
def test_priority_class_refused_by_default(priority: str) -> None:
    with pytest.raises(jobs.JobPolicyError, match=f"spec.job.priorityClassName '{priority}' is not allowed: "
                                                  "the operator allows no priority class override"):
        build({"priorityClassName": priority})
    with pytest.raises(jobs.JobPolicyError, match=r"jobOverrides\.allowedPriorityClasses"):
        jobs.check_overrides(models.JobOverrides({"priorityClassName": priority}), DEFAULTS)


def test_priority_class_from_the_chart_or_its_allow_list() -> None:
    d = jobs.OperatorDefaults.from_env({"MOBACKUP_JOB_DEFAULTS": '{"priorityClassName": "backup"}',
                                        "MOBACKUP_JOB_ALLOWED_PRIORITY_CLASSES": '["batch-*"]'})
    assert d.allowed_priority_classes == ("batch-*",)
    assert pod_of(build({}, d))["priorityClassName"] == "backup"  # the chart's default
    assert pod_of(build({"priorityClassName": "backup"}, d))["priorityClassName"] == "backup"
    assert pod_of(build({"priorityClassName": "batch-low"}, d))["priorityClassName"] == "batch-low"
    with pytest.raises(jobs.JobPolicyError, match=r"only priority classes matching batch-\*"):
        build({"priorityClassName": "system-node-critical"}, d)


# ------------------------------------------------------------------------------- annotations

@pytest.mark.parametrize("key", ["container.apparmor.security.beta.kubernetes.io/agent",
                                 "seccomp.security.alpha.kubernetes.io/pod",
                                 "container.seccomp.security.alpha.kubernetes.io/agent",
                                 "security.alpha.kubernetes.io/unsafe-sysctls", "k8s.v1.cni.cncf.io/networks",
                                 "v1.multus-cni.io/default-network", "io.kubernetes.cri-o.Devices",
                                 "io.kubernetes.cri-o.userns-mode", "io.containerd.runc.v2"])
def test_sandbox_annotations_never_reach_the_pod(key: str) -> None:
    """Refused even when the chart allows every key: they change the pod's sandbox."""
    anything = jobs.OperatorDefaults(image="reg/agent:1", service_account="job-sa", allowed_annotations=("*",))
    escaped = key.replace(".", r"\.")
    with pytest.raises(jobs.JobPolicyError, match=rf"spec.job.annotations\['{escaped}'\] is not allowed"):
        build({"annotations": {key: "unconfined"}}, anything)
    with pytest.raises(jobs.JobPolicyError, match="sandbox"):
        jobs.check_overrides(models.JobOverrides({"annotations": {key: "x"}}), anything)


def test_only_plain_annotation_keys_unless_allow_listed() -> None:
    job = build({"annotations": {"team": "dba", "ticket_id": "42"}})
    assert job["spec"]["template"]["metadata"]["annotations"] == {"team": "dba", "ticket_id": "42"}
    for key in ("cluster-autoscaler.kubernetes.io/safe-to-evict", "example.com/x", "kubernetes.io/egress-bandwidth"):
        with pytest.raises(jobs.JobPolicyError, match=r"allows plain keys .* only .*jobOverrides\.allowedAnnotations"):
            build({"annotations": {key: "1"}})
    d = jobs.OperatorDefaults.from_env({"MOBACKUP_JOB_ALLOWED_ANNOTATIONS": '["cluster-autoscaler.kubernetes.io/*"]'})
    assert d.allowed_annotations == ("cluster-autoscaler.kubernetes.io/*",)
    evict = "cluster-autoscaler.kubernetes.io/safe-to-evict"
    assert build({"annotations": {evict: "false"}}, d)["spec"]["template"]["metadata"]["annotations"][evict] == "false"
    with pytest.raises(jobs.JobPolicyError, match="keys matching cluster-autoscaler"):
        build({"annotations": {"example.com/x": "1"}}, d)
    # The chart's podAnnotations are the administrator's: not limited.
    d = jobs.OperatorDefaults(job_defaults={"podAnnotations": {"sidecar.istio.io/inject": "false"}})
    assert build({}, d)["spec"]["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


# ------------------------------------------------------------------------------- no API access

def test_job_pods_get_no_api_token_and_patch_nothing() -> None:
    """Issue 18: the pod reports through its termination message only (no token, no --kind/--name
    for the agent's status patches), whatever the overrides."""
    for job in (build({}), jobs.delete_job(OWNER, STORAGE, "id-1", models.JobOverrides(), DEFAULTS, source="s"),
                jobs.restore_job(OWNER, models.parse_restore({"backupID": "x", "storageRef": {"name": "s3"},
                                                                "target": {"pvc": {"claimName": "d"}}}),
                                 STORAGE, "x", DEFAULTS)):
        pod = pod_of(job)
        assert pod["automountServiceAccountToken"] is False
        args = pod["containers"][0]["args"]
        assert not {"--kind", "--name", "--namespace"} & set(args)


# ------------------------------------------------------------------------------- labels

def test_user_labels_never_replace_the_operators() -> None:
    job = build({"labels": {"team": "db", jobs.MANAGED_BY: "someone-else", jobs.L_UID: "other",
                            jobs.L_KIND: "morestore", "mobackup.io/extra": "x", "job-name": "x",
                            "batch.kubernetes.io/controller-uid": "x"},
                 "annotations": {"note": "hi"}})
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["team"] == "db"
        assert labels[jobs.MANAGED_BY] == jobs.MANAGER and labels[jobs.L_UID] == "uid-1"
        assert labels[jobs.L_KIND] == "mobackup" and labels[jobs.L_ACTION] == "backup"
        assert not {"mobackup.io/extra", "job-name", "batch.kubernetes.io/controller-uid"} & set(labels)
        assert labels["app.kubernetes.io/component"] == "backup"
        assert labels["app.kubernetes.io/part-of"] == "mo-backup-operator"
    assert job["metadata"]["annotations"] == {"note": "hi"}


# ------------------------------------------------------------------------------- chart jobDefaults

@pytest.mark.parametrize("job", [
    {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]},
    {"tolerations": [{"key": "node-role.kubernetes.io/master", "operator": "Exists"}]},
    {"tolerations": [{"operator": "Exists"}]},  # every taint
    {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}]}}}},
    {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {
        "matchExpressions": [{"key": "node-role.kubernetes.io/master", "operator": "In", "values": [""]}]}}]}}},
])
def test_a_run_cannot_place_its_job_on_control_plane_nodes(job: dict[str, Any]) -> None:
    with pytest.raises(jobs.JobPolicyError, match="control-plane"):
        build(job)


def test_placement_away_from_the_control_plane_stays_allowed() -> None:
    away = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]}}}
    pod = pod_of(build({"affinity": away, "nodeSelector": {"disk": "ssd"},
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "backup"}]}))
    assert pod["affinity"] == away and pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "backup"}]
    # The installer may: the chart's jobDefaults are not a run's choice.
    d = jobs.OperatorDefaults(image="reg/agent:1", service_account="job-sa", job_defaults={
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]})
    assert pod_of(build({}, d))["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"


def test_chart_job_defaults_reach_the_pod() -> None:
    d = jobs.OperatorDefaults(image="reg/agent:1", service_account="job-sa", job_defaults={
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                {"name": "AWS_ACCESS_KEY_ID", "value": "shadow"}, {"name": "HOME", "value": "/"}],
        "envFrom": [{"configMapRef": {"name": "proxy"}}],
        "affinity": {"nodeAffinity": {}}, "priorityClassName": "backup",
        "podAnnotations": {"sidecar.istio.io/inject": "false"}, "podLabels": {"team": "dba", jobs.L_UID: "x"},
        "tmpSizeLimit": "2Gi", "resources": {"requests": {"cpu": "100m"}}})
    job = build({"imagePullSecrets": [{"name": "own"}, {"name": "regcred"}], "labels": {"x": "y"}}, d)
    pod = pod_of(job)
    c = pod["containers"][0]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "own"}]
    env = [(e["name"], e.get("value")) for e in c["env"]]
    assert ("HTTPS_PROXY", "http://proxy:3128") in env
    assert [v for n, v in env if n == "HOME"] == ["/tmp"]  # the chart cannot shadow the operator's env
    assert all(n != "AWS_ACCESS_KEY_ID" for n, v in env if v == "shadow")
    assert c["envFrom"] == [{"configMapRef": {"name": "proxy"}}]
    assert pod["affinity"] == {"nodeAffinity": {}} and pod["priorityClassName"] == "backup"
    meta = job["spec"]["template"]["metadata"]
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    assert meta["labels"]["team"] == "dba" and meta["labels"]["x"] == "y" and meta["labels"][jobs.L_UID] == "uid-1"
    assert "team" not in job["metadata"]["labels"]  # pod labels stay on the pod
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp == {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}
    assert c["resources"]["requests"] == {"cpu": "100m", "ephemeral-storage": jobs.DEFAULT_EPHEMERAL_REQUEST}


def test_run_spec_cannot_set_chart_only_keys() -> None:
    raw = {"env": [{"name": "X", "value": "1"}], "podLabels": {"a": "b"}, "tmpSizeLimit": "100Gi"}
    pod = pod_of(build(raw))
    assert all(e["name"] != "X" for e in pod["containers"][0]["env"])
    assert "a" not in build(raw)["spec"]["template"]["metadata"]["labels"]
    assert next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"]["sizeLimit"] == jobs.DEFAULT_TMP_SIZE_LIMIT
    assert "imagePullSecrets" not in pod  # none from anywhere
