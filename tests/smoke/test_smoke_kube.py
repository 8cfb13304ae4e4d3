"""Smoke tests of the test harness itself: the real control plane, its controllers and the local
node (the kubelet/runtime test double, see cluster.local_node) behave as a cluster does."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import paths
from cluster.control_plane import wait_for
from cluster.kube_api import ApiError
from cluster.kube_cluster import KubeCluster

pytestmark = pytest.mark.cluster


def job(name: str, script: str, *, backoff_limit: int = 0, deadline: int | None = None,
        volumes: list[dict[str, Any]] | None = None, mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                            "volumeMounts": mounts or []}],
            "volumes": volumes or [],
        }},
    }
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_condition(job_obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in job_obj.get("status", {}).get("conditions") or []:
        if c["type"] == kind and c["status"] == "True":
            return c  # type: ignore[no-any-return]
    return None


def wait_job(cluster: KubeCluster, ns: str, name: str, kind: str, timeout: float) -> dict[str, Any]:
    return wait_for(cluster.api(), f"/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                    lambda o: job_condition(o, kind) is not None, timeout, f"Job {ns}/{name} {kind}")


def pods_of(cluster: KubeCluster, ns: str, selector: str) -> list[dict[str, Any]]:
    return cluster.api().get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"]  # type: ignore[no-any-return]


def gone(cluster: KubeCluster, path: str) -> bool:
    try:
        cluster.api().get(path)
        return False
    except ApiError as e:
        return e.status == 404


def wait_gone(cluster: KubeCluster, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(cluster, path):
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} still exists after {timeout}s")


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ---- the control plane --------------------------------------------------------------------------
def test_version_is_pinned_release(kube_cluster: KubeCluster) -> None:
    status, body = kube_cluster.api().raw_get("/version")
    assert status == 200
    info = yaml.safe_load(body)
    assert info["gitVersion"] == "v1.34.4" and info["major"] == "1" and info["minor"] == "34"
    from kubernetes import client

    names = [n.metadata.name for n in client.CoreV1Api(kube_cluster.kubernetes_client()).list_node().items]
    assert names == ["local-node"]


def test_crd_schema_validation_rejects_bad_object(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    api = kube_cluster.api()
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.mobackup.test"},
        "spec": {
            "group": "smoke.mobackup.test", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                              "spec": {"type": "object", "required": ["size"], "properties": {
                                  "size": {"type": "integer", "minimum": 1},
                                  "mode": {"type": "string", "enum": ["fast", "safe"]}}},
                              "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                          }}}}],
        },
    }
    kube_cluster.apply(crd)
    wait_for(api, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.smoke.mobackup.test",
             lambda o: any(c["type"] == "Established" and c["status"] == "True"
                           for c in o.get("status", {}).get("conditions") or []), 30, "CRD Established")
    base = f"/apis/smoke.mobackup.test/v1/namespaces/{kube_namespace}/widgets"

    def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "smoke.mobackup.test/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}

    # Discovery of a new CRD takes a moment: retry the first create on 404 only.
    deadline = time.monotonic() + 20
    while True:
        try:
            good = api.create(base, widget("good", {"size": 3, "mode": "safe", "unknown": "pruned"}))
            break
        except ApiError as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert good["spec"] == {"size": 3, "mode": "safe"}, "unknown fields must be pruned by the schema"
    for bad_spec, needle in (({"size": "big"}, "spec.size"), ({"size": 0}, "spec.size"),
                             ({"mode": "fast"}, "spec.size"), ({"size": 1, "mode": "slow"}, "spec.mode")):
        with pytest.raises(ApiError) as err:
            api.create(base, widget("bad", bad_spec))
        assert err.value.status == 422 and err.value.reason == "Invalid", err.value
        assert needle in err.value.message
    # The status subresource: a status change through the main resource is ignored.
    api.merge_patch(f"{base}/good", {"status": {"phase": "Ignored"}})
    assert "status" not in api.get(f"{base}/good")
    api.merge_patch(f"{base}/good/status", {"status": {"phase": "Done"}})
    assert api.get(f"{base}/good")["status"] == {"phase": "Done"}
    api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.smoke.mobackup.test")


def test_project_crds_are_accepted(kube_cluster: KubeCluster) -> None:
    crd_files = sorted((paths.REPO_ROOT / "crds").glob("*.yaml"))
    assert crd_files, f"no CRDs in {paths.REPO_ROOT / 'crds'}"
    for f in crd_files:
        for obj in kube_cluster.apply(f):
            wait_for(kube_cluster.api(),
                     f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{obj['metadata']['name']}",
                     lambda o: any(c["type"] == "Established" and c["status"] == "True"
                                   for c in o.get("status", {}).get("conditions") or []), 30,
                     f"CRD {obj['metadata']['name']} Established")


# ---- Jobs through the real Job controller and the local node --------------------------------------
def test_job_exit_0_completes(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    name = "ok-" + "x" * 57     # pod name > 63 characters: the hostname must be truncated
    kube_cluster.apply(job(name, "echo hello from the job; exit 0"), kube_namespace)
    done = wait_job(kube_cluster, kube_namespace, name, "Complete", 60)
    assert done["status"]["succeeded"] == 1
    (pod,) = pods_of(kube_cluster, kube_namespace, f"job-name={name}")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert "hello from the job" in kube_cluster.pod_log(kube_namespace, pod["metadata"]["name"])


def test_job_exit_1_fails_after_backoff_limit(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    script = "echo 'it broke' > /dev/termination-log; exit 1"
    kube_cluster.apply(job("bad", script, backoff_limit=1), kube_namespace)
    failed = wait_job(kube_cluster, kube_namespace, "bad", "Failed", 90)
    assert job_condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    assert failed["status"]["failed"] == 2          # first try + backoffLimit retries
    pods = pods_of(kube_cluster, kube_namespace, "job-name=bad")
    assert len(pods) == 2
    for p in pods:
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert p["status"]["phase"] == "Failed"
        assert term["exitCode"] == 1 and term["message"] == "it broke\n"


def test_job_active_deadline_kills_the_process(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    host = kube_cluster.make_pvc(kube_namespace, "work")
    # "$$$$": Kubernetes expands $(VAR) in commands and turns "$$" into "$", as a kubelet does.
    kube_cluster.apply(job("slow", "echo $$$$ > /work/pid; exec sleep 300", deadline=3,
                           volumes=[{"name": "w", "persistentVolumeClaim": {"claimName": "work"}}],
                           mounts=[{"name": "w", "mountPath": "/work"}]), kube_namespace)
    failed = wait_job(kube_cluster, kube_namespace, "slow", "Failed", 60)
    assert job_condition(failed, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    pid = int((host / "pid").read_text())
    deadline = time.monotonic() + 40
    while pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_running(pid), "the deleted Job pod's process must be killed"


# ---- garbage collector ----------------------------------------------------------------------------
def test_garbage_collector_deletes_dependents(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    api = kube_cluster.api()
    base = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    owner = api.create(base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    for i in range(3):
        api.create(base, {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": f"dep-{i}", "ownerReferences": [ref]}})
    api.create(base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}})
    api.delete(f"{base}/owner", {"propagationPolicy": "Background"})
    for i in range(3):
        wait_gone(kube_cluster, f"{base}/dep-{i}", 60)
    assert not gone(kube_cluster, f"{base}/unrelated")


def test_deleting_a_job_deletes_its_pods(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    kube_cluster.apply(job("short", "exit 0"), kube_namespace)
    wait_job(kube_cluster, kube_namespace, "short", "Complete", 60)
    (pod,) = pods_of(kube_cluster, kube_namespace, "job-name=short")
    kube_cluster.api().delete(f"/apis/batch/v1/namespaces/{kube_namespace}/jobs/short",
                              {"propagationPolicy": "Background"})
    wait_gone(kube_cluster, f"/api/v1/namespaces/{kube_namespace}/pods/{pod['metadata']['name']}", 60)


# ---- what a pod sees --------------------------------------------------------------------------------
def test_pod_sees_secret_env_and_mounted_volumes(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    api, ns = kube_cluster.api(), kube_namespace
    host = kube_cluster.make_pvc(ns, "mo-data")
    (host / "input.txt").write_text("data on the PV\n")
    api.create(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"password": "pa55word", "key.pem": "KEY"}})
    api.create(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
        "data": {"MODE": "fast", "settings.toml": "x = 1\n"}})
    script = "; ".join([
        "cd /mo-data",
        'echo "pw=$DB_PASSWORD mode=$MODE cfg_mode=$CFG_MODE name=$POD_NAME ns=$POD_NAMESPACE dep=$DEPENDENT"'
        " > out.txt",
        "echo pwd=$(pwd) >> out.txt",
        "cat input.txt >> out.txt",
        "cat /etc/creds/key.pem >> out.txt; echo >> out.txt",
        "cat /etc/cfg/settings.toml >> out.txt",
        "echo scratch > /scratch/f && cat /scratch/f >> out.txt",
        "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace >> out.txt; echo >> out.txt",
        "test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token-ok >> out.txt",
        "grep -q 'BEGIN CERTIFICATE' /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo ca-ok >> out.txt",
        "echo host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT >> out.txt",
        "command -v mobackup >> out.txt",
    ])
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "seer"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "ignored", "command": ["sh", "-c", script], "workingDir": "/mo-data",
                "env": [
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "DEPENDENT", "value": "$(MODE)-$(POD_NAME)"},
                ],
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/mo-data"},
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "mo-data"}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "settings.toml",
                                                                         "path": "settings.toml"}]}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }
    api.create(f"/api/v1/namespaces/{ns}/pods", pod)
    done = wait_for(api, f"/api/v1/namespaces/{ns}/pods/seer",
                    lambda o: o.get("status", {}).get("phase") in ("Succeeded", "Failed"), 60, "pod seer done")
    assert done["status"]["phase"] == "Succeeded", kube_cluster.pod_log(ns, "seer")
    out = (host / "out.txt").read_text().splitlines()
    assert out == [
        f"pw=pa55word mode=fast cfg_mode=fast name=seer ns={ns} dep=fast-seer",
        "pwd=/mo-data",
        "data on the PV",
        "KEY",
        "x = 1",
        "scratch",
        ns,
        "token-ok",
        "ca-ok",
        f"host=127.0.0.1:{kube_cluster.api_url.rsplit(':', 1)[1]}",
        str(paths.VENV_BIN / "mobackup"),
    ]
    assert not Path("/etc/creds/key.pem").exists(), "volumes must be mounted privately, not on the host"


def test_in_cluster_client_uses_projected_token(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    """A pod's in-cluster kubernetes client reaches the API server through KUBERNETES_SERVICE_HOST,
    verifies it with the mounted ca.crt and authenticates with its TokenRequest token."""
    api, ns = kube_cluster.api(), kube_namespace
    kube_cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-cm", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "read-cm", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hello", "namespace": ns},
         "data": {"greeting": "hi"}},
    ])
    code = (
        "import sys\n"
        "from kubernetes import client, config\n"
        "config.load_incluster_config()\n"
        "v1 = client.CoreV1Api()\n"
        "print(v1.read_namespaced_config_map('hello', sys.argv[1]).data['greeting'])\n"
        "try:\n"
        "    v1.list_namespaced_secret(sys.argv[1])\n"
        "except client.ApiException as e:\n"
        "    print('secrets', e.status)\n"
    )
    api.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "incluster"},
        "spec": {"restartPolicy": "Never", "serviceAccountName": "reader",
                 "containers": [{"name": "c", "image": "ignored", "command": ["python", "-c", code, ns]}]}})
    done = wait_for(api, f"/api/v1/namespaces/{ns}/pods/incluster",
                    lambda o: o.get("status", {}).get("phase") in ("Succeeded", "Failed"), 60, "pod done")
    log = kube_cluster.pod_log(ns, "incluster")
    assert done["status"]["phase"] == "Succeeded", log
    assert "hi\nsecrets 403" in log


def test_deleting_a_running_pod_kills_its_process(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    api, ns = kube_cluster.api(), kube_namespace
    host = kube_cluster.make_pvc(ns, "w")
    api.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": {"terminationGracePeriodSeconds": 5,
                 "containers": [{"name": "c", "image": "ignored",
                                 "command": ["sh", "-c", "echo $$$$ > /w/pid; exec sleep 300"],
                                 "volumeMounts": [{"name": "w", "mountPath": "/w"}]}],
                 "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "w"}}]}})
    running = wait_for(api, f"/api/v1/namespaces/{ns}/pods/sleeper",
                       lambda o: o.get("status", {}).get("phase") == "Running" and (host / "pid").exists(),
                       30, "pod Running")
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in running["status"]["conditions"])
    pid = int((host / "pid").read_text())
    assert pid_running(pid)
    api.delete(f"/api/v1/namespaces/{ns}/pods/sleeper")
    wait_gone(kube_cluster, f"/api/v1/namespaces/{ns}/pods/sleeper", 30)
    assert not pid_running(pid)


def test_statefulset_pod_runs_with_provisioned_volume(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    """A StatefulSet standing for MatrixOne: long-running pod, PVC from volumeClaimTemplates,
    restarted when its process exits, killed when scaled to 0."""
    api, ns = kube_cluster.api(), kube_namespace
    kube_cluster.apply({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "mo", "namespace": ns},
        "spec": {
            "replicas": 1, "serviceName": "mo", "selector": {"matchLabels": {"app": "mo"}},
            "template": {"metadata": {"labels": {"app": "mo"}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "mo", "image": "matrixorigin/matrixone",
                                "command": ["sh", "-c", "echo started >> /mo-data/starts; echo $$$$ > /mo-data/pid; "
                                            "exec sleep 300"],
                                "volumeMounts": [{"name": "data", "mountPath": "/mo-data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    })
    sts = wait_for(api, f"/apis/apps/v1/namespaces/{ns}/statefulsets/mo",
                   lambda o: o.get("status", {}).get("readyReplicas") == 1, 60, "StatefulSet ready")
    assert sts["status"]["availableReplicas"] == 1
    pvc = api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-mo-0")
    assert pvc["status"]["phase"] == "Bound"
    pv = api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    data = Path(pv["spec"]["hostPath"]["path"])
    assert data.is_relative_to(kube_cluster.pv_root)
    wait_for(api, f"/api/v1/namespaces/{ns}/pods/mo-0", lambda o: (data / "pid").exists(), 10, "pid file")
    first = int((data / "pid").read_text())
    os.kill(first, 9)   # the "database" crashes: restartPolicy Always restarts it
    # The kubelet (here the local node) reports the container running once its process is spawned,
    # which may be before the shell has appended its line: wait for both.
    wait_for(api, f"/api/v1/namespaces/{ns}/pods/mo-0",
             lambda o: o["status"]["containerStatuses"][0]["restartCount"] == 1
             and "running" in o["status"]["containerStatuses"][0]["state"]
             and (data / "starts").read_text().count("started") >= 2, 30, "container restarted")
    assert (data / "starts").read_text() == "started\nstarted\n"
    second = int((data / "pid").read_text())
    api.merge_patch(f"/apis/apps/v1/namespaces/{ns}/statefulsets/mo/scale", {"spec": {"replicas": 0}})
    wait_gone(kube_cluster, f"/api/v1/namespaces/{ns}/pods/mo-0", 30)
    assert not pid_running(second)


# ---- the operator's identity ------------------------------------------------------------------------
def test_operator_kubeconfig_has_exactly_the_chart_rbac(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    from cluster.kube_api import KubeApi
    from cluster.local_node import load_kubeconfig

    assert kube_cluster.operator.source == "chart"
    server, token, ca = load_kubeconfig(kube_cluster.operator_kubeconfig)
    op = KubeApi(server, token, ca)

    def can(verb: str, resource: str, group: str = "", sub: str = "", ns: str | None = kube_namespace) -> bool:
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if sub:
            attrs["subresource"] = sub
        if ns:
            attrs["namespace"] = ns
        review = op.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}})
        return bool(review["status"]["allowed"])

    # Granted by the chart...
    assert can("create", "jobs", "batch")
    assert can("patch", "mobackups", "mobackup.io", "status")
    assert can("get", "secrets")
    assert can("list", "customresourcedefinitions", "apiextensions.k8s.io", ns=None)
    # ...and nothing wider.
    assert not can("list", "secrets")
    assert not can("delete", "namespaces", ns=None)
    assert not can("create", "pods")
    with pytest.raises(ApiError) as err:
        op.get(f"/api/v1/namespaces/{kube_namespace}/secrets")
    assert err.value.status == 403


def test_namespaced_operator_identity_from_chart_values(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    from cluster.kube_api import KubeApi
    from cluster.local_node import load_kubeconfig

    ident = kube_cluster.operator_identity("nsmode", {"watchNamespaces": [kube_namespace]})
    op = KubeApi(*load_kubeconfig(ident.kubeconfig))
    assert op.get(f"/apis/batch/v1/namespaces/{kube_namespace}/jobs")["items"] == []
    with pytest.raises(ApiError) as err:
        op.get("/apis/batch/v1/namespaces/default/jobs")
    assert err.value.status == 403


def test_pod_waits_for_a_secret_created_later(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    api, ns = kube_cluster.api(), kube_namespace
    api.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "early"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c", "image": "ignored", "command": ["sh", "-c", 'test "$TOKEN" = late-secret'],
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "t"}}}]}]}})
    waiting = wait_for(api, f"/api/v1/namespaces/{ns}/pods/early",
                       lambda o: "waiting" in ((o.get("status", {}).get("containerStatuses") or [{}])[0]
                                               .get("state") or {}), 30, "container waiting")
    state = waiting["status"]["containerStatuses"][0]["state"]["waiting"]
    assert state["reason"] == "CreateContainerConfigError" and "later" in state["message"]
    assert waiting["status"]["phase"] == "Pending"
    api.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret",
                                                    "metadata": {"name": "later"}, "stringData": {"t": "late-secret"}})
    done = wait_for(api, f"/api/v1/namespaces/{ns}/pods/early",
                    lambda o: o["status"].get("phase") in ("Succeeded", "Failed"), 30, "pod done")
    assert done["status"]["phase"] == "Succeeded"


def test_job_on_failure_restarts_count_against_backoff_limit(kube_cluster: KubeCluster,
                                                            kube_namespace: str) -> None:
    manifest = job("flaky", "exit 2", backoff_limit=2)
    manifest["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    kube_cluster.apply(manifest, kube_namespace)
    failed = wait_job(kube_cluster, kube_namespace, "flaky", "Failed", 90)
    assert job_condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
