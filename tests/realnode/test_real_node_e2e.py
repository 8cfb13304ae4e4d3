"""The image our users run, run by a real kubelet (issue 21).

On the real node (cluster.real_node: containerd + runc, kubelet, kube-scheduler, kube-proxy), with
the project's image built from the unchanged Dockerfile and imported under the chart's default
name: the chart installs with its DEFAULT values (no --set) into a namespace that enforces Pod
Security `restricted`, and the operator runs in its pod (read-only root file system, uid 65532).
A MOBackup of a local PV and a MORestore run as Jobs in the image, under the hardened security
context the runtime enforces; the restore round-trips the data. `helm test` passes; a Job the
kernel kills for its memory limit fails its run with a reason naming the limit; the image's
facts (size, user, Python and dependency versions = deploy/requirements.lock, no build tools or
caches, CLI start time) are checked inside a container. MatrixOne runs as a StatefulSet from
its image (the suite's mo-service) with its data on a local PV; an online backup's Job reaches it
through its Service by name (CoreDNS) and stores into the seed's S3 storage example (SeaweedFS on
the host's address); it restores from S3 into a new PV, and a MORestoreDrill of it (restore +
scratch MatrixOne from its image + checker) finds exactly the backed-up rows. The operator's log
shows no ERROR throughout.

Local stand-ins (no registry is reachable here): the base image for python:3.11.14-slim-bookworm
is Debian's python3 3.11.2 on a debootstrap bookworm (tests/cluster/build base-image); the
MatrixOne image holds MatrixOne v1.3.0-dev (tests/cluster/build mo-image), not the 2.x-4.x users run.
One module fixture (the chart installed once) serves every test; they run in file order.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import paths, real_cluster, real_node
from cluster.real_cluster import RealCluster
from mo_server import (
    DEFAULT_VERSION,
    PASSWORD,
    SQL_PORT,
    USER,
    SqlClient,
    checksums,
    create_db,
)
from mo_server import connect as mo_connect

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RELEASE = "mo-backup-operator"     # the chart's own name: fullname = release name
NS = "mobackup-system"             # jobServiceAccount defaults to the release namespace: runs go here
GROUP = "/apis/mobackup.io/v1alpha1"
CHART = paths.REPO_ROOT / "charts" / "mo-backup-operator"
LOCK = paths.REPO_ROOT / "deploy" / "requirements.lock"
UID = 65532


@dataclass
class Env:
    cluster: RealCluster
    data: Path          # host directory of PVC mo-data-mo-0's mo-data
    repo: Path          # host directory of PVC backups
    tool_env: dict[str, str]
    logs: list[str] = field(default_factory=list)   # logs of operator pods an upgrade replaced
    expect: dict[str, Any] = field(default_factory=dict)   # what the online backup holds (for the drill)

    def run(self, tool: str, *args: str, timeout: float = 240, check: bool = True) -> str:
        proc = subprocess.run([str(paths.binary(tool)), *args], capture_output=True, text=True,
                              env=self.tool_env, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}\n{self.operator_log()[-4000:]}")
        return proc.stdout + proc.stderr

    def operator_pod(self) -> str:
        api = self.cluster.api()
        match = api.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{RELEASE}")["spec"]["selector"]["matchLabels"]
        pods = api.get(f"/api/v1/namespaces/{NS}/pods",
                       labelSelector=",".join(f"{k}={v}" for k, v in match.items()))["items"]
        running = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
        assert running, f"no running operator pod: {[p['metadata']['name'] for p in pods]}"
        return running[0]

    def operator_log(self) -> str:
        try:
            return self.cluster.pod_log(NS, self.operator_pod())
        except AssertionError as e:
            return str(e)

    def exec(self, *argv: str) -> str:
        return self.run("kubectl", "exec", "-n", NS, self.operator_pod(), "--", *argv, timeout=60)

    def wait_phase(self, plural: str, name: str, phase: str, timeout: float = 180) -> dict[str, Any]:
        api = self.cluster.api()
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = api.get(f"{GROUP}/namespaces/{NS}/{plural}/{name}")
            got = (obj.get("status") or {}).get("phase")
            if got == phase:
                return obj
            if got in ("Failed", "Completed") and got != phase:
                break
            time.sleep(0.5)
        jobs = ""
        job = (obj.get("status") or {}).get("jobName")
        if job:
            for pod in api.get(f"/api/v1/namespaces/{NS}/pods", labelSelector=f"job-name={job}")["items"]:
                jobs += self.cluster.pod_log(NS, pod["metadata"]["name"])[-3000:]
        raise AssertionError(f"{plural}/{name} did not reach {phase}: status={obj.get('status')}\n"
                             f"job logs:\n{jobs}\noperator:\n{self.operator_log()[-4000:]}")


def _restricted_workload(name: str, claim: str, image: str) -> dict[str, Any]:
    """A StatefulSet standing for MatrixOne on the data PVC (the project image, sleeping), admissible
    under Pod Security `restricted`: the backup's Stop consistency scales it down and back."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "fsGroup": UID,
                                             "seccompProfile": {"type": "RuntimeDefault"}},
                         "containers": [{"name": "mo", "image": image, "imagePullPolicy": "Never",
                                         "command": ["python", "-c", "import time; time.sleep(1e9)"],
                                         "securityContext": {"allowPrivilegeEscalation": False,
                                                             "readOnlyRootFilesystem": True,
                                                             "capabilities": {"drop": ["ALL"]}},
                                         "volumeMounts": [{"name": "data", "mountPath": "/mo"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}}


@pytest.fixture(scope="module")
def env(real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from mobackup.sample import generate_mo_data

    c = real_cluster
    tmp = tmp_path_factory.mktemp("real-node-e2e")
    tool_env = {**os.environ, "KUBECONFIG": str(c.kubeconfig), "HELM_CACHE_HOME": str(tmp / "helm-cache"),
                "HELM_CONFIG_HOME": str(tmp / "helm-config"), "HELM_DATA_HOME": str(tmp / "helm-data")}
    c.create_namespace(name=NS)
    c.api().merge_patch(f"/api/v1/namespaces/{NS}", {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    data = c.make_pvc(NS, "mo-data-mo-0")
    repo = c.make_pvc(NS, "backups")
    generate_mo_data(data / "mo-data", seed=21)
    e = Env(c, data / "mo-data", repo, tool_env)
    c.apply(_restricted_workload("mo", "mo-data-mo-0", real_node.chart_image()))
    t0 = time.monotonic()
    # The chart exactly as users install it: default values, no --set.
    e.run("helm", "install", RELEASE, str(CHART), "--namespace", NS, "--wait", "--timeout", "180s")
    print(f"helm install --wait: {time.monotonic() - t0:.1f}s")
    yield e
    # No --wait: the cluster drains its pods when it stops (this module is its only user).
    e.run("helm", "uninstall", RELEASE, "-n", NS, check=False)


def test_operator_runs_in_the_image_under_restricted_pod_security(env: Env) -> None:
    api = env.cluster.api()
    ns = api.get(f"/api/v1/namespaces/{NS}")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    dep = api.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{RELEASE}")
    assert dep["status"].get("readyReplicas") == 1, dep["status"]
    pod = api.get(f"/api/v1/namespaces/{NS}/pods/{env.operator_pod()}")
    container = pod["spec"]["containers"][0]
    assert container["image"] == real_node.chart_image()       # the default, no override
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["containerID"].startswith("containerd://"), status
    assert pod["spec"]["nodeName"] == real_node.NODE_NAME
    # The runtime enforces what the spec says: uid, read-only root.
    assert env.exec("id", "-u").strip() == str(UID)
    out = subprocess.run([str(paths.binary("kubectl")), "exec", "-n", NS, env.operator_pod(), "--",
                          "touch", "/opt/mobackup/x"], capture_output=True, text=True, env=env.tool_env, timeout=60)
    assert out.returncode != 0 and "Read-only file system" in out.stderr, out


def test_helm_test_passes(env: Env) -> None:
    out = env.run("helm", "test", RELEASE, "--namespace", NS, "--timeout", "120s")
    assert f"TEST SUITE:     {RELEASE}-test" in out and "Phase:          Succeeded" in out, out


def _storage(env: Env) -> None:
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MOBackupStorage",
                       "metadata": {"name": "local", "namespace": NS},
                       "spec": {"pvc": {"claimName": "backups", "path": "repo"}}})
    env.wait_phase("mobackupstorages", "local", "Available", timeout=120)


def _s3_storage(env: Env) -> None:
    """deploy/examples/storage-s3.yaml (encrypted, zstd) pointed at the cluster's SeaweedFS, which
    listens on the host's address: the operator's pod and the Jobs reach it from the pod network."""
    s3 = env.cluster.s3
    assert s3 is not None
    for doc in yaml.safe_load_all((paths.REPO_ROOT / "deploy" / "examples" / "storage-s3.yaml").read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = NS
        if doc["kind"] == "Secret" and "AWS_ACCESS_KEY_ID" in doc["stringData"]:
            doc["stringData"] = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        elif doc["kind"] == "Secret":
            doc["stringData"] = {"key": secrets.token_urlsafe(32)}
        else:
            doc["spec"]["s3"].update(endpoint=s3.endpoint, bucket=s3.bucket, prefix="real-node", region=s3.region)
        env.cluster.apply(doc)
    env.wait_phase("mobackupstorages", "minio", "Available", timeout=120)


def _job_pod(env: Env, job: str) -> dict[str, Any]:
    pods = env.cluster.api().get(f"/api/v1/namespaces/{NS}/pods", labelSelector=f"job-name={job}")["items"]
    assert pods, f"no pod of Job {job} (ttl?)"
    return pods[-1]


def test_backup_and_restore_round_trip_as_jobs_in_the_image(env: Env) -> None:
    from mobackup.sample import mutate_mo_data, snapshot_tree

    api = env.cluster.api()
    _storage(env)
    before = snapshot_tree(env.data)
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MOBackup",
                       "metadata": {"name": "full-1", "namespace": NS},
                       "spec": {"source": {"pvc": {"claimName": "mo-data-mo-0", "path": "mo-data"},
                                           "workload": {"kind": "StatefulSet", "name": "mo"}},
                                "storageRef": {"name": "local"}, "type": "Full", "consistency": "Stop"}})
    full = env.wait_phase("mobackups", "full-1", "Completed")["status"]
    assert full["backupID"] and full["fileCount"] > 0
    # The Job ran in the image, as the runtime enforced the hardened context.
    pod = _job_pod(env, full["jobName"])
    c = pod["spec"]["containers"][0]
    assert c["image"] == real_node.chart_image()
    sc, psc = c["securityContext"], pod["spec"]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert psc.get("runAsNonRoot") or sc.get("runAsNonRoot")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    owners = {p.stat().st_uid for p in (env.repo / "repo").rglob("*")}
    assert owners == {UID}, f"repository files written by uids {owners}, not the image's {UID}"
    assert api.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/mo")["spec"]["replicas"] == 1

    mutate_mo_data(env.data, seed=22)
    assert snapshot_tree(env.data) != before
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MORestore",
                       "metadata": {"name": "restore-1", "namespace": NS},
                       "spec": {"backupName": "full-1", "overwrite": True,
                                "target": {"pvc": {"claimName": "mo-data-mo-0", "path": "mo-data"},
                                           "workload": {"kind": "StatefulSet", "name": "mo"}}}})
    restored = env.wait_phase("morestores", "restore-1", "Completed")["status"]
    assert restored["backupID"] == full["backupID"]
    assert snapshot_tree(env.data) == before, "the restored tree differs from the backed-up one"


