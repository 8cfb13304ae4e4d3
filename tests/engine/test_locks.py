"""Lock liveness: a holder is judged by its PID only within its own boot and PID namespace; every
other lock (another container with the same host name, an old record, a malformed one, one dated in
the future) is judged by its signs of life, and prune never breaks a live one nor crashes on one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine import repository as repository_module
from mobackup.engine.backup import run_backup
from mobackup.engine.errors import LockedError
from mobackup.engine.model import iso, utc_now
from mobackup.engine.prune import RetentionPolicy, delete_backup, prune
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository, process_identity
from mobackup.engine.verify import verify_backup

LOCK = "locks/0123456789abcdef0123456789abcdef.json"


class _FastClock:
    """Stands in for `time` in repository.py: a lock wait of 60 s passes at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def fast_lock_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repository_module, "time", _FastClock())


@pytest.fixture
def dead_pid() -> Iterator[int]:
    """A PID with no process behind it (here)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    pid = int(child.stdout)
    if Path(f"/proc/{pid}").exists():  # reused already: extremely unlikely
        pytest.skip("the PID was reused at once")
    yield pid


def _record(pid: int, **changes: Any) -> dict[str, Any]:
    """A backup's shared lock as a process of this host name writes it, refreshed just now."""
    own = process_identity()
    record = {"exclusive": False, "purpose": "backup of db", "host": socket.gethostname(), "pid": pid,
              "pid_start": "12345", "boot_id": own["boot_id"], "pid_ns": own["pid_ns"],
              "created_at": iso(utc_now()), "refreshed_at": iso(utc_now())}
    record.update(changes)
    return record


def _write_lock(repo: Repository, content: dict[str, Any] | bytes, age: float = 0.0) -> None:
    repo.backend.write(LOCK, content if isinstance(content, bytes) else json.dumps(content).encode())
    if age:  # the storage's time of the last write: old, as a holder that stopped refreshing leaves it
        path = Path(repo.location) / LOCK
        os.utime(path, (time.time() - age, time.time() - age))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A directory repository: lock objects are aged by setting their files' mtime."""
    if process_identity()["pid_ns"] is None:
        pytest.skip("no /proc of this PID namespace")
    return open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)


def test_a_lock_of_another_pid_namespace_with_this_host_name_is_not_broken(
        repo: Repository, mo_data: Path, dead_pid: int, fast_lock_wait: None) -> None:
    """The review's case: a drill (or a hostNetwork pod) runs with the backup's host name in another
    PID namespace; the backup's PID means nothing here, so its fresh lock must hold off prune."""
    kept = run_backup(repo, mo_data, source="db")
    _write_lock(repo, _record(dead_pid, pid_ns=process_identity()["pid_ns"] + 1))
    with pytest.raises(LockedError, match="locked by backup of db"):
        prune(repo, RetentionPolicy(keep_last=1))
    with pytest.raises(LockedError, match="locked by backup of db"):
        delete_backup(repo, kept.id)
    assert repo.backend.exists(LOCK)
    assert [s.id for s in repo.list_backups()] == [kept.id] and verify_backup(repo, kept.id).ok


@pytest.mark.parametrize("changes", [
    {"boot_id": "another-boot"},
    {"boot_id": None, "pid_ns": None},  # the holder could not know them
    {"pid_start": None},
])
def test_a_lock_that_cannot_be_judged_by_pid_waits_for_its_refresh_time(
        repo: Repository, dead_pid: int, fast_lock_wait: None, changes: dict[str, Any]) -> None:
    _write_lock(repo, _record(dead_pid, **changes))
    with pytest.raises(LockedError):
        prune(repo, RetentionPolicy())
    assert repo.backend.exists(LOCK)


def test_an_old_record_without_namespace_fields_is_judged_by_refresh_time(
        repo: Repository, dead_pid: int, fast_lock_wait: None) -> None:
    record = _record(dead_pid)
    del record["boot_id"], record["pid_ns"]
    _write_lock(repo, record)
    with pytest.raises(LockedError):
        prune(repo, RetentionPolicy())
    stale = iso(datetime.fromtimestamp(time.time() - 400, UTC))
    _write_lock(repo, {**record, "refreshed_at": stale}, age=400)
    prune(repo, RetentionPolicy())
    assert not repo.backend.exists(LOCK)


