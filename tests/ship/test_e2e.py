"""End to end on the real test cluster (issue 5, point 5).

`helm install` the chart (CRDs included) into the real kube-apiserver; the chart's Deployment is
run by the cluster's local node (the kubelet test double: it runs the pod's command,
`mobackup operator --standalone --namespace=NS`, as a local process with the pod's env and the
projected token of the chart's ServiceAccount, so the operator has exactly the chart's RBAC).
Then the deploy/examples (pointed at the test S3 server) are applied: storage, full backup,
incremental backup, in-place restore of the full backup over the changed data, compared file by
file with the backed-up state; the schedule example, fired with `mobackup.io/run-now`.
`helm upgrade` with changed values (log level, ServiceMonitor + PrometheusRule, after installing
the Prometheus Operator's CRDs) rolls the operator, which then completes another backup.
`helm uninstall` removes the operator and leaves the CRDs, the MOBackups and the data.
"""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import paths
from cluster.kube_api import ApiError
from ship import tools
from ship.argocd import health

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

RELEASE = "ship-e2e"
FULLNAME = f"{RELEASE}-mo-backup-operator"
GROUP = "/apis/mobackup.io/v1alpha1"
EXAMPLES = tools.DEPLOY / "examples"
CRD_NAMES = ["mobackups.mobackup.io", "morestores.mobackup.io", "mobackupstorages.mobackup.io",
             "mobackupschedules.mobackup.io"]