def test_a_job_killed_for_its_memory_limit_fails_naming_the_limit(env: Env) -> None:
    limit = "24Mi"   # below what the agent needs to import itself: the kernel kills it (OOMKilled)
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MOBackup",
                       "metadata": {"name": "oom-1", "namespace": NS},
                       "spec": {"source": {"pvc": {"claimName": "mo-data-mo-0", "path": "mo-data"}},
                                "storageRef": {"name": "local"}, "type": "Full", "consistency": "None",
                                "job": {"backoffLimit": 0,
                                        "resources": {"requests": {"memory": limit}, "limits": {"memory": limit}}}}})
    st = env.wait_phase("mobackups", "oom-1", "Failed")["status"]
    pod = _job_pod(env, st["jobName"])
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["reason"] == "OOMKilled", term
    assert st["reason"] == "OOMKilled", st
    assert f"memory limit of {limit}" in st["message"], st


def test_image_facts(env: Env) -> None:
    """Size, user, Python and dependency versions, no build tools or caches, CLI start time."""
    archive = real_cluster.image_archives()[1]
    size_mb = archive.stat().st_size / 1e6
    print(f"image archive: {size_mb:.0f} MB")
    assert size_mb < 450, f"image grew to {size_mb:.0f} MB"
    assert env.exec("id", "-u").strip() == str(UID) and env.exec("id", "-g").strip() == str(UID)
    # Debian's python3 in the local stand-in base (upstream python:3.11.14-slim-bookworm has 3.11.14).
    version = env.exec("python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    assert version == "3.11", version
    frozen = env.exec("python", "-c", "import importlib.metadata as m; print('\\n'.join(sorted("
                      "f'{d.metadata[\"Name\"]}=={d.version}'.lower().replace('_', '-') for d in m.distributions())))")
    installed = {line for line in frozen.split() if not line.startswith(("mo-backup-operator==", "pip==",
                                                                         "setuptools==", "wheel=="))}
    pinned = {line.lower() for line in LOCK.read_text().splitlines() if line and not line.startswith("#")}
    assert installed == pinned, f"extra: {installed - pinned}, missing: {pinned - installed}"
    # Wheels outside the venv are the interpreter's own for `python -m venv` (Debian's
    # /usr/share/python-wheels; upstream's ensurepip/_bundled), not leftovers of the build.
    leftovers = env.exec("sh", "-c", "for t in gcc cc g++ make ld as cpp; do command -v $t; done; "
                         "ls -d /root/.cache /tmp/.cache /home/*/.cache /wheels /src 2>/dev/null; "
                         "find / -xdev \\( -name '*.whl' -o -path '*/pip/http*' \\) "
                         "-not -path '/usr/share/python-wheels/*' -not -path '*/ensurepip/_bundled/*' "
                         "2>/dev/null | head; true")
    assert leftovers.strip() == "", f"build tools or caches in the image:\n{leftovers}"
    for argv in (["--version"], ["--help"]):
        took = float(env.exec("python", "-c", "import subprocess, time; t = time.monotonic(); "
                              f"subprocess.run(['mobackup', *{argv!r}], check=True, capture_output=True); "
                              "print(time.monotonic() - t)").strip())
        print(f"mobackup {' '.join(argv)} in the container: {took:.2f}s")
        assert took < 5, f"mobackup {argv} took {took:.1f}s to start"


class PodSql(SqlClient):
    """SQL on a MatrixOne pod, from the host (pod addresses on the bridge are routed here)."""

    def __init__(self, host: str) -> None:
        self.host = host

    def connect(self) -> Any:
        return mo_connect(host=self.host, port=SQL_PORT)


def _matrixone(env: Env, name: str, claim: str, home: Path) -> PodSql:
    """A StatefulSet of the MatrixOne image on a local PV (the suite's launch configuration copied
    onto it: working directory /data, data in /data/mo-data), admissible under `restricted`, and a
    Service in front of it; returns when its pod answers SQL."""
    host = env.cluster.pv_root / NS / claim
    if not host.exists():
        host = env.cluster.make_pvc(NS, claim, size="5Gi")
    shutil.copytree(home / "etc", host / "etc", dirs_exist_ok=True)
    labels = {"app": name}
    env.cluster.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
         "spec": {"selector": labels, "ports": [{"name": "sql", "port": SQL_PORT}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": NS},
         "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "terminationGracePeriodSeconds": 10,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": "matrixone", "image": real_node.MO_IMAGE, "imagePullPolicy": "Never",
                          "args": ["-launch", "etc/launch/launch.toml"], "workingDir": "/data",
                          "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                          "readinessProbe": {"tcpSocket": {"port": SQL_PORT}, "periodSeconds": 2},
                          "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}}])
    api = env.cluster.api()
    deadline = time.monotonic() + 240
    while True:
        pod = api.get(f"/api/v1/namespaces/{NS}/pods/{name}-0") if _exists(api, f"{name}-0") else {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if statuses and statuses[0].get("ready"):
            break
        assert time.monotonic() < deadline, f"MatrixOne {name} not ready: {pod.get('status')}\n" + \
            env.cluster.pod_log(NS, f"{name}-0")[-3000:]
        time.sleep(1)
    mo = PodSql(pod["status"]["podIP"])
    deadline = time.monotonic() + 120
    while True:
        try:
            mo.sql("select 1")
            return mo
        except Exception:
            assert time.monotonic() < deadline, env.cluster.pod_log(NS, f"{name}-0")[-3000:]
            time.sleep(1)


def _exists(api: Any, pod: str) -> bool:
    return any(p["metadata"]["name"] == pod for p in api.get(f"/api/v1/namespaces/{NS}/pods")["items"])


def test_online_backup_of_matrixone_in_its_image_through_a_service(env: Env, mo_install: Any) -> None:
    """MatrixOne runs as a StatefulSet from its image with its data on a local PV; the online
    backup's Job reaches it through its Service by name (CoreDNS) and runs beside its pod, into the
    seed's S3 storage example (SeaweedFS on the host's address); the backup restores from S3 into a
    new PV (the drill below serves such a copy with MatrixOne and checks its rows)."""
    home = mo_install(DEFAULT_VERSION)
    _s3_storage(env)
    mo = _matrixone(env, "mo1", "mo-data-mo1-0", home)
    create_db(mo, "db1", 2000)
    at_backup = checksums(mo, ["db1"])
    api = env.cluster.api()
    env.cluster.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "mo-sql", "namespace": NS,
                                    "labels": {"mobackup.io/credentials": "true"}},
                       "stringData": {"password": PASSWORD}})
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MOBackup",
                       "metadata": {"name": "online-1", "namespace": NS},
                       "spec": {"source": {"pvc": {"claimName": "mo-data-mo1-0", "path": "mo-data"},
                                           "workload": {"kind": "StatefulSet", "name": "mo1"},
                                           "sql": {"host": f"mo1.{NS}.svc", "port": SQL_PORT, "user": USER,
                                                   "passwordSecretRef": {"name": "mo-sql", "key": "password"}}},
                                "storageRef": {"name": "minio"}, "type": "Full"}})
    st = env.wait_phase("mobackups", "online-1", "Completed", timeout=300)["status"]
    assert st["storedBytes"] > 0 and env.cluster.s3 is not None
    stored = env.cluster.s3.client().list_objects_v2(Bucket=env.cluster.s3.bucket, Prefix="real-node/")
    assert stored.get("KeyCount", 0) > 0, "nothing in the bucket"
    assert st["consistency"] == "Online" and st["moVersion"].startswith("8.0.30-MatrixOne"), st
    assert api.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/mo1")["spec"]["replicas"] == 1
    create_db(mo, "db2", 100)   # after the backup: not in the restored copy

    env.cluster.make_pvc(NS, "mo-data-mocopy-0", size="5Gi")
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MORestore",
                       "metadata": {"name": "online-copy", "namespace": NS},
                       "spec": {"backupName": "online-1",
                                "target": {"pvc": {"claimName": "mo-data-mocopy-0", "path": "mo-data"}}}})
    restored = env.wait_phase("morestores", "online-copy", "Completed", timeout=300)["status"]
    assert restored["backupID"] == st["backupID"] and restored["fileCount"] > 0, restored
    copied = env.cluster.pv_root / NS / "mo-data-mocopy-0" / "mo-data"
    assert sum(1 for p in copied.rglob("*") if p.is_file()) == restored["fileCount"]
    # The next test's drill starts MatrixOne on a restored copy and checks these (one MatrixOne
    # start less than serving this copy too).
    env.expect = {"db1": at_backup["db1"]}
    api.merge_patch(f"/apis/apps/v1/namespaces/{NS}/statefulsets/mo1", {"spec": {"replicas": 0}})


