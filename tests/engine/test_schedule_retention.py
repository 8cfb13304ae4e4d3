"""The operator's schedule applies the engine's retention to its MOBackups: a base is not kept for
the backups that name it (their file lists are complete), only while a run in progress reads it.
A pass of `reconcile_schedule` against an in-memory stand-in for the Kubernetes API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mobackup.k8s import schedule
from mobackup.k8s.controller import Ctx

BACKUP = {"source": {"pvc": {"claimName": "mo-data"}, "workload": {"kind": "StatefulSet", "name": "mo"}},
          "storageRef": {"name": "s3"}}


class _Kube:
    """The calls a schedule pass makes."""

    def __init__(self, backups: list[dict[str, Any]]) -> None:
        self.backups = backups
        self.deleted: list[str] = []
        self.status: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []

    def list_cr(self, kind: str, ns: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return list(self.backups) if kind == "MOBackup" else []

    def create_cr(self, kind: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"no run is due, yet a {kind} was created")

    def delete_cr(self, kind: str, ns: str, name: str) -> None:
        self.deleted.append(name)

    def patch_status(self, kind: str, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.status.update(status)
        return {}

    def create_event(self, ns: str, body: dict[str, Any]) -> None:
        self.events.append(body)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _backup(index: int, base: int | None, when: datetime, phase: str = "Completed") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if phase == "Completed":
        status.update(backupID=f"id-{index}", completionTime=_iso(when))
    if base is not None:
        status["baseBackupID"] = f"id-{base}"
    return {"metadata": {"name": f"nightly-{index}", "namespace": "ns", "creationTimestamp": _iso(when),
                         "labels": {schedule.L_SCHEDULE: "nightly"}},
            "spec": {**BACKUP, "type": "Incremental" if base is not None else "Full"}, "status": status}


def _pass(backups: list[dict[str, Any]], keep_last: int, kube: _Kube | None = None) -> list[str]:
    now = datetime.now(UTC)
    sched = {"metadata": {"name": "nightly", "namespace": "ns", "uid": "u1", "generation": 1,
                          "creationTimestamp": _iso(now - timedelta(days=30))},
             "spec": {"fullSchedule": "0 0 1 1 *", "retention": {"keepLast": keep_last}, "template": {"spec": BACKUP}},
             # the last yearly run is handled: nothing is due in this pass
             "status": {"lastFullScheduleTime": _iso(now - timedelta(minutes=1))}}
    kube = kube or _Kube(backups)
    schedule.reconcile_schedule(Ctx(kube=kube), sched)  # type: ignore[arg-type]
    return sorted(kube.deleted)


def test_schedule_retention_deletes_the_bases_of_the_kept_backup() -> None:
    start = datetime.now(UTC) - timedelta(days=7)
    chain = [_backup(i, i - 1 if i else None, start + timedelta(hours=i)) for i in range(6)]
    assert _pass(chain, keep_last=1) == [f"nightly-{i}" for i in range(5)]
    assert _pass(chain, keep_last=2) == [f"nightly-{i}" for i in range(4)]


def test_schedule_retention_spares_the_base_of_a_run_in_progress() -> None:
    start = datetime.now(UTC) - timedelta(days=7)
    chain = [_backup(i, i - 1 if i else None, start + timedelta(hours=i)) for i in range(4)]
    running = _backup(9, 1, start + timedelta(hours=9), phase="Running")  # reads nightly-1's file list
    assert _pass([*chain, running], keep_last=1) == ["nightly-0", "nightly-2"]


def test_schedule_retention_keeps_what_object_lock_holds_and_says_until_when() -> None:
    """A storage with spec.objectLock: a MOBackup whose lock is ahead (status.lockedUntil) is not
    deleted (the bucket would refuse); the schedule's status and an Event name it and its date, and
    the first pass after the date deletes it."""
    start = datetime.now(UTC) - timedelta(days=2)
    chain = [_backup(i, None, start + timedelta(hours=i)) for i in range(3)]
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=5)
    chain[0]["status"]["lockedUntil"] = _iso(until)
    chain[1]["status"]["lockedUntil"] = _iso(datetime.now(UTC) - timedelta(seconds=1))  # passed
    kube = _Kube(chain)
    assert _pass(chain, keep_last=1, kube=kube) == ["nightly-1"]
    assert kube.status["retentionHeld"] == [{"name": "nightly-0", "lockedUntil": _iso(until)}]
    held = [e for e in kube.events if e["reason"] == "RetentionHeld"]
    assert len(held) == 1 and f"nightly-0 (until {_iso(until)})" in held[0]["message"]
    chain[0]["status"]["lockedUntil"] = _iso(datetime.now(UTC) - timedelta(seconds=1))
    assert _pass(chain, keep_last=1) == ["nightly-0", "nightly-1"]
