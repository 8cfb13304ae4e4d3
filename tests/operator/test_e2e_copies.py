"""MOBackupStorage.spec.copyTo end to end (issue 23): the real API server, the operator with the chart's
RBAC, real S3. A backup completes, the operator's copy Job puts it into a second storage (another
prefix, another encryption key, no compression), the MOBackup's status and the storage's say where it
lives, and the copy restores to exactly the backed-up tree. (The logic in detail: test_copies.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mo_e2e import Env, jobs_run_these_sources

from mobackup.engine.errors import EncryptionKeyError
from mobackup.engine.repository import open_repository
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import snapshot_tree

pytestmark = pytest.mark.cluster

FAR_KEY = "a different passphrase for the copies"


def test_a_completed_backup_is_copied_to_a_second_storage_and_restores(env: Env, tmp_path: Path) -> None:
    jobs_run_these_sources(env)
    data = env.stand_in(objects=10)
    env.s3_storage(encryption=True)
    env.secret("far-key", {"key": FAR_KEY})
    env.create("MOBackupStorage", "far", {
        "s3": {"endpoint": env.s3.endpoint, "bucket": env.s3.bucket, "prefix": f"{env.ns}/far", "region": env.s3.region,
               "pathStyle": True, "credentialsSecretRef": {"name": "s3-creds"}},
        "encryption": {"keySecretRef": {"name": "far-key"}}, "compression": "none"})
    env.wait_phase("MOBackupStorage", "far", "Available", timeout=60)
    disk = env.cluster.make_pvc(env.ns, "copies")  # a second target: a PVC (mounted at /repo-to)
    env.create("MOBackupStorage", "disk", {"pvc": {"claimName": "copies"},
                                           "encryption": {"keySecretRef": {"name": "far-key"}}})
    env.wait_phase("MOBackupStorage", "disk", "Available", timeout=60)
    env.api.merge_patch(env.path("MOBackupStorage", "s3"), {"spec": {"copyTo": [{"name": "far"}, {"name": "disk"}]}})

    env.create("MOBackup", "b1", {"source": {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet",
                                                                                       "name": "mo"}},
                                  "storageRef": {"name": "s3"}})
    st = env.wait_phase("MOBackup", "b1", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st
    backed_up = snapshot_tree(data)
    b1 = env.wait("MOBackup", "b1", lambda o: len((o.get("status") or {}).get("copies") or []) == 2, 60,
                  "status.copies")
    copy, on_disk = sorted(b1["status"]["copies"], key=lambda c: c["storage"] != "far")
    assert (on_disk["storage"], on_disk["backupID"], on_disk["location"]) == ("disk", st["backupID"],
                                                                              "pvc://copies/mobackup")
    assert (copy["storage"], copy["backupID"], copy["location"]) == ("far", st["backupID"],
                                                                     f"s3://{env.s3.bucket}/{env.ns}/far")
    assert copy["completionTime"] and not b1["status"].get("copyFailures")
    assert {"CopyStarted", "Copied"} <= env.event_reasons("b1", {"CopyStarted", "Copied"})
    # The source storage's view, and the lag metric back at 0 once copied.
    src = env.wait("MOBackupStorage", "s3", lambda o: all(
        c.get("copied") == 1 and c.get("pending") == 0 for c in (o.get("status") or {}).get("copies") or [{}]), 30,
        "status.copies copied 1")["status"]
    assert src["copies"] == [{"storage": "far", "copied": 1, "pending": 0},
                             {"storage": "disk", "copied": 1, "pending": 0}]
    metrics = env.op.metrics()
    assert f'mobackup_copy_lag_seconds{{namespace="{env.ns}",storage="s3",target="far"}} 0.0' in metrics
    assert f'mobackup_successes_total{{kind="Copy",namespace="{env.ns}"}} 2.0' in metrics
    # The copy Job reported through its termination message and is gone.
    jobs = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs", labelSelector="mobackup.io/action=copy")
    assert jobs["items"] == []

    # The copy is in the target under its own key (the source's key does not open it) and restores.
    far = env.repository_options("far")
    with pytest.raises(EncryptionKeyError):
        open_repository(env.repository_options("far", encryption=True))
    target = open_repository(replace(far, encryption_key=FAR_KEY))
    assert [s.id for s in target.list_backups()] == [st["backupID"]]
    assert verify_backup(target, st["backupID"]).ok
    run_restore(target, st["backupID"], tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == backed_up
    on_pvc = open_repository(replace(far, url=str(disk / "mobackup"), encryption_key=FAR_KEY))
    assert [s.id for s in on_pvc.list_backups()] == [st["backupID"]] and verify_backup(on_pvc, st["backupID"]).ok

    # Cost in the storage's status: refreshed at the check after the backup completed.
    stats = env.wait("MOBackupStorage", "s3", lambda o: ((o.get("status") or {}).get("stats") or {}).get("backups")
                     == 1, 30, "status.stats")["status"]["stats"]
    assert stats["storedBytes"] > 0 and stats["logicalBytes"] == st["sizeBytes"] and stats["computedAt"]
    assert f'mobackup_storage_stored_bytes{{namespace="{env.ns}",storage="s3"}} {float(stats["storedBytes"])}' \
        in env.op.metrics()

    # A storage naming itself as a target is refused (StorageOverlap, with a Warning Event); no Job. The
    # target dropped from the list leaves no series behind.
    env.api.merge_patch(env.path("MOBackupStorage", "s3"), {"spec": {"copyTo": [{"name": "far"}, {"name": "s3"}]}})
    src = env.wait("MOBackupStorage", "s3", lambda o: any(
        c.get("reason") == "StorageOverlap" for c in (o.get("status") or {}).get("copies") or []), 30,
        "StorageOverlap")["status"]
    assert src["copies"][0] == {"storage": "far", "copied": 1, "pending": 0}
    assert src["copies"][1]["storage"] == "s3" and src["copies"][1]["pending"] == 1
    assert "StorageOverlap" in env.event_reasons("s3", {"StorageOverlap"})
    assert not [line for line in env.op.metrics().splitlines() if 'target="disk"' in line]  # no longer a target
    assert env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs", labelSelector="mobackup.io/action=copy")[
        "items"] == []