def test_restore_drill_of_the_online_backup_in_the_matrixone_image(env: Env) -> None:
    """A MORestoreDrill: the restore (init container), a scratch MatrixOne from its image and the
    checker, in one pod under `restricted`, on a scratch PVC the scheduler binds to a local PV.
    The chart's drill.matrixOne.image must be the backed-up server's image (values.yaml says so):
    the one value set here, with `helm upgrade --reuse-values`."""
    assert env.expect, "needs the online backup of the test before"
    count_ids_lengths = env.expect["db1"]
    env.logs.append(env.operator_log())     # the upgrade replaces the operator's pod
    env.run("helm", "upgrade", RELEASE, str(CHART), "--namespace", NS, "--reuse-values",
            "--set", f"drill.matrixOne.image={real_node.MO_IMAGE}", "--wait", "--timeout", "180s")
    env.cluster.make_local_pv("drill-scratch-1")
    env.cluster.apply({"apiVersion": "mobackup.io/v1alpha1", "kind": "MORestoreDrill",
                       "metadata": {"name": "drill-1", "namespace": NS},
                       "spec": {"backupName": "online-1", "timeoutSeconds": 300,
                                "scratch": {"size": "5Gi", "storageClassName": real_cluster.LOCAL_STORAGE_CLASS},
                                "sql": {"user": USER, "passwordSecretRef": {"name": "mo-sql", "key": "password"}},
                                "checks": [
                                    *({"query": f"select {expr} from db1.t", "expect": str(value)}
                                      for expr, value in zip(("count(*)", "sum(id)", "sum(length(v))"),
                                                             count_ids_lengths, strict=True)),
                                    {"query": "select count(*) from mo_catalog.mo_database where datname = 'db2'",
                                     "expect": "0"}]}})
    st = env.wait_phase("morestoredrills", "drill-1", "Completed", timeout=420)["status"]
    assert st["reason"] == "DrillPassed", st


def test_operator_log_has_no_error(env: Env) -> None:
    """Last in this module: the operator's whole log through the suite above (`kubectl logs`)."""
    log = env.run("kubectl", "logs", "-n", NS, env.operator_pod(), "--tail=-1")
    assert log.strip(), "empty operator log"
    log = "\n".join([*env.logs, log])
    errors = [line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback", line)]
    assert not errors, "\n".join(errors[:20])
