"""Schedules with retention over several runs, and deletionPolicy Retain / Delete, end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from mo_e2e import Env

from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import snapshot_tree

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}
SOURCE = {"pvc": {"claimName": "mo-data"}, "workload": STS}


def backup_spec(**extra: Any) -> dict[str, Any]:
    return {"source": SOURCE, "storageRef": {"name": "s3"}, **extra}


def test_schedule_with_retention_over_several_runs(env: Env) -> None:
    data = env.stand_in(objects=20)
    env.s3_storage()
    env.create("MOBackupSchedule", "nightly", {
        "fullSchedule": "@every 1h", "incrementalSchedule": "@every 6s",
        "retention": {"keepLast": 2}, "failedBackupsHistoryLimit": 1,
        "template": {"metadata": {"labels": {"team": "db"}}, "spec": backup_spec()}})
    seen: dict[str, dict[str, Any]] = {}  # every Completed backup ever observed: name -> status

    def observe() -> list[dict[str, Any]]:
        items = env.api.get(env.path("MOBackup"), labelSelector="mobackup.io/schedule=nightly")["items"]
        for b in items:
            if (b.get("status") or {}).get("phase") == "Completed":
                seen[b["metadata"]["name"]] = b["status"]
        return items

    def wait_completed(n: int, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while len(seen) < n:
            assert time.monotonic() < deadline, f"only {sorted(seen)} completed\n{env.op.log_tail()}"
            observe()
            time.sleep(0.3)

    wait_completed(3)
    env.change(data, seed=21)
    # "Backup now": a Full on demand (the second chain).
    env.api.merge_patch(env.path("MOBackupSchedule", "nightly"),
                        {"metadata": {"annotations": {"mobackup.io/run-now": "Full-1"}}})
    deadline = time.monotonic() + 120
    while not any(s["type"] == "Full" and n.endswith("-now") for n, s in seen.items()):
        assert time.monotonic() < deadline, f"no run-now Full in {sorted(seen)}\n{env.op.log_tail()}"
        observe()
        time.sleep(0.3)
    # Two incrementals after it: the older of the two kept is based on a backup that retention deletes.
    wait_completed(len(seen) + 2)
    env.api.merge_patch(env.path("MOBackupSchedule", "nightly"), {"spec": {"suspend": True}})

    # Settle: nothing active, retention applied: the two newest stay, and no base of theirs (every
    # file list is complete).
    deadline = time.monotonic() + 120
    while True:
        items = observe()
        sched = env.get("MOBackupSchedule", "nightly")["status"]
        completed = {b["metadata"]["name"] for b in items if (b.get("status") or {}).get("phase") == "Completed"}
        newest = sorted(seen.items(), key=lambda kv: (kv[1]["completionTime"], kv[0]), reverse=True)
        expected = {n for n, _ in newest[:2]}
        if not sched.get("active") and completed == expected and len(items) == len(expected):
            break
        assert time.monotonic() < deadline, (f"retention did not settle: completed={sorted(completed)} "
                                             f"expected={sorted(expected)} active={sched.get('active')}\n"
                                             f"{env.op.log_tail()}")
        time.sleep(0.5)
    assert len(seen) >= 5 and len(expected) < len(seen)
    # The data of deleted backups left the repository (template deletionPolicy defaults to Delete).
    repo = env.repository()
    assert {s.id for s in repo.list_backups()} == {seen[n]["backupID"] for n in expected}
    # Kept incrementals whose bases were deleted restore on their own.
    by_id = {s["backupID"]: n for n, s in seen.items()}
    orphans = [n for n in expected if seen[n].get("baseBackupID") in by_id and by_id[seen[n]["baseBackupID"]]
               not in expected]
    assert orphans, f"no kept backup lost its base: {sorted(expected)}"
    for name in orphans:
        assert verify_backup(repo, seen[name]["backupID"]).ok
    assert sched["lastSuccessfulBackup"] == newest[0][0] and sched["nextScheduleTime"]
    types = {n: s["type"] for n, s in seen.items()}
    assert "Incremental" in types.values() and sum(t == "Full" for t in types.values()) >= 2
    for b in items:  # what keeps Argo CD from pruning generated backups
        ann = b["metadata"]["annotations"]
        assert ann["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
        assert ann["argocd.argoproj.io/sync-options"] == "Prune=false"
        assert b["metadata"]["labels"]["team"] == "db" and "ownerReferences" not in b["metadata"]
    # Suspended: no new runs.
    count = len(seen)
    time.sleep(8)
    observe()
    assert len(seen) == count
    assert env.get("MOBackupSchedule", "nightly")["status"]["reason"] in ("Suspended", "RetentionApplied",
                                                                          "BackupCreated")


def test_deletion_policy_retain_keeps_data(env: Env) -> None:
    env.stand_in(objects=10)
    env.s3_storage()
    env.create("MOBackup", "keep", backup_spec(deletionPolicy="Retain"))
    st = env.wait_phase("MOBackup", "keep", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed"
    assert not env.get("MOBackup", "keep")["metadata"].get("finalizers")
    env.api.delete(env.path("MOBackup", "keep"))
    env.wait_gone("MOBackup", "keep", timeout=10)
    assert [s.id for s in env.repository().list_backups()] == [st["backupID"]]


def test_deletion_policy_delete_of_a_base_leaves_its_dependent_restorable(env: Env, tmp_path: Path) -> None:
    data = env.stand_in(objects=10)
    env.s3_storage()
    env.create("MOBackup", "full", backup_spec(deletionPolicy="Delete"))
    full = env.wait_phase("MOBackup", "full", "Completed", "Failed")["status"]
    env.change(data, seed=3)
    env.create("MOBackup", "incr", backup_spec(deletionPolicy="Delete", type="Incremental", baseBackupName="full"))
    incr = env.wait_phase("MOBackup", "incr", "Completed", "Failed")["status"]
    assert incr["phase"] == full["phase"] == "Completed" and incr["baseBackupID"] == full["backupID"]
    at_incr = snapshot_tree(data)

    # The base goes at once, although "incr" names it: the incremental's file list is complete.
    env.api.delete(env.path("MOBackup", "full"))
    env.wait_gone("MOBackup", "full", timeout=60)
    repo = env.repository()
    assert [s.id for s in repo.list_backups()] == [incr["backupID"]]
    deleted = [e for e in env.events("full") if e["reason"] == "DataDeleted"]
    assert deleted and incr["backupID"] in deleted[-1]["message"], deleted  # named as still restorable
    assert verify_backup(repo, incr["backupID"]).ok
    run_restore(repo, incr["backupID"], tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == at_incr

    env.api.delete(env.path("MOBackup", "incr"))
    env.wait_gone("MOBackup", "incr", timeout=60)
    assert env.repository().list_backups() == []
    # And the blobs went with them (garbage collection once nothing references them).
    keys = [o["Key"] for o in env.s3.client().list_objects_v2(Bucket=env.s3.bucket,
                                                               Prefix=f"{env.ns}/s3/blobs/").get("Contents", [])]
    assert keys == []
