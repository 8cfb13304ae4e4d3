"""spec.objectLock in the operator's logic (no cluster): the spec's checks, the flags its Jobs get,
the agent refusing a repository created with another setting, the status fields a backup's lock
date becomes, and the deletion of a locked MOBackup held (no Job) until the date. The real bucket
enforcing it: test_e2e_object_lock.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine.objectlock import ObjectLock, ObjectLockMismatch, require_setting, setting_mismatch
from mobackup.engine.repository import Repository, RepositoryOptions
from mobackup.k8s import controller, jobs, models, status
from mobackup.k8s.controller import Ctx

S3 = {"bucket": "b", "endpoint": "http://s3:8333"}


@pytest.mark.parametrize(("spec", "message"), [
    ({"pvc": {"claimName": "r"}, "objectLock": {"days": 7}}, "objectLock needs spec.s3"),
    ({"s3": S3, "objectLock": {"days": 0}}, "days must be a number"),
    ({"s3": S3, "objectLock": {"days": "7"}}, "days must be a number"),
    ({"s3": S3, "objectLock": {"days": 7, "mode": "governance"}}, "mode must be one of"),
])
def test_the_spec_refuses(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(models.SpecError, match=message):
        models.parse_storage(spec)


def test_jobs_ask_for_the_storage_lock_and_copies_for_the_target_lock() -> None:
    locked = models.parse_storage({"s3": S3, "objectLock": {"days": 0.5, "mode": "GOVERNANCE"}})
    assert locked.object_lock == models.ObjectLockSpec(0.5, "GOVERNANCE")
    assert jobs.lock_args(locked) == ["--lock-days", "0.5", "--lock-mode", "GOVERNANCE"]
    assert jobs.lock_args(locked, "--to-") == ["--to-lock-days", "0.5", "--to-lock-mode", "GOVERNANCE"]
    plain = models.parse_storage({"s3": S3})
    assert plain.object_lock is None and jobs.lock_args(plain) == []
    owner = jobs.Owner("MOBackup", "b1", "ns", "u1")
    copy = jobs.copy_job(owner, plain, locked, "worm", "id-1", models.JobOverrides(), jobs.OperatorDefaults())
    args = copy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--to-lock-days") + 1] == "0.5" and "--lock-days" not in args
    # A fraction survives the round trip exactly (the repository compares the number it recorded).
    assert float(jobs.lock_args(models.parse_storage({"s3": S3, "objectLock": {"days": 15 / 86400}}))[1]) \
        == 15 / 86400


def test_a_repository_keeps_the_setting_it_was_created_with(tmp_path: Path) -> None:
    repo = Repository.create(RepositoryOptions(url=str(tmp_path / "repo")))
    require_setting(repo, None)  # asking nothing: whatever the repository records applies
    with pytest.raises(ObjectLockMismatch, match="created with no Object Lock"):
        require_setting(repo, 7.0)
    recorded = ObjectLock("COMPLIANCE", 7.0)
    assert setting_mismatch("s3://b/p", recorded, ObjectLock("COMPLIANCE", 7.0)) is None
    for other in (ObjectLock("COMPLIANCE", 3.0), ObjectLock("COMPLIANCE", 30.0), ObjectLock("GOVERNANCE", 7.0)):
        assert "fixed when a repository is created" in (setting_mismatch("s3://b/p", recorded, other) or "")


def test_the_lock_date_a_backup_recorded_becomes_its_status() -> None:
    fields = status.backup_result_fields({"id": "x", "locked_until": "2030-01-02T03:04:05.2+00:00",
                                          "lock_mode": "COMPLIANCE"})
    assert (fields["lockedUntil"], fields["lockMode"]) == ("2030-01-02T03:04:06Z", "COMPLIANCE")  # rounded up
    from_repo = status.backup_result_fields({"id": "x", "extra": {"locked_until": "2030-01-02T03:04:05Z"}})
    assert from_repo["lockedUntil"] == "2030-01-02T03:04:05Z"
    for junk in ("soon", "2030-01-02T03:04:05", 7):  # not a date, no zone: left out
        assert "lockedUntil" not in status.backup_result_fields({"id": "x", "locked_until": junk})


class _Kube:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, kind: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(body)
        return {}

    def create_event(self, ns: str, body: dict[str, Any]) -> None:
        self.events.append(body)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a locked backup's deletion called kube.{name}")


def test_deleting_a_locked_mobackup_starts_no_job_and_says_when() -> None:
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    obj = {"kind": "MOBackup", "metadata": {"name": "b1", "namespace": "ns", "uid": "u1",
                                            "annotations": {controller.A_BACKUP_ID: "id-1"}},
           "spec": {"source": {"pvc": {"claimName": "d"}}, "storageRef": {"name": "s3"}, "deletionPolicy": "Delete"},
           "status": {"phase": "Completed", "backupID": "id-1", "lockedUntil": status.iso(until)}}
    kube = _Kube()
    done, message = controller.delete_backup_data(Ctx(kube=kube), obj)  # type: ignore[arg-type]
    assert not done and f"until {status.iso(until)}" in message
    assert kube.patches[-1]["reason"] == "ObjectLocked" and [e["reason"] for e in kube.events] == ["ObjectLocked"]
    controller.delete_backup_data(Ctx(kube=kube), {**obj, "status": {**obj["status"], **kube.patches[-1]}})
    assert len(kube.events) == 1  # said once, not at every retry
    assert status.locked_until(obj, until + timedelta(seconds=1)) is None  # then the delete Job runs
