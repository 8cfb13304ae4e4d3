"""Faults, end to end: a Job pod killed mid-copy, the operator killed mid-backup (with and without
its Job surviving), a run deleted while the operator is down, two backups of one source at once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from mo_e2e import Env, wait_for_blobs

from mobackup.engine.verify import verify_backup

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


def slow_backup(**extra: Any) -> dict[str, Any]:
    # ~6 MB of mo-data at 512 KiB/s: a copy of ~10 s, long enough to interfere with.
    return {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS}, "storageRef": {"name": "s3"},
            "bandwidthLimit": "512Ki", **extra}


def job_pods(env: Env, job: str) -> list[dict[str, Any]]:
    return env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector=f"job-name={job}")["items"]


def copying(env: Env, name: str) -> dict[str, Any]:
    """Wait until the agent has stored some blobs (the copy is under way)."""
    wait_for_blobs(env.repository_options())
    return env.wait_phase("MOBackup", name, "Running")


def assert_repository_clean(env: Env) -> list[str]:
    """Every listed backup is complete: all its blobs are there and match their digests."""
    repo = env.repository()
    problems: list[str] = []
    ids = [s.id for s in repo.list_backups(problems)]
    assert problems == []
    for backup_id in ids:
        result = verify_backup(repo, backup_id)
        assert result.ok, result.problems
    return ids


def test_job_pod_killed_mid_copy(env: Env) -> None:
    env.stand_in(objects=60)
    env.s3_storage()
    env.create("MOBackup", "b", slow_backup(job={"backoffLimit": 1}))
    st = copying(env, "b")["status"]
    [pod] = job_pods(env, st["jobName"])
    env.api.delete(f"/api/v1/namespaces/{env.ns}/pods/{pod['metadata']['name']}", {"gracePeriodSeconds": 0})
    st = env.wait_phase("MOBackup", "b", "Completed", "Failed", timeout=180)["status"]
    ids = assert_repository_clean(env)
    if st["phase"] == "Completed":  # retried by the Job (backoffLimit 1)
        assert st["attempts"] >= 2 and ids == [st["backupID"]], st
    else:
        assert st["reason"] and st["message"] and ids == []
    env.wait_replicas_running()


def test_operator_restarted_mid_backup(env: Env) -> None:
    env.stand_in(objects=60)
    env.s3_storage()
    env.create("MOBackup", "b", slow_backup())
    st = copying(env, "b")["status"]
    env.op.kill()  # SIGKILL: no cleanup of any kind
    time.sleep(2)
    env.op.start()
    done = env.wait_phase("MOBackup", "b", "Completed", "Failed", timeout=120)["status"]
    assert done["phase"] == "Completed", done
    assert done["jobName"] == st["jobName"] and done["startTime"] == st["startTime"]  # resumed, not redone
    assert assert_repository_clean(env) == [done["backupID"]]
    env.wait_replicas_running()


def test_job_vanished_while_operator_down(env: Env) -> None:
    """The dead-man switch: never Running forever, and the workload is scaled back."""
    env.stand_in(objects=60)
    env.s3_storage()
    env.create("MOBackup", "b", slow_backup())
    st = copying(env, "b")["status"]
    assert env.replicas()[0] == 0
    env.op.kill()
    env.api.delete(f"/apis/batch/v1/namespaces/{env.ns}/jobs/{st['jobName']}", {"propagationPolicy": "Background"})
    env.op.start()
    done = env.wait_phase("MOBackup", "b", "Completed", "Failed", timeout=60)["status"]
    assert done["phase"] == "Failed" and done["reason"] == "JobVanished", done
    env.wait_replicas_running()
    assert assert_repository_clean(env) == []
    # The source's Lease was released: the next backup runs at once.
    env.create("MOBackup", "next", {**slow_backup(), "bandwidthLimit": None})
    assert env.wait_phase("MOBackup", "next", "Completed", "Failed")["status"]["phase"] == "Completed"


def test_run_deleted_while_operator_down_scales_back(env: Env) -> None:
    """The replicas to restore live on the run (status + a finalizer), never on the workload: a run
    deleted while the operator is down stays until the operator scaled MatrixOne back."""
    from mobackup.k8s.workload import FINALIZER

    env.stand_in(objects=60)
    env.s3_storage()
    env.create("MOBackup", "b", slow_backup())  # deletionPolicy Retain: no kopf finalizer
    copying(env, "b")
    replicas, ann = env.replicas()
    assert replicas == 0 and not any(k.startswith("mobackup.io/") for k in ann)
    run = env.get("MOBackup", "b")
    assert run["status"]["scaledWorkload"]["replicas"] == 1 and FINALIZER in run["metadata"]["finalizers"]
    env.op.kill()
    env.api.delete(env.path("MOBackup", "b"))
    time.sleep(2)
    assert env.get("MOBackup", "b")["metadata"]["deletionTimestamp"]  # held by the finalizer
    env.op.start()
    env.wait_replicas_running(timeout=90)  # the sweeper found the record of a run being deleted
    env.wait_gone("MOBackup", "b")
    assert not any(k.startswith("mobackup.io/") for k in env.replicas()[1])


def test_two_backups_of_one_source_at_once(env: Env) -> None:
    env.stand_in(objects=30)
    env.s3_storage()
    env.create("MOBackup", "a", slow_backup(bandwidthLimit="1Mi"))
    env.create("MOBackup", "b", slow_backup(bandwidthLimit="1Mi"))

    def one_waits(_: Any) -> bool:
        sa, sb = (env.get("MOBackup", n).get("status") or {} for n in ("a", "b"))
        return {sa.get("phase"), sb.get("phase")} == {"Running", "Pending"} and \
            "WaitingForLease" in (sa.get("reason"), sb.get("reason"))

    env.wait("MOBackup", "a", one_waits, 60, "one Running, the other Pending on the Lease")
    waiting = next(n for n in ("a", "b") if env.get("MOBackup", n)["status"]["reason"] == "WaitingForLease")
    assert "one backup or restore at a time" in env.get("MOBackup", waiting)["status"]["message"]
    first, second = (env.wait_phase("MOBackup", n, "Completed", "Failed", timeout=180)["status"] for n in ("a", "b"))
    assert first["phase"] == second["phase"] == "Completed", (first, second)
    early, late = sorted((first, second), key=lambda s: s["startTime"])
    assert late["startTime"] >= early["completionTime"]  # the copies did not overlap
    assert len(assert_repository_clean(env)) == 2
    env.wait_replicas_running()


def test_result_recovered_from_the_repository_manifest(env: Env) -> None:
    """When a succeeded Job's termination message is lost, the operator reads the manifest the run
    published (same source, started after the Job) — with its own RBAC and the Secret's credentials."""
    from mobackup.k8s import controller, models
    from mobackup.k8s.kube import Kube

    env.stand_in(objects=10)
    env.s3_storage()
    env.create("MOBackup", "b", {"source": {"pvc": {"claimName": "mo-data"}, "workload": STS},
                                 "storageRef": {"name": "s3"}})
    obj = env.wait_phase("MOBackup", "b", "Completed", "Failed")
    assert obj["status"]["phase"] == "Completed"
    ctx = controller.Ctx(Kube(env.cluster.kubernetes_client(operator=True)))
    obj["kind"] = "MOBackup"
    result = controller.summary_from_repository(ctx, obj, models.parse_backup(obj["spec"], env.ns))
    assert result and result["ok"] and result["result"]["id"] == obj["status"]["backupID"]
    assert result["result"]["source"] == f"{env.ns}/mo-data"