def test_a_dead_holder_of_this_namespace_is_broken_at_once(repo: Repository, mo_data: Path, dead_pid: int) -> None:
    run_backup(repo, mo_data, source="db")
    _write_lock(repo, _record(dead_pid))  # refreshed just now: only its PID says it is dead
    prune(repo, RetentionPolicy())
    assert not repo.backend.exists(LOCK)


def test_a_live_holder_is_not_broken_while_either_of_its_times_is_fresh(repo: Repository,
                                                                        fast_lock_wait: None) -> None:
    own = process_identity()  # this very process holds it: alive
    _write_lock(repo, _record(os.getpid(), pid_start=own["pid_start"]), age=3600)
    with pytest.raises(LockedError):  # refreshed_at is fresh, the object's mtime old
        prune(repo, RetentionPolicy())
    stale = iso(datetime.fromtimestamp(time.time() - 3600, UTC))
    _write_lock(repo, _record(os.getpid(), pid_start=own["pid_start"], refreshed_at=stale))
    with pytest.raises(LockedError):  # refreshed_at is old (a clock that lags), the mtime fresh
        prune(repo, RetentionPolicy())


def test_a_lock_dated_in_the_future_does_not_block_prune_for_good(
        repo: Repository, dead_pid: int, fast_lock_wait: None) -> None:
    future = _record(dead_pid, host="elsewhere", boot_id="another-boot", refreshed_at="2099-01-01T00:00:00Z")
    _write_lock(repo, future)  # written just now: its holder may still be refreshing it
    with pytest.raises(LockedError, match="locked by backup of db on elsewhere"):
        prune(repo, RetentionPolicy())
    _write_lock(repo, future, age=400)  # the storage saw no write for longer than the stale time
    prune(repo, RetentionPolicy())
    assert not repo.backend.exists(LOCK)


def test_a_lock_whose_times_are_all_in_the_future_is_judged_by_how_long_it_was_seen() -> None:
    record = _record(1, boot_id="another-boot", refreshed_at="2099-01-01T00:00:00Z")
    later = time.time() + 10 * 365 * 86400
    assert not Repository.lock_is_stale(record, later, first_seen=time.time())
    assert Repository.lock_is_stale(record, later, first_seen=time.time() - 400)


@pytest.mark.parametrize("content", [
    b"{not json", b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100000,
    json.dumps({"exclusive": "no", "pid": "abc", "pid_start": 5, "boot_id": 7, "pid_ns": "x",
                "refreshed_at": 12, "created_at": None, "host": ["h"]}).encode(),
    json.dumps({"pid": 10 ** 30, "refreshed_at": "not a time"}).encode(),
    # this boot and namespace, impossible PIDs
    json.dumps({**_record(10 ** 30), "exclusive": True, "refreshed_at": "9" * 40}).encode(),
    json.dumps({**_record(-5), "exclusive": True, "refreshed_at": "-999999999-01-01"}).encode(),
], ids=["not-json", "a-list", "null", "not-utf8", "deep-nesting", "wrong-types", "huge-pid", "this-boot-huge-pid",
        "this-boot-negative-pid"])  # stable ids: the last two hold this run's time, and the lanes must agree
def test_a_malformed_lock_is_foreign_and_live_until_stale(repo: Repository, mo_data: Path,
                                                          fast_lock_wait: None, content: bytes) -> None:
    run_backup(repo, mo_data, source="db")
    _write_lock(repo, content)
    with pytest.raises(LockedError, match="is locked by"):
        prune(repo, RetentionPolicy())
    with pytest.raises(LockedError, match="is locked by"):  # it may be exclusive: backups wait too
        run_backup(repo, mo_data, source="db")
    _write_lock(repo, content, age=400)
    prune(repo, RetentionPolicy())
    assert not repo.backend.exists(LOCK)
