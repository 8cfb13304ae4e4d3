"""Who may remove an online backup's staging: a later run removes what a gone run left, and never
what a live run (or one it cannot judge) still uses.

S3 staging (online_s3.remove_stale_staging, on the suite's S3 server): a lease's PID counts only
within this boot and PID namespace (host names are shared by containers); a lease that cannot be
read protects its prefix until it is older than any lease a writer sets. Directory staging
(online.remove_stale_staging): a free flock frees it; a missing lock file only with age; a lock
file that cannot be opened never."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine import online, online_s3
from mobackup.engine.errors import StorageUnreachableError
from mobackup.engine.online_s3 import STAGING_NAME, S3Place, remove_stale_staging, staging_prefix
from mobackup.engine.repository import process_identity
from mobackup.engine.s3 import S3Backend


def _dead_identity() -> dict[str, Any]:
    """The identity (process_identity()) of a process of this boot and namespace that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import json; from mobackup.engine.repository import process_identity; "
                               "print(json.dumps(process_identity()))"],
        capture_output=True, text=True, check=True)
    identity = json.loads(child.stdout)
    if identity["pid_ns"] is None or Path(f"/proc/{identity['pid']}").exists():
        pytest.skip("no /proc of this PID namespace, or the PID was reused at once")
    return identity


