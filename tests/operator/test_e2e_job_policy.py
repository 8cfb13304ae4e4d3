"""spec.job as a way in, end to end (issue 11): an image or ServiceAccount that the operator's
allow-lists do not name fails the run with a reason and a Warning Event before anything starts;
an allow-listed one runs; a pod security context with runAsUser 1000 is merged onto the hardened
defaults, so the Job's pod is admitted by the real API server's PodSecurity admission in a namespace
that enforces `restricted` (the real Job controller creates the pod; the pre-fix shape is not).
Issue 18: sandbox annotations, system priority classes and SELinux spc_t fail the run the same way;
the Job pods mount no API token and their ServiceAccount may not patch any status."""

from __future__ import annotations

import time
from typing import Any

import pytest
from mo_e2e import JOB_SA, Env, OperatorProcess

from cluster.kube_api import ApiError, KubeApi
from mobackup.sample import generate_mo_data

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


def backup_spec(**extra: Any) -> dict[str, Any]:
    return {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS}, "storageRef": {"name": "s3"}, **extra}


def failed_with_event(env: Env, kind: str, name: str) -> dict[str, Any]:
    st = env.wait_phase(kind, name, "Failed", "Completed")["status"]
    assert st["phase"] == "Failed", st
    deadline = time.monotonic() + 10
    while not [e for e in env.events(name) if e["type"] == "Warning" and e["reason"] == st["reason"]]:
        assert time.monotonic() < deadline, f"no Warning Event for {st['reason']}"
        time.sleep(0.2)
    return st


def jobs_of(env: Env) -> list[dict[str, Any]]:
    return env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs")["items"]


