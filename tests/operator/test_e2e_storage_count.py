"""MOBackupStorage.status.backupCount follows completed backups and deletions at once, not only at
the periodic check (here one hour, so only the event-driven refresh can move it)."""

from __future__ import annotations

import pytest
from mo_e2e import Env

pytestmark = pytest.mark.cluster

SOURCE = {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet", "name": "mo"}}


def _count(env: Env, expected: int, what: str) -> None:
    env.wait("MOBackupStorage", "s3", lambda o: (o.get("status") or {}).get("backupCount") == expected,
             timeout=20, what=f"backupCount {expected} {what}")


def test_backup_count_refreshes_when_a_backup_or_delete_ends(env: Env) -> None:
    env.stand_in(objects=5)
    env.s3_storage()
    env.api.merge_patch(env.path("MOBackupStorage", "s3"), {"spec": {"checkIntervalSeconds": 3600}})
    env.wait("MOBackupStorage", "s3", lambda o: o.get("status", {}).get("observedGeneration") == 2, 60,
             "the check of generation 2")
    _count(env, 0, "before any backup")
    spec = {"source": SOURCE, "storageRef": {"name": "s3"}, "deletionPolicy": "Delete"}
    env.create("MOBackup", "one", spec)
    assert env.wait_phase("MOBackup", "one", "Completed", "Failed")["status"]["phase"] == "Completed"
    _count(env, 1, "after the first backup")
    env.create("MOBackup", "two", {**spec, "type": "Full"})
    assert env.wait_phase("MOBackup", "two", "Completed", "Failed")["status"]["phase"] == "Completed"
    _count(env, 2, "after the second backup")
    env.api.delete(env.path("MOBackup", "two"))
    env.wait_gone("MOBackup", "two", timeout=60)
    _count(env, 1, "after deleting one")
