"""Point-in-time recovery's decisions that need no server (engine/pitr.py, engine/pitr_restore.py):
the recorded windows checked as untrusted input, the recoverable interval, the range MatrixOne is
asked for, and every refusal of `restore --to-time` with the intervals it names (the same refusals
through the CLI against the real MatrixOne: tests/matrixone/test_pitr_incident.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine.errors import MobackupError
from mobackup.engine.model import BackupSummary, iso
from mobackup.engine.pitr import PitrWindow, hlc_time, interval, range_clause
from mobackup.engine.pitr_restore import choose_backup, parse_time

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def hlc(t: datetime) -> str:
    return f"{int(t.timestamp()) * 10**9 + t.microsecond * 1000}-1"


def window(created: datetime, value: int = 1, unit: str = "d", name: str = "pc") -> dict[str, Any]:
    return {"name": name, "created": iso(created), "modified": iso(created), "value": value, "unit": unit}


def summary(backup_id: str, backup_ts: datetime, pitr: dict[str, Any] | None = None,
            kind: str = "cold") -> BackupSummary:
    extra: dict[str, Any] = {"kind": kind}
    if pitr is not None:
        extra["pitr"] = pitr
    return BackupSummary(
        id=backup_id, type="full", base_id=None, source="mo", backup_ts=hlc(backup_ts), backup_ts_source="checkpoint",
        started_at=iso(backup_ts), completed_at=iso(backup_ts), duration_seconds=1.0, size_bytes=1, new_bytes=1,
        stored_bytes=1, file_count=1, read_file_count=1, chunk_count=1, new_blob_count=1, data_dir="/d", host="h",
        layout="disk", location="/d", files_digest="x", files_frames=1, entry_count=1, extra=extra)


def cold(backup_id: str, at: datetime, *windows: dict[str, Any]) -> BackupSummary:
    return summary(backup_id, at, {"history": True, "windows": list(windows)})


def test_hlc_and_interval() -> None:
    at = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert hlc_time(hlc(at)) == at
    # created 2 h before the backup, range 1 d: from creation (plus the second MatrixOne truncates)
    created = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)  # MatrixOne records whole seconds
    young = cold("a", at, window(created))
    assert interval(young) == (created + timedelta(seconds=1), at)
    # created 3 days before, range 1 d: BACKUPTS - 1 d
    old = cold("b", at, window(at - timedelta(days=3)))
    assert interval(old) == (at - timedelta(days=1), at)
    # a month is counted as its shortest (28 days), a year as 365
    assert interval(cold("c", at, window(at - timedelta(days=400), 1, "mo")))[0] == at - timedelta(days=28)
    # no history (online), no windows recorded, a server that would not list them: no interval
    assert interval(summary("d", at, {"history": False, "windows": [window(at - timedelta(days=3))]}, "online")) is None
    assert interval(summary("e", at)) is None
    assert interval(summary("f", at, {"history": True, "windows": [], "error": "SHOW PITR failed"})) is None


@pytest.mark.parametrize("bad", [
    {"name": "pc; drop", "value": 1, "unit": "d"}, {"name": "pc", "value": 101, "unit": "d"},
    {"name": "pc", "value": True, "unit": "d"}, {"name": "pc", "value": 1, "unit": "w"},
    {"name": "pc", "value": 1, "unit": "d", "created": "yesterday"}, "pc",
])
def test_a_malformed_recorded_window_is_refused_not_trusted(bad: Any) -> None:
    if isinstance(bad, dict):
        bad = {"created": iso(NOW), "modified": iso(NOW), **bad}
    with pytest.raises(ValueError):
        PitrWindow.from_dict(bad)
    # and a backup recording it has no interval (never a crash of list or show)
    assert interval(cold("a", NOW, bad)) is None


def test_range_clause_is_never_shorter_than_asked() -> None:
    assert range_clause(86400) == (1, "d")
    assert range_clause(7 * 86400) == (7, "d")
    assert range_clause(3600 * 12) == (12, "h")
    assert range_clause(3600 * 12 + 1) == (13, "h")
    assert range_clause(101 * 3600) == (5, "d")
    assert range_clause(150 * 86400) == (6, "mo")
    for seconds in (1, 5000, 99 * 3600, 100 * 86400 + 1, 3 * 365 * 86400):
        value, unit = range_clause(seconds)
        assert 1 <= value <= 100
        assert value * {"h": 3600, "d": 86400, "mo": 28 * 86400, "y": 365 * 86400}[unit] >= seconds


def test_the_backup_whose_interval_holds_t_is_chosen() -> None:
    created = NOW - timedelta(days=10)
    first, second = cold("first", NOW - timedelta(hours=5), window(created)), cold("second", NOW - timedelta(hours=1),
                                                                                   window(created))
    online = summary("online", NOW - timedelta(minutes=10), {"history": False, "windows": [window(created)]}, "online")
    backups = [second, online, first]
    assert choose_backup(backups, NOW - timedelta(hours=6), NOW)[0].id == "first"  # the earliest that covers
    assert choose_backup(backups, NOW - timedelta(hours=2), NOW)[0].id == "second"
    assert choose_backup(backups, NOW - timedelta(hours=6), NOW, "second")[0].id == "second"


def refusal(backups: list[BackupSummary], t: datetime, backup_id: str | None = None) -> str:
    with pytest.raises(MobackupError) as caught:
        choose_backup(backups, t, NOW, backup_id)
    return str(caught.value)


def test_each_refusal_names_the_covered_intervals() -> None:
    created = NOW - timedelta(days=10)
    b1, b2 = cold("b1", NOW - timedelta(days=3), window(created)), cold("b2", NOW - timedelta(hours=1), window(created))
    online = summary("on", NOW - timedelta(minutes=5), {"history": False, "windows": [window(created)]}, "online")
    nopitr = cold("nopitr", NOW - timedelta(minutes=30))
    nopitr.extra["pitr"]["windows"] = []
    noshow = summary("noshow", NOW - timedelta(minutes=20),
                     {"history": True, "windows": [], "error": "SHOW PITR failed"})
    backups = [b1, b2, online, nopitr, noshow]
    covered = (f"b1 [{iso(NOW - timedelta(days=4))}, {iso(NOW - timedelta(days=3))}]; "
               f"b2 [{iso(NOW - timedelta(days=1, hours=1))}, {iso(NOW - timedelta(hours=1))}]")
    message = refusal(backups, NOW + timedelta(seconds=5))
    assert "is in the future" in message and covered in message
    message = refusal(backups, NOW - timedelta(minutes=10))
    assert f"the newest recoverable point is {iso(NOW - timedelta(hours=1))} (backup b2)" in message
    assert covered in message
    message = refusal(backups, NOW - timedelta(days=5))
    assert "earlier than every window" in message and covered in message
    message = refusal(backups, NOW - timedelta(days=2))  # between b1's and b2's intervals
    assert "in no backup's interval" in message and covered in message
    message = refusal(backups, NOW - timedelta(minutes=10), "on")
    assert "holds no PITR history" in message and covered in message
    message = refusal(backups, NOW - timedelta(hours=2), "nopitr")
    assert "had no cluster PITR at backup time" in message
    message = refusal(backups, NOW - timedelta(hours=2), "noshow")
    assert "without PITR" in message and "SHOW PITR failed" in message
    message = refusal(backups, NOW - timedelta(days=5), "b1")
    assert "is outside backup b1" in message and covered in message
    assert "no backup can be restored" in refusal([online], NOW - timedelta(minutes=10))
    with pytest.raises(MobackupError, match="no zone"):
        choose_backup(backups, datetime(2026, 12, 1, 11, 0), NOW)


def test_a_cold_backup_made_without_sql_is_left_to_its_restored_server() -> None:
    plain = summary("plain", NOW - timedelta(hours=1))  # recorded no windows: the restored server decides
    assert choose_backup([plain], NOW - timedelta(hours=2), NOW, "plain")[0].id == "plain"
    assert "later than backup plain's BACKUPTS" in refusal([plain], NOW - timedelta(minutes=5), "plain")
    assert "no PITR windows recorded" in refusal([plain], NOW - timedelta(hours=2))


def test_parse_time_wants_rfc3339_with_a_zone() -> None:
    assert parse_time("2026-12-01T10:00:00Z") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_time("2026-12-01T12:00:00.5+02:00") == datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC)
    for bad in ("2026-12-01T10:00:00", "yesterday", "2026-13-01T10:00:00Z"):
        with pytest.raises(MobackupError):
            parse_time(bad)


def test_cli_refusals_touch_nothing(tmp_path: Path) -> None:
    """Through the CLI on a repository holding an online backup's summary only (written as the engine
    writes it): each refusal exits 1 with its reason and the target is never created."""
    from mobackup.engine.repository import RepositoryOptions, open_repository

    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))}
    target = tmp_path / "target"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MOBACKUP, "restore", "--repo", str(tmp_path / "repo"), *args], capture_output=True,
                              text=True, env=env, timeout=60)

    assert repo.list_backups() == []
    cases = [
        (["--to-time", "2026-12-01T10:00:00Z", "--target", str(target), "--mo-service", "/bin/true"],
         "no backup can be restored"),
        (["--to-time", "2099-12-01T10:00:00Z", "--target", str(target), "--mo-service", "/bin/true"],
         "is in the future"),
        (["--to-time", "2026-12-01T10:00:00", "--target", str(target), "--mo-service", "/bin/true"], "no zone"),
        (["--to-time", "2026-12-01T10:00:00Z", "--target", str(target)], "--mo-service"),
        (["--to-time", "2026-12-01T10:00:00Z", "--target-s3", "s3://b/p", "--target", str(target), "--mo-service",
          "/bin/true"], "needs --sql-host"),
        (["--to-time", "2026-12-01T10:00:00Z", "--target-s3", "s3://b/p", "--target", str(target), "--sql-host",
          "127.0.0.1"], "--target, --force, --hostname, --mo-service, --shard and --finalize do not apply"),
        (["--to-time", "2026-12-01T10:00:00Z", "--target", str(target), "--mo-service", "/bin/true", "--sql-host",
          "127.0.0.1"], "--sql-host goes with --to-time --target-s3"),
        (["--to-time", "2026-12-01T10:00:00Z", "--target-s3", "s3://b/p", "--sql-host", "127.0.0.1"],
         "no backup can be restored"),
        (["--target", str(target), "--mo-service", "/bin/true"], "go with --to-time"),
        (["--target", str(target)], "needs a backup ID"),
    ]
    for args, expect in cases:
        proc = run(*args)
        assert proc.returncode == 1 and expect in proc.stderr, (args, proc.stderr)
        assert not target.exists()
    listed = subprocess.run([MOBACKUP, "list", "--repo", str(tmp_path / "repo"), "--json"], capture_output=True,
                            text=True, env=env, check=True)
    assert json.loads(listed.stdout) == []


def test_online_history_copies_what_backup_left_out_takes_unchanged_files_from_the_base(tmp_path: Path) -> None:
    """engine/pitr_history.add_history on a live `shared/` laid out by hand: files in BACKUP's list are
    not taken again, older files are copied with their mtime, the base's unchanged files are taken
    from it, files written after BACKUP returned are left out, and a symbolic link is not followed."""
    import time

    from mobackup.engine.index import FileIndex
    from mobackup.engine.pitr_history import add_history
    from mobackup.engine.safefs import DirectoryFds, open_dir_at

    live = tmp_path / "mo-data" / "shared"
    (live / "ckp").mkdir(parents=True)
    old_ns = time.time_ns() - 10**10
    for rel, data in {"staged": b"s", "old-object": b"o" * 1000, "ckp/meta_1": b"m", "in-base": b"b" * 7}.items():
        (live / rel).write_bytes(data)
        os.utime(live / rel, ns=(old_ns, old_ns))
    secret = tmp_path / "secret"
    secret.write_bytes(b"not MatrixOne's")
    os.utime(secret, ns=(old_ns, old_ns))
    (live / "planted").symlink_to(secret)
    cutoff = time.time_ns()
    (live / "newer").write_bytes(b"n")  # written after BACKUP returned
    os.utime(live / "newer", ns=(cutoff + 10**9, cutoff + 10**9))
    tree = tmp_path / "tree" / "shared"
    tree.mkdir(parents=True)
    base = FileIndex(tmp_path / "base.sqlite")
    base.load([{"path": "shared/in-base", "type": "file", "size": 7, "mtime_ns": old_ns, "chunks": []}])
    with DirectoryFds(open_dir_at(None, str(tree), str(tree)), str(tree)) as tree_fds:
        history = add_history(tmp_path / "mo-data", tree_fds, ["staged"], cutoff, base)
    base.close()
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()) == ["ckp/meta_1", "old-object"]
    assert (tree / "old-object").read_bytes() == b"o" * 1000 and (tree / "old-object").stat().st_mtime_ns == old_ns
    assert history.inherited == frozenset({"shared/in-base"})
    record = history.record()
    assert (record["copied_files"], record["from_base_files"], record["bytes"]) == (2, 1, 1008)
    assert not (tree / "planted").exists() and not (tree / "newer").exists()


def test_an_online_backup_with_history_has_an_interval_counted_back_from_when_it_was_taken() -> None:
    """The cleaner may let go of the window's oldest history between BACKUPTS and the copy of it."""
    created, ts = NOW - timedelta(days=3), NOW - timedelta(hours=1)
    rec = {"history": True, "windows": [window(created, 1, "d")],
           "history_added": {"taken_at": iso(ts + timedelta(minutes=5))}}
    start, end = interval(summary("b1", ts, rec, kind="online"))  # type: ignore[misc]
    assert end == hlc_time(hlc(ts)) and start == ts + timedelta(minutes=5) - timedelta(days=1)
    assert interval(summary("b2", ts, {**rec, "history": False}, kind="online")) is None


