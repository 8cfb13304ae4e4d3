"""MOBackupStorage.spec.objectLock end to end (issue 23): the real API server, the operator, and a
SeaweedFS bucket with Object Lock, which enforces the retention. The first backup creates the
repository with the lock, its MOBackup says until when it is locked, the API server refuses a change
of the setting, and deleting the MOBackup (deletionPolicy Delete) waits for the date: the MOBackup
stays, saying why, and the backup's data is deleted once the bucket allows it. (The retention and
mismatch logic in detail: test_object_lock_logic.py.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from mo_e2e import Env, jobs_run_these_sources

from cluster.kube_api import ApiError
from mobackup.engine.errors import BackupNotFound
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.k8s.status import now, parse_iso

pytestmark = pytest.mark.cluster

LOCK_SECONDS = 12.0  # long enough to see the deletion held, short enough to wait for it


def test_a_locked_backup_is_deleted_only_once_its_lock_has_passed(env: Env) -> None:
    jobs_run_these_sources(env)
    env.stand_in(objects=4)
    bucket = f"locked-{uuid.uuid4().hex[:8]}"
    env.s3.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    env.secret("s3-creds", {"AWS_ACCESS_KEY_ID": env.s3.access_key, "AWS_SECRET_ACCESS_KEY": env.s3.secret_key})
    lock = {"days": LOCK_SECONDS / 86400, "mode": "GOVERNANCE"}
    env.create("MOBackupStorage", "worm", {
        "s3": {"endpoint": env.s3.endpoint, "bucket": bucket, "prefix": env.ns, "region": env.s3.region,
               "pathStyle": True, "credentialsSecretRef": {"name": "s3-creds"}},
        "objectLock": lock, "checkIntervalSeconds": 10})
    env.wait_phase("MOBackupStorage", "worm", "Available", timeout=60)
    # The setting is fixed once set: the API server refuses a shorter (or any other) one.
    with pytest.raises(ApiError) as refused:
        env.api.merge_patch(env.path("MOBackupStorage", "worm"), {"spec": {"objectLock": {"days": 0.0001}}})
    assert refused.value.status == 422 and "objectLock is fixed" in str(refused.value)
    with pytest.raises(ApiError) as refused:
        env.api.merge_patch(env.path("MOBackupStorage", "worm"), {"spec": {"objectLock": None}})
    assert refused.value.status == 422 and "objectLock cannot be removed" in str(refused.value)

    env.create("MOBackup", "b1", {"source": {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet",
                                                                                       "name": "mo"}},
                                  "storageRef": {"name": "worm"}, "deletionPolicy": "Delete"})
    st = env.wait_phase("MOBackup", "b1", "Completed", "Failed")["status"]
    assert st["phase"] == "Completed", st
    until = parse_iso(st["lockedUntil"])
    assert until is not None and st["lockMode"] == "GOVERNANCE"
    assert timedelta(0) < until - now() <= timedelta(seconds=LOCK_SECONDS + 1)
    options = RepositoryOptions(
        url=f"s3://{bucket}/{env.ns}", s3_endpoint=env.s3.endpoint, s3_region=env.s3.region, s3_path_style=True,
        s3_access_key_id=env.s3.access_key, s3_secret_access_key=env.s3.secret_key)
    repo = open_repository(options)
    assert repo.config["object_lock"] == lock  # the Job created the repository with the storage's setting
    assert repo.load_summary(st["backupID"]).extra["locked_until"]

    env.api.delete(env.path("MOBackup", "b1"))
    held = env.wait("MOBackup", "b1", lambda o: (o.get("status") or {}).get("reason") == "ObjectLocked", 20,
                    "reason ObjectLocked")
    assert st["lockedUntil"] in held["status"]["message"], held["status"]
    assert "ObjectLocked" in env.event_reasons("b1", {"ObjectLocked"})
    assert now() < until, "the deletion was held before the date"
    repo.load_summary(st["backupID"])  # still there: nothing was attempted
    env.wait_gone("MOBackup", "b1", timeout=LOCK_SECONDS + 30)
    assert now() >= until
    with pytest.raises(BackupNotFound):
        open_repository(options).load_summary(st["backupID"])
    # The storage reports the lock its repository records.
    stg = env.wait("MOBackupStorage", "worm", lambda o: (o.get("status") or {}).get("objectLock") is not None,
                   20, "status.objectLock")["status"]
    assert stg["objectLock"] == lock and stg["phase"] == "Available"
