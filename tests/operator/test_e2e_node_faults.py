"""Faults of the node, end to end (issue 11): the restore target's volume is too small (a 12 MiB tmpfs
under the PV): Failed with reason VolumeFull, the target is left as it was, nothing staged is left
behind, MatrixOne is started again.

A MatrixOne pod that outlives its grace period is emulated with a finalizer on the pod: the local
node (tests/cluster/local_node.py) runs a container under bwrap --die-with-parent and signals the
whole process group, so bwrap dies of the SIGTERM and takes a process that ignores it along."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mo_e2e import STAND_IN, Env

from mobackup.sample import generate_mo_data, snapshot_tree

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


def statefulset(env: Env, claim: str, command: list[str], grace: int = 5) -> None:
    env.api.create(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "mo"},
        "spec": {"replicas": 1, "serviceName": "mo", "selector": {"matchLabels": {"app": "mo"}},
                 "template": {"metadata": {"labels": {"app": "mo"}}, "spec": {
                     "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "matrixone", "image": "matrixone-stand-in", "command": command,
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}})


def wait_ready(host: Path) -> None:
    deadline = time.monotonic() + 60
    while not (host / ".ready").exists():
        assert time.monotonic() < deadline, "the MatrixOne stand-in never started"
        time.sleep(0.2)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_restore_target_volume_fills_up(env: Env) -> None:
    # The source: ~13 MB of mo-data on an ordinary volume, backed up without stopping anything.
    big = env.cluster.make_pvc(env.ns, "big")
    generate_mo_data(big / "mo-data", seed=11, objects=100)
    env.s3_storage()
    env.create("MOBackup", "big", {"source": {"pvc": {"claimName": "big"}}, "consistency": "None",
                                   "storageRef": {"name": "s3"}})
    assert env.wait_phase("MOBackup", "big", "Completed", "Failed")["status"]["phase"] == "Completed"
    # The target: MatrixOne's ~5 MB on a 12 MiB volume, too small for the backup beside it.
    host = env.cluster.make_pvc(env.ns, "mo-data")
    with small_tmpfs(host, "12m"):
        generate_mo_data(host / "mo-data", seed=1, objects=40)
        statefulset(env, "mo-data", ["python", "-c", STAND_IN])
        wait_ready(host)
        before = snapshot_tree(host / "mo-data", include_transient=True)
        env.create("MORestore", "r", {"backupName": "big", "overwrite": True,
                                      "target": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                      "job": {"backoffLimit": 0}})
        st = env.wait_phase("MORestore", "r", "Completed", "Failed", timeout=180)["status"]
        print("volume full:", st["reason"], st["message"][:300])
        assert st["phase"] == "Failed" and st["reason"] == "VolumeFull", st
        # Refused before anything is written: the message says what the restore needs and what is free.
        assert "the restore needs" in st["message"] and "free" in st["message"], st
        env.wait_replicas_running()
        assert snapshot_tree(host / "mo-data", include_transient=True) == before  # left as it was
        assert [p.name for p in host.iterdir() if p.name.startswith(".mobackup-")] == []  # nothing staged left
        env.api.delete(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets/mo")
        deadline = time.monotonic() + 60
        while env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector="app=mo")["items"]:
            assert time.monotonic() < deadline, "the stand-in pod did not go"
            time.sleep(0.2)


def test_copy_waits_while_a_matrixone_pod_outlives_its_grace_period(env: Env) -> None:
    """A pod that is still there after its grace period (emulated with a finalizer on the pod, since
    the local node cannot run a process that ignores SIGTERM): Stop keeps waiting, creates no Job, and
    copies only once the pod is gone."""
    env.stand_in(objects=10)
    pod_path = f"/api/v1/namespaces/{env.ns}/pods/mo-0"
    env.api.merge_patch(pod_path, {"metadata": {"finalizers": ["test.mobackup.io/linger"]}})
    env.s3_storage()
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                 "storageRef": {"name": "s3"}})
    waiting = env.wait("MOBackup", "b", lambda o: (o.get("status") or {}).get("reason") == "WaitingForPodsToStop",
                       30, "waiting for the lingering pod")
    assert "1 pod(s) still running" in waiting["status"]["message"]
    time.sleep(8)  # well past the stand-in's 5 s grace period
    assert env.api.get(pod_path)["metadata"].get("deletionTimestamp")
    st = env.get("MOBackup", "b")["status"]
    assert (st["phase"], st["reason"]) == ("Pending", "WaitingForPodsToStop"), st
    assert env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs")["items"] == []  # nothing copied yet
    released = time.time()
    env.api.merge_patch(pod_path, {"metadata": {"finalizers": None}})
    st = env.wait_phase("MOBackup", "b", "Completed", "Failed", timeout=120)["status"]
    assert st["phase"] == "Completed", st
    from mobackup.k8s.status import parse_iso

    started = parse_iso(st["startTime"])
    assert started is not None and started.timestamp() >= released - 1  # the Job came after the pod left
    env.wait_replicas_running()