@dataclass
class Env:
    cluster: Any
    ns: str            # MatrixOne stand-ins and the custom resources
    op_ns: str         # the Helm release
    helm_env: dict[str, str]
    metrics_port: int
    data: Path         # host directory of mo-data-mo-0/mo-data
    prefix: str        # repository prefix in the bucket

    def helm(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([str(tools.built_tool("helm")), *args], capture_output=True, text=True,
                              env=self.helm_env, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}\n"
                                 f"{self.operator_log()}")
        return proc.stdout

    def operator_log(self) -> str:
        api = self.cluster.api()
        out = []
        for pod in api.get(f"/api/v1/namespaces/{self.op_ns}/pods")["items"]:
            log = self.cluster.pod_log(self.op_ns, pod["metadata"]["name"])
            out.append(f"--- operator pod {pod['metadata']['name']}:\n{log[-6000:]}")
        return "\n".join(out) + f"\n({self.cluster.logs_hint()})"

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.cluster.api().get(f"{GROUP}/namespaces/{self.ns}/{plural}/{name}")

    def wait_phase(self, plural: str, name: str, phase: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(plural, name)
            got = (obj.get("status") or {}).get("phase")
            if got == phase:
                return obj
            if got == "Failed" and phase != "Failed":
                break
            time.sleep(0.5)
        job_logs = ""
        job = (obj.get("status") or {}).get("jobName")
        if job:
            for pod in self.cluster.api().get(f"/api/v1/namespaces/{self.ns}/pods",
                                              labelSelector=f"job-name={job}")["items"]:
                job_logs += self.cluster.pod_log(self.ns, pod["metadata"]["name"])[-3000:]
        raise AssertionError(f"{plural}/{name} did not reach {phase}: status={obj.get('status')}\n"
                             f"job logs:\n{job_logs}\n{self.operator_log()}")


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def stand_in_workload(name: str, claim: str) -> dict[str, Any]:
    """A StatefulSet standing for MatrixOne on the PVC (the local node runs `sleep`)."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "mo", "image": "matrixorigin/matrixone:2.2.2",
                                         "command": ["sleep", "infinity"],
                                         "volumeMounts": [{"name": "data", "mountPath": "/mo"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}}


def _free_port() -> int:
    return paths.free_port()


@pytest.fixture(scope="module")
def env(kube_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from mobackup.sample import generate_mo_data

    if kube_cluster.s3 is None:
        pytest.fail("the kube_cluster fixture has no S3 server (s3)", pytrace=False)
    tmp = tmp_path_factory.mktemp("ship-e2e")
    ns = kube_cluster.create_namespace("ship")
    op_ns = kube_cluster.create_namespace("ship-op")
    helm_env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig),
                "HELM_CACHE_HOME": str(tmp / "helm-cache"), "HELM_CONFIG_HOME": str(tmp / "helm-config"),
                "HELM_DATA_HOME": str(tmp / "helm-data")}
    data_host = kube_cluster.make_pvc(ns, "mo-data-mo-0")
    generate_mo_data(data_host / "mo-data", seed=5)
    kube_cluster.apply(stand_in_workload("mo", "mo-data-mo-0"), namespace=ns)
    e = Env(kube_cluster, ns, op_ns, helm_env, _free_port(), data_host / "mo-data",
            f"ship-e2e/{ns}-{secrets.token_hex(2)}")
    yield e
    # Teardown: never leave the operator running for the rest of the session.
    subprocess.run([str(tools.built_tool("helm")), "uninstall", RELEASE, "-n", op_ns, "--wait"],
                   env=helm_env, capture_output=True, check=False, timeout=120)
    api = kube_cluster.api()
    for plural in ("mobackups", "morestores", "mobackupschedules", "mobackupstorages"):
        try:
            items = api.get(f"{GROUP}/namespaces/{ns}/{plural}")["items"]
        except ApiError:
            continue
        for obj in items:  # the operator is gone: drop its finalizers so the namespace can go
            if obj["metadata"].get("finalizers"):
                api.merge_patch(f"{GROUP}/namespaces/{ns}/{plural}/{obj['metadata']['name']}",
                                {"metadata": {"finalizers": None}})
    kube_cluster.delete_namespace(ns)
    kube_cluster.delete_namespace(op_ns)


def _install(e: Env) -> None:
    e.helm("install", RELEASE, str(tools.CHART), "--namespace", e.op_ns,
           "--set", f"watchNamespaces={{{e.ns}}}",
           "--set", f"health.port={_free_port()}",
           "--set", f"metrics.port={e.metrics_port}", "--set", f"metrics.service.port={e.metrics_port}",
           "--set", "jobDefaults.activeDeadlineSeconds=7200", "--set", "jobDefaults.ttlSecondsAfterFinished=3600",
           "--wait", "--timeout", "180s")


def _apply_storage(e: Env) -> None:
    s3 = e.cluster.s3
    for doc in example("storage-s3.yaml"):
        doc = copy.deepcopy(doc)
        if doc["kind"] == "Secret" and "AWS_ACCESS_KEY_ID" in doc["stringData"]:
            doc["stringData"] = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        elif doc["kind"] == "Secret":
            doc["stringData"] = {"key": secrets.token_urlsafe(32)}
        elif doc["kind"] == "MOBackupStorage":
            doc["spec"]["s3"].update(endpoint=s3.endpoint, bucket=s3.bucket, prefix=e.prefix, region=s3.region)
        e.cluster.apply(doc, namespace=e.ns)


def _wait(get: Any, ok: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value!r:.2000}"
        time.sleep(0.3)


def _wait_scheduled_backup(e: Env) -> dict[str, Any]:
    def scheduled() -> list[dict[str, Any]]:
        return e.cluster.api().get(f"{GROUP}/namespaces/{e.ns}/mobackups",
                                   labelSelector="mobackup.io/schedule=mo-nightly")["items"]
    return _wait(scheduled, lambda items: len(items) == 1, "the schedule's run-now MOBackup")[0]


def _metrics(e: Env) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{e.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_helm_install_backup_restore_upgrade_uninstall(env: Env) -> None:
    from mobackup.sample import mutate_mo_data, snapshot_tree

    e = env
    api = e.cluster.api()

    # ---- helm install: CRDs + RBAC + operator Deployment ---------------------------------------
    _install(e)
    for crd in CRD_NAMES:
        got = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        assert any(c["type"] == "Established" and c["status"] == "True" for c in got["status"]["conditions"])
    dep = api.get(f"/apis/apps/v1/namespaces/{e.op_ns}/deployments/{FULLNAME}")
    assert dep["status"].get("readyReplicas") == 1, dep["status"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME
    api.get(f"/api/v1/namespaces/{e.ns}/serviceaccounts/{FULLNAME}-job")
    api.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{e.ns}/roles/{FULLNAME}")
    # `helm test`: its hook pod (run by the local node with its own ServiceAccount) finds the CRDs
    # served and the operator ready.
    out = e.helm("test", RELEASE, "--namespace", e.op_ns, "--timeout", "180s")
    assert f"TEST SUITE:     {FULLNAME}-test" in out and "Phase:          Succeeded" in out, out

    # ---- examples: storage, full, incremental, restore ----------------------------------------
    _apply_storage(e)
    e.wait_phase("mobackupstorages", "minio", "Available", timeout=120)

    before_full = snapshot_tree(e.data)
    e.cluster.apply(example("backup-full.yaml"), namespace=e.ns)
    full = e.wait_phase("mobackups", "mo-full-1", "Completed")["status"]
    assert full["backupID"] and full["sizeBytes"] > 0 and full["fileCount"] > 0 and full["jobName"]
    assert full["type"] == "Full"
    # The chart's Job settings reached the Job through the operator.
    job = api.get(f"/apis/batch/v1/namespaces/{e.ns}/jobs/{full['jobName']}")
    assert job["spec"]["activeDeadlineSeconds"] == 7200 and job["spec"]["ttlSecondsAfterFinished"] == 3600
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == f"{FULLNAME}-job"
    assert pod_spec["containers"][0]["resources"]["limits"]["memory"] == "1Gi"
    # Stop consistency: the workload is back at its replica count.
    sts = api.get(f"/apis/apps/v1/namespaces/{e.ns}/statefulsets/mo")
    assert sts["spec"]["replicas"] == 1

    mutate_mo_data(e.data, seed=6)
    e.cluster.apply(example("backup-incremental.yaml"), namespace=e.ns)
    incr = e.wait_phase("mobackups", "mo-incr-1", "Completed")["status"]
    assert incr["type"] == "Incremental" and incr["baseBackupID"] == full["backupID"]
    assert incr["newBytes"] < incr["sizeBytes"]

    # In place, over the changed data (overwrite: true): exactly the full backup's tree again.
    assert snapshot_tree(e.data) != before_full
    e.cluster.apply(example("restore.yaml"), namespace=e.ns)
    restored = e.wait_phase("morestores", "mo-restore-1", "Completed")["status"]
    assert restored["backupID"] == full["backupID"]
    assert snapshot_tree(e.data) == before_full, "restored tree differs from the full backup"
    assert api.get(f"/apis/apps/v1/namespaces/{e.ns}/statefulsets/mo")["spec"]["replicas"] == 1

    # ---- a schedule (with retention) from the examples, fired now -----------------------------
    e.cluster.apply(example("schedule.yaml"), namespace=e.ns)
    api.merge_patch(f"{GROUP}/namespaces/{e.ns}/mobackupschedules/mo-nightly",
                    {"metadata": {"annotations": {"mobackup.io/run-now": "Incremental"}}})
    scheduled = _wait_scheduled_backup(e)
    meta = scheduled["metadata"]
    assert meta["labels"]["mobackup.io/schedule"] == "mo-nightly" and meta["labels"]["team"] == "dba"
    assert meta["annotations"]["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
    assert "Prune=false" in meta["annotations"]["argocd.argoproj.io/sync-options"]
    sched_backup = e.wait_phase("mobackups", meta["name"], "Completed")["status"]
    # The schedule's first backup is Full even when asked for Incremental: it bases incrementals
    # only on its own Completed backups (operator design).
    assert sched_backup["type"] == "Full"

    # ---- the Argo CD health checks on the live objects ------------------------------------------
    assert health("MOBackupStorage", e.get("mobackupstorages", "minio"))[0] == "Healthy"
    assert health("MOBackup", e.get("mobackups", "mo-full-1")) == (
        "Healthy", f"Backup {full['backupID']} completed ({full['size']})")
    assert health("MORestore", e.get("morestores", "mo-restore-1"))[0] == "Healthy"
    sched = _wait(lambda: e.get("mobackupschedules", "mo-nightly"),
                  lambda o: (o.get("status") or {}).get("lastSuccessfulBackup") == meta["name"], "schedule status")
    assert health("MOBackupSchedule", sched)[0] == "Healthy"
    api.merge_patch(f"{GROUP}/namespaces/{e.ns}/mobackupschedules/mo-nightly", {"spec": {"suspend": True}})
    assert health("MOBackupSchedule", e.get("mobackupschedules", "mo-nightly"))[0] == "Suspended"

    metrics = _metrics(e)
    assert "mobackup_last_success_timestamp_seconds{" in metrics and e.ns in metrics, metrics[-3000:]

    # ---- helm upgrade with changed values -------------------------------------------------------
    for crd in tools.third_party_crds():
        if "monitoring.coreos.com" in crd.name:
            e.cluster.apply(crd)
    for plural in ("servicemonitors", "prometheusrules"):
        deadline = time.monotonic() + 60
        while True:
            crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.monitoring.coreos.com")
            if any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or []):
                break
            assert time.monotonic() < deadline, f"{plural} CRD not established"
            time.sleep(0.2)
    old_rs = {r["metadata"]["name"] for r in api.get(f"/apis/apps/v1/namespaces/{e.op_ns}/replicasets")["items"]}
    e.helm("upgrade", RELEASE, str(tools.CHART), "--namespace", e.op_ns, "--reuse-values",
           "--set", "logLevel=DEBUG", "--set", "metrics.serviceMonitor.enabled=true",
           "--set", "metrics.prometheusRule.enabled=true", "--wait", "--timeout", "180s")
    dep = api.get(f"/apis/apps/v1/namespaces/{e.op_ns}/deployments/{FULLNAME}")
    envs = {v["name"]: v.get("value") for v in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert envs["MOBACKUP_LOG_LEVEL"] == "DEBUG"
    api.get(f"/apis/monitoring.coreos.com/v1/namespaces/{e.op_ns}/servicemonitors/{FULLNAME}")
    rule = api.get(f"/apis/monitoring.coreos.com/v1/namespaces/{e.op_ns}/prometheusrules/{FULLNAME}")
    assert "MOBackupStale" in str(rule["spec"])
    new_rs = [r for r in api.get(f"/apis/apps/v1/namespaces/{e.op_ns}/replicasets")["items"]
              if r["metadata"]["name"] not in old_rs]
    assert new_rs and new_rs[0]["status"].get("readyReplicas") == 1, "the upgrade did not roll a new operator pod"
    # the upgraded operator works: one more full backup
    second = copy.deepcopy(example("backup-full.yaml")[0])
    second["metadata"]["name"] = "mo-full-2"
    e.cluster.apply(second, namespace=e.ns)
    assert e.wait_phase("mobackups", "mo-full-2", "Completed")["status"]["backupID"] != full["backupID"]

    # ---- helm uninstall leaves the CRDs, the MOBackups and the data ------------------------------
    before = {b["metadata"]["name"] for b in api.get(f"{GROUP}/namespaces/{e.ns}/mobackups")["items"]}
    e.helm("uninstall", RELEASE, "--namespace", e.op_ns, "--wait", "--timeout", "120s")
    with pytest.raises(ApiError) as gone:
        api.get(f"/apis/apps/v1/namespaces/{e.op_ns}/deployments/{FULLNAME}")
    assert gone.value.status == 404
    with pytest.raises(ApiError):
        api.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{FULLNAME}-cluster")
    for crd in CRD_NAMES:
        api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
    left = {b["metadata"]["name"]: (b.get("status") or {}).get("phase")
            for b in api.get(f"{GROUP}/namespaces/{e.ns}/mobackups")["items"]}
    assert set(left) == before
    for name in ("mo-full-1", "mo-incr-1", "mo-full-2", meta["name"]):
        assert left[name] == "Completed", left
    keys = [o["Key"] for o in e.cluster.s3.client().list_objects_v2(
        Bucket=e.cluster.s3.bucket, Prefix=e.prefix + "/")["Contents"]]
    assert any("/backups/" in k for k in keys), keys[:20]

    # One run-now annotation is one backup, also across the operator's restart by the upgrade.
    scheduled_names = sorted(n for n in left if n.startswith("mo-nightly-"))
    assert scheduled_names == [meta["name"]], (
        f"the run-now annotation fired {len(scheduled_names)} times: {scheduled_names}")


def test_helm_install_with_replicas_uses_kopf_peering(kube_cluster: Any, tmp_path: Path) -> None:
    """replicaCount > 1: the chart installs kopf's peering CRD and, after it (a post-install
    hook), the peering object; the operator replicas run with --peering-name and register in it.

    On this cluster every pod shares the host network, so the second replica's health/metrics
    ports collide with the first (a limit of the local node, not of a real cluster): only the
    peering set-up and the first replica's registration are asserted."""
    api = kube_cluster.api()
    ns = kube_cluster.create_namespace("ship-peer")
    op_ns = kube_cluster.create_namespace("ship-peer-op")
    release, fullname = "ship-peer", "ship-peer-mo-backup-operator"
    helm_env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig),
                "HELM_CACHE_HOME": str(tmp_path / "c"), "HELM_CONFIG_HOME": str(tmp_path / "g"),
                "HELM_DATA_HOME": str(tmp_path / "d")}
    helm = [str(tools.built_tool("helm"))]
    try:
        tools.run([*helm, "install", release, tools.CHART, "-n", op_ns, "--set", "replicaCount=2",
                   "--set", f"watchNamespaces={{{ns}}}", "--set", "metrics.enabled=false",
                   "--set", f"health.port={_free_port()}", "--timeout", "120s"], env=helm_env)
        api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/kopfpeerings.kopf.dev")
        path = f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{fullname}"
        api.get(path)
        dep = api.get(f"/apis/apps/v1/namespaces/{op_ns}/deployments/{fullname}")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--peering-name={fullname}" in args and "--standalone" not in args
        peering = _wait(lambda: api.get(path), lambda o: bool(o.get("status")), "an operator registering as a peer",
                        timeout=90)
        assert len(peering["status"]) >= 1, peering
    finally:
        tools.run([*helm, "uninstall", release, "-n", op_ns, "--wait"], env=helm_env, check=False)
        kube_cluster.delete_namespace(ns)
        kube_cluster.delete_namespace(op_ns)