class _Clock:
    """Stands in for `time` in online_s3: the staging is judged `ahead` seconds from now."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def time(self) -> float:
        return time.time() + self.ahead


# ---- S3 staging ---------------------------------------------------------------------------------------

@pytest.fixture
def root(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> S3Place:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return S3Place.from_env(f"s3://{s3_server.bucket}/leases-{uuid.uuid4().hex[:8]}/staging", "MOBACKUP_STAGING_")


def _staging(root: S3Place, lease: dict[str, Any] | bytes | None) -> str:
    """A staging prefix holding one staged object, and its lease (None: none)."""
    name = f"{STAGING_NAME}{uuid.uuid4().hex[:16]}"
    backend = root.backend()
    if lease is not None:
        backend.write(f"{name}.lease", lease if isinstance(lease, bytes) else json.dumps(lease).encode())
    backend.write(f"{name}/tae/object", b"staged")
    return name


def _left(root: S3Place) -> set[str]:
    return {info.key for info in root.backend().list("")}


def _kept(root: S3Place, name: str) -> bool:
    return {f"{name}.lease", f"{name}/tae/object"} <= _left(root)


@pytest.mark.s3
@pytest.mark.parametrize("changes", [
    {"pid_ns": "other"},  # another container with this host name (a drill, a hostNetwork pod)
    {"boot_id": "another-boot"},  # another machine, or before a reboot
    {"boot_id": None, "pid_ns": None, "pid_start": None},  # the holder could not know them
    {"boot_id": "drop", "pid_ns": "drop", "pid_start": "drop"},  # a lease as written before these fields
], ids=["other-pid-namespace", "other-boot", "unknown-namespace", "old-format"])
def test_a_lease_of_this_host_name_is_not_judged_by_a_pid_of_another_namespace(
        root: S3Place, changes: dict[str, Any]) -> None:
    dead = _dead_identity()
    lease: dict[str, Any] = {"host": socket.gethostname(), **dead, "expires": time.time() + 300}
    for key, value in changes.items():
        if value == "drop":
            del lease[key]
        else:
            lease[key] = dead["pid_ns"] + 1 if value == "other" else value
    name = _staging(root, lease)
    assert remove_stale_staging(root) == []
    assert _kept(root, name)


@pytest.mark.s3
def test_a_dead_holder_of_this_namespace_frees_its_staging_at_once(root: S3Place) -> None:
    name = _staging(root, {"host": socket.gethostname(), **_dead_identity(), "expires": time.time() + 300})
    assert remove_stale_staging(root) == [name]
    assert _left(root) == set()


@pytest.mark.s3
def test_expired_and_missing_leases_free_their_staging(root: S3Place) -> None:
    expired = _staging(root, {"host": "gone", "pid": 1, "expires": time.time() - 60})
    missing = _staging(root, None)
    live = _staging(root, {"host": "elsewhere", "pid": 1, "expires": time.time() + 300})
    assert remove_stale_staging(root) == sorted([expired, missing])
    assert _left(root) == {f"{live}.lease", f"{live}/tae/object"}


@pytest.mark.s3
@pytest.mark.parametrize("content", [
    b"{not json", b"[1, 2]", b"null", b"\xff\xfe", b"[" * 100000,
    json.dumps({"host": "h", "pid": 5}).encode(),  # no expiry
    json.dumps({"host": "h", "expires": "tomorrow"}).encode(),
    json.dumps({"host": "h", "expires": 1e300}).encode(),  # a date no writer sets: a wrong clock, a forgery
], ids=["json", "list", "null", "bytes", "deep", "no-expiry", "text-expiry", "far-future"])
def test_a_lease_that_says_nothing_protects_until_older_than_any_lease(
        root: S3Place, monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    name = _staging(root, content)
    assert remove_stale_staging(root) == []  # a live writer's lease, damaged or foreign: not proof of death
    assert _kept(root, name)
    monkeypatch.setattr(online_s3, "time", _Clock(online_s3.STAGED_RUN_LEASE_SECONDS + 60))
    assert remove_stale_staging(root) == [name]
    assert _left(root) == set()


@pytest.mark.s3
def test_a_lease_that_cannot_be_read_now_leaves_its_staging(root: S3Place, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _staging(root, {"host": "gone", "pid": 1, "expires": time.time() + 300})
    real_read = S3Backend.read

    def flaky_read(self: S3Backend, key: str) -> bytes:
        if key.endswith(".lease"):
            raise StorageUnreachableError(f"{self.location}: connection reset")
        return real_read(self, key)

    monkeypatch.setattr(S3Backend, "read", flaky_read)
    assert remove_stale_staging(root) == []
    assert _kept(root, name)


@pytest.mark.s3
def test_a_runs_lease_names_its_process_and_holds_off_other_runs(root: S3Place) -> None:
    own = process_identity()
    with staging_prefix(root) as staging:
        name = staging.prefix.rsplit("/", 1)[-1]
        staging.backend().write("tae/object", b"staged")
        lease = json.loads(root.backend().read(f"{name}.lease"))
        assert {k: lease[k] for k in own} == own and lease["expires"] > time.time()
        assert remove_stale_staging(root) == [] and _kept(root, name)  # this process is alive
    assert _left(root) == set()


# ---- directory staging --------------------------------------------------------------------------------

def _directory(data_dir: Path, lock: bool) -> Path:
    staging = data_dir / f"{online.STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    (staging / "tae").mkdir(parents=True)
    (staging / "tae" / "object").write_bytes(b"staged")
    if lock:
        (data_dir / f"{staging.name}.lock").touch()  # its owner is gone: nobody holds the flock
    return staging


def _age(staging: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in [*staging.rglob("*"), staging]:
        os.utime(path, (then, then), follow_symlinks=False)


def test_a_staging_directory_without_its_lock_file_goes_only_when_old(tmp_path: Path) -> None:
    staging = _directory(tmp_path, lock=False)
    assert online.remove_stale_staging(tmp_path) == []  # no lock file is no proof that its run is gone
    assert (staging / "tae" / "object").exists()
    _age(staging, online.ORPHAN_STAGING_SECONDS - 600)
    (staging / "tae" / "another").write_bytes(b"staged")  # still being written (tae/ changed)
    assert online.remove_stale_staging(tmp_path) == [] and staging.exists()
    _age(staging, online.ORPHAN_STAGING_SECONDS + 60)
    assert online.remove_stale_staging(tmp_path) == [staging.name]
    assert list(tmp_path.iterdir()) == []


def test_a_live_runs_directory_stays_and_a_free_lock_frees_a_leftover(tmp_path: Path) -> None:
    leftover = _directory(tmp_path, lock=True)
    with online.staging_area(tmp_path) as staging:
        assert not leftover.exists() and not (tmp_path / f"{leftover.name}.lock").exists()
        (staging / "tae").mkdir(parents=True)  # as MatrixOne's BACKUP does
        _age(staging, online.ORPHAN_STAGING_SECONDS + 60)
        assert online.remove_stale_staging(tmp_path) == [] and staging.exists()  # its flock is held
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_that_cannot_be_opened_leaves_its_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's lock file (mode 0600): the tests run as root, so the refusal is made here."""
    staging = _directory(tmp_path, lock=True)
    _age(staging, online.ORPHAN_STAGING_SECONDS + 60)
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    assert online.remove_stale_staging(tmp_path) == []
    assert (staging / "tae" / "object").exists()


def test_a_directory_that_cannot_be_removed_keeps_its_lock_file_for_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files MatrixOne wrote that the agent may not remove: neither the run nor a later clean-up may
    leave the directory without its (free) lock file, or the next run would have to wait an hour."""
    monkeypatch.setattr(online, "remove_tree", lambda *args, **kwargs: None)
    with online.staging_area(tmp_path) as staging:
        (staging / "tae").mkdir(parents=True)
    lock = tmp_path / f"{staging.name}.lock"
    assert staging.exists() and lock.exists()
    assert online.remove_stale_staging(tmp_path) == [] and lock.exists()
    monkeypatch.undo()
    assert online.remove_stale_staging(tmp_path) == [staging.name]  # at once: its lock is free
    assert list(tmp_path.iterdir()) == []