def test_overrides_refused_without_allow_list(env: Env) -> None:
    env.stand_in(objects=5)
    env.s3_storage()
    env.create("MOBackup", "img", backup_spec(job={"image": "evil.example/miner:latest"}))
    st = failed_with_event(env, "MOBackup", "img")
    assert st["reason"] == "JobOverrideNotAllowed"
    assert "spec.job.image 'evil.example/miner:latest' is not allowed" in st["message"]
    assert "jobOverrides.allowedImages" in st["message"]
    env.create("MORestore", "sa", {"backupID": "x", "storageRef": {"name": "s3"}, "target": {
        "pvc": {"claimName": "mo-data"}, "workload": STS}, "job": {"serviceAccountName": "default"}})
    st = failed_with_event(env, "MORestore", "sa")
    assert st["reason"] == "JobOverrideNotAllowed" and "serviceAccountName 'default'" in st["message"]
    env.create("MOBackup", "root", backup_spec(job={"securityContext": {"runAsUser": 0}}))
    st = failed_with_event(env, "MOBackup", "root")
    assert st["reason"] == "JobOverrideNotAllowed" and "runAsUser: 0" in st["message"]
    # Issue 18: what would take the pod out of the restricted standard, whatever the spec says.
    for name, job, field in (
            ("apparmor", {"annotations": {"container.apparmor.security.beta.kubernetes.io/agent": "unconfined"}},
             "spec.job.annotations['container.apparmor.security.beta.kubernetes.io/agent']"),
            ("multus", {"annotations": {"k8s.v1.cni.cncf.io/networks": "host-net"}},
             "spec.job.annotations['k8s.v1.cni.cncf.io/networks']"),
            ("priority", {"priorityClassName": "system-node-critical"}, "spec.job.priorityClassName"),
            ("selinux", {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
             "spec.job.securityContext.seLinuxOptions")):
        env.create("MOBackup", name, backup_spec(job=job))
        st = failed_with_event(env, "MOBackup", name)
        assert st["reason"] == "JobOverrideNotAllowed" and field in st["message"], st
    # Refused before anything started: no Job, MatrixOne never stopped.
    assert jobs_of(env) == []
    assert env.replicas()[0] == 1


def test_allow_listed_image_runs(env: Env) -> None:
    env.op.kill()
    env.op = OperatorProcess(env.cluster, [env.ns], env.tmp / "operator-allow.log",
                             extra_env={"MOBACKUP_JOB_ALLOWED_IMAGES": '["registry.local/mobackup:*"]'})
    env.op.start()
    env.stand_in(objects=5)
    env.s3_storage()
    env.create("MOBackup", "ok", backup_spec(job={"image": "registry.local/mobackup:2",
                                                  "labels": {"team": "dba", "app.kubernetes.io/managed-by": "me"}}))
    st = env.wait_phase("MOBackup", "ok", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st
    job = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs/{st['jobName']}")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/mobackup:2"
    assert job["metadata"]["labels"]["team"] == "dba"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mobackup-operator"
    env.create("MOBackup", "other", backup_spec(job={"image": "registry.local/other:2"}))
    st = failed_with_event(env, "MOBackup", "other")
    assert "only images matching registry.local/mobackup:*" in st["message"]
    # The allow-list is checked again for the delete Job: an operator that no longer allows the
    # image refuses to delete the data with it (and says so) until spec.job is changed.
    env.api.merge_patch(env.path("MOBackup", "ok"), {"spec": {"deletionPolicy": "Delete"}})
    env.wait("MOBackup", "ok", lambda o: "mobackup.io/finalizer" in (o["metadata"].get("finalizers") or []),
             30, "kopf's finalizer for deletionPolicy Delete")
    env.op.kill()
    env.op = OperatorProcess(env.cluster, [env.ns], env.tmp / "operator-strict.log")
    env.op.start()
    env.api.delete(env.path("MOBackup", "ok"))
    refused = env.wait("MOBackup", "ok", lambda o: (o.get("status") or {}).get("reason") == "JobOverrideNotAllowed",
                       60, "the delete Job refused")["status"]
    assert "cannot delete backup" in refused["message"] and "registry.local/mobackup:2" in refused["message"]
    assert any(e["reason"] == "JobOverrideNotAllowed" for e in env.events("ok"))
    env.api.merge_patch(env.path("MOBackup", "ok"), {"spec": {"job": {"image": None}}})
    env.wait_gone("MOBackup", "ok", timeout=90)


def _restricted(env: Env) -> None:
    env.api.merge_patch(f"/api/v1/namespaces/{env.ns}", {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})


def test_run_as_user_1000_is_admitted_in_a_restricted_namespace(env: Env) -> None:
    host = env.cluster.make_pvc(env.ns, "mo-data")
    generate_mo_data(host / "mo-data", seed=3, objects=5)
    env.s3_storage()
    _restricted(env)
    # The control: the pre-fix shape (a pod security context REPLACING the defaults) is refused here,
    # so the Job controller cannot create its pod.
    env.api.create(f"/apis/batch/v1/namespaces/{env.ns}/jobs", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "replaced-defaults"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "agent", "image": "x", "command": ["true"]}]}}}})
    deadline = time.monotonic() + 60
    while not [e for e in env.events("replaced-defaults") if e["reason"] == "FailedCreate"
               and "violates PodSecurity" in e["message"]]:
        assert time.monotonic() < deadline, "the restricted namespace did not refuse the control pod"
        time.sleep(0.3)
    # Ours: merged onto the defaults, admitted, runs, completes.
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}}, "consistency": "None",
                                 "storageRef": {"name": "s3"},
                                 "job": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                                         "containerSecurityContext": {"readOnlyRootFilesystem": True}}})
    st = env.wait_phase("MOBackup", "b", "Completed", "Failed", timeout=120)["status"]
    assert st["phase"] == "Completed", st
    pods = env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector=f"job-name={st['jobName']}")["items"]
    assert pods, "no pod of the backup Job"
    psc = pods[0]["spec"]["securityContext"]
    assert psc["runAsUser"] == 1000 and psc["runAsNonRoot"] is True
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = pods[0]["spec"]["containers"][0]["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
    # Issue 18: no API token in the pod (the ServiceAccount admission adds no kube-api-access volume),
    # and the Job's ServiceAccount itself may not patch a status (it could steer the operator).
    assert pods[0]["spec"]["automountServiceAccountToken"] is False
    assert not [v for v in pods[0]["spec"].get("volumes") or [] if v["name"].startswith("kube-api-access")]
    assert st["progress"]["bytesDone"] == st["progress"]["bytesTotal"] > 0  # written by the operator
    token = env.api.create(f"/api/v1/namespaces/{env.ns}/serviceaccounts/{JOB_SA}/token",
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    as_job = KubeApi(env.cluster.api_url, token["status"]["token"], str(env.cluster.ca_file))
    forged = {"status": {"scaledWorkload": {"kind": "StatefulSet", "name": "victim", "replicas": 0,
                                            "scaledDownAt": "2026-01-01T00:00:00Z"}}}
    with pytest.raises(ApiError) as denied:
        as_job.merge_patch(env.path("MOBackup", "b") + "/status", forged)
    assert denied.value.status == 403
    with pytest.raises(ApiError) as denied:
        as_job.get(env.path("MOBackup", "b"))
    assert denied.value.status == 403


def test_operator_identity_scales_only_through_the_scale_subresource(env: Env) -> None:
    """The chart's RBAC on the real API server: /scale yes, the StatefulSet itself (pod template) no;
    and a Stop backup leaves no annotation on the workload (the record is on the MOBackup)."""
    import kubernetes

    env.stand_in(objects=5)
    apps = kubernetes.client.AppsV1Api(env.cluster.kubernetes_client(operator=True))
    with pytest.raises(kubernetes.client.ApiException) as err:
        apps.patch_namespaced_stateful_set("mo", env.ns, {"metadata": {"annotations": {"x": "y"}}})
    assert err.value.status == 403
    with pytest.raises(kubernetes.client.ApiException) as err:
        apps.list_namespaced_stateful_set(env.ns)
    assert err.value.status == 403
    assert apps.read_namespaced_stateful_set_scale("mo", env.ns).spec.replicas == 1
    # The sweeper's cluster-wide listing works with this identity (its errors are only logged).
    from mobackup.k8s.kube import Kube
    from mobackup.k8s.workload import sweep

    kube = Kube(env.cluster.kubernetes_client(operator=True))
    assert isinstance(kube.list_cr_all("MOBackup"), list) and isinstance(kube.list_cr_all("MORestore"), list)
    assert sweep(kube, None) == [] and sweep(kube, env.ns) == []
    env.s3_storage()
    env.create("MOBackup", "b", backup_spec())
    st = env.wait_phase("MOBackup", "b", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st
    assert st["scaledWorkload"]["replicas"] == 1 and st["scaledWorkload"]["scaledUpAt"]
    from mobackup.k8s.workload import FINALIZER

    assert FINALIZER not in (env.get("MOBackup", "b")["metadata"].get("finalizers") or [])
    replicas, annotations = env.replicas()
    assert replicas == 1 and not any(k.startswith("mobackup.io/") for k in annotations)
    env.wait_replicas_running()