def test_an_online_incremental_with_history_loads_its_base_once_and_takes_unchanged_history_from_it(
        tmp_path: Path, monkeypatch: Any) -> None:
    """engine/online.py with the history on (the fake BACKUP of fake_matrixone.py): the base's file list
    is loaded into one index, used by the history and by the backup run; a history file the base
    holds unchanged is taken from it, and the incremental restores with it."""
    import time

    from fake_matrixone import FakeMatrixOne

    from mobackup.engine.index import FileIndex
    from mobackup.engine.online import run_online_backup
    from mobackup.engine.repository import RepositoryOptions, open_repository
    from mobackup.engine.restore import run_restore

    data = tmp_path / "mo-data"
    (data / "shared").mkdir(parents=True)
    old_ns = time.time_ns() - 10**10
    (data / "shared" / "old-object").write_bytes(b"o" * 5000)  # in no BACKUP list: history
    os.utime(data / "shared" / "old-object", ns=(old_ns, old_ns))
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)
    objects = {"object-1": b"1" * 3000, "ckp/meta_1-0_2-0.ckp": b"c" * 100}
    full = run_online_backup(repo, data, FakeMatrixOne(objects), source="mo", pitr_history=True)
    assert full.extra["pitr"]["history_added"]["copied_files"] == 1
    loads: list[int] = []
    original = FileIndex.load
    monkeypatch.setattr(FileIndex, "load", lambda self, entries: loads.append(1) or original(self, entries))
    more = {**objects, "object-2": b"2" * 4000}
    incremental = run_online_backup(repo, data, FakeMatrixOne(more, reused=frozenset(objects)), source="mo",
                                    backup_type="incremental", pitr_history=True)
    assert len(loads) == 1, "the base's file list was loaded more than once"
    added = incremental.extra["pitr"]["history_added"]
    assert (added["copied_files"], added["from_base_files"]) == (0, 1), added
    restored = tmp_path / "restored"
    run_restore(repo, incremental.id, restored)
    assert (restored / "shared" / "old-object").read_bytes() == b"o" * 5000
    assert sorted(p.name for p in (restored / "shared").rglob("*") if p.is_file()) == [
        "meta_1-0_2-0.ckp", "object-1", "object-2", "old-object"]


def test_a_restore_to_a_time_uses_backups_of_its_own_placement() -> None:
    """A data directory's backups for --target, S3-resident ones for --target-s3 (objects framed
    otherwise): the others are not candidates, a named one of the other kind is refused, naming the
    flag it needs."""
    from mobackup.engine.pitr_restore import of_placement

    local = cold("local", NOW - timedelta(hours=1), window(NOW - timedelta(days=1), 1, "d"))
    remote = summary("remote", NOW - timedelta(hours=1), {"history": True, "windows": []}, kind="online")
    remote.extra["resident"] = "s3"
    assert of_placement([local, remote], None, s3=False) == [local]
    assert of_placement([local, remote], None, s3=True) == [remote]
    with pytest.raises(MobackupError, match="restore it to a time with --target-s3"):
        of_placement([local, remote], "remote", s3=False)
    with pytest.raises(MobackupError, match="restore it to a time with --target DIR"):
        of_placement([local, remote], "local", s3=True)
    with pytest.raises(MobackupError, match="are all of data directories"):
        of_placement([local], None, s3=True)
    assert of_placement([], None, s3=True) == []
