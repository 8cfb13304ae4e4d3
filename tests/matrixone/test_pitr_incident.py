"""Point-in-time recovery through the CLI on the real MatrixOne: the incident of issue 19 (a writer's
numbered transactions; at T an UPDATE, a DELETE and a dropped table; then churn with checkpoints and a
global checkpoint), a cold backup that records the PITR window, an online backup that takes the live
objects the history needs (engine/pitr_history.py), and `restore --to-time` T minus one second from
each: the writer's rows are an exact prefix holding every transaction committed before that instant
and none begun after it, the dropped table is back with its checksum, the accident is gone. The
refusals are checked on the same repository before the restore, each touching nothing. The same with
the table data in S3 (engine/pitr_history_s3.py): the history is objects of the cluster's prefix."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_drill import run
from test_online_s3 import MOBACKUP, _env, keys, mobackup, s3_matrixone
from test_online_s3 import backup as s3_backup

from mo_s3 import shared_prefix
from mo_server import (
    DEFAULT_VERSION,
    TXN_ROWS,
    Incident,
    MatrixOne,
    ServerLock,
    checksums,
    wait_ports_free,
    writer_rows,
)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def assert_back_at(server: Any, before: Any, incident: Any, restore_at: datetime) -> tuple[int, int, int]:
    """The restored server holds the state at `restore_at`: the accident and the churn undone, db2 back,
    the writer's rows an exact prefix of every transaction committed before that instant and none begun
    after it; and it takes writes. Returns (rows, max id, transactions)."""
    assert checksums(server, ["db1", "db2"]) == before
    count, max_id, txns = writer_rows(server)
    assert count == max_id + 1 == txns * TXN_ROWS, (count, max_id, txns)
    committed, begun_after = incident.committed_before(restore_at), incident.first_begun_after(restore_at)
    assert txns >= committed and (begun_after is None or txns <= begun_after), (txns, committed, begun_after)
    server.sql("insert into w.t values (-1, -1)")
    return count, max_id, txns

def test_restore_to_a_time_before_an_accident_through_the_cli(
        matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    repo, snap = tmp_path / "repo", tmp_path / "snap"
    mo = matrixone_factory(DEFAULT_VERSION, hostname="mo-src")
    mo.start()
    # Sessions in another zone than the server process's (UTC): SHOW PITR prints its times in the
    # session's zone, and the restored data keeps this setting; neither may shift the interval or T.
    mo.sql("set global time_zone = '+08:00'")
    # An online backup with --pitr-window creates the cluster PITR; without the history it records the
    # window but no interval.
    online = run("backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--data-dir", mo.data_dir,
                 "--repo", repo, "--source", "mo", "--pitr-window", "12h", "--without-pitr-history", "--json",
                 "--quiet")
    assert online.returncode == 0, online.stderr
    online_summary = json.loads(online.stdout)
    assert online_summary["extra"]["pitr"]["history"] is False
    assert online_summary["extra"]["pitr"]["ensured"] == "created mobackup_mo (12 h)"
    assert [w["name"] for w in online_summary["extra"]["pitr"]["windows"]] == ["mobackup_mo"]
    assert mo.sql("show pitr")[0][0] == "mobackup_mo"
    created = datetime.fromisoformat(online_summary["extra"]["pitr"]["windows"][0]["created"].replace("Z", "+00:00"))
    assert abs((created - datetime.now(UTC)).total_seconds()) < 120, created

    incident = Incident(mo)
    t, before, writer = incident.t, incident.before, incident.writer
    assert writer.errors == [] and len(writer.log) > 20
    # The cold copy: MatrixOne stopped and its directory copied (a volume snapshot), then backed up with
    # SQL reachable again so that the backup records the window (as the operator's Snapshot mode does).
    mo.stop()
    shutil.copytree(mo.data_dir, snap, symlinks=True)
    mo.start()
    cold = run("backup", "--data-dir", snap, "--sql-host", "127.0.0.1", "--sql-user", "root", "--repo", repo,
               "--source", "mo", "--type", "full", "--pitr-window", "1d", "--json", "--quiet")
    # A shorter window asked for later never shortens the PITR. This online backup takes the history.
    again = run("backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--data-dir", mo.data_dir,
                "--repo", repo, "--source", "mo-online", "--pitr-window", "2h", "--json", "--quiet")
    pitrs = mo.sql("show pitr")
    mo.stop()
    assert cold.returncode == 0, cold.stderr
    cold_summary = json.loads(cold.stdout)
    assert cold_summary["extra"]["pitr"]["history"] is True
    assert cold_summary["extra"]["pitr"]["ensured"] == "lengthened mobackup_mo (1 d)"
    assert again.returncode == 0, again.stderr
    online_pitr = json.loads(again.stdout)
    assert online_pitr["extra"]["pitr"]["ensured"] == "kept mobackup_mo (1 d)"
    added = online_pitr["extra"]["pitr"]["history_added"]
    assert online_pitr["extra"]["pitr"]["history"] is True and added["copied_files"] > 0, online_pitr["extra"]
    online_span = [datetime.fromisoformat(online_pitr[k].replace("Z", "+00:00"))
                   for k in ("recoverable_from", "recoverable_to")]
    assert online_span[0] < t - timedelta(seconds=1) < online_span[1], online_span
    assert [(p[0], p[7], p[8]) for p in pitrs] == [("mobackup_mo", 1, "d")]
    start, end = (datetime.fromisoformat(cold_summary[k].replace("Z", "+00:00"))
                  for k in ("recoverable_from", "recoverable_to"))
    assert start < t - timedelta(seconds=1) < end

    listed = json.loads(run("list", "--repo", repo, "--json").stdout)
    by_id = {s["id"]: s for s in listed}
    assert by_id[online_summary["id"]]["recoverable_from"] is None  # no history in BACKUP's output
    assert by_id[cold_summary["id"]]["recoverable_to"] == cold_summary["recoverable_to"]
    text = run("list", "--repo", repo).stdout
    assert f"{cold_summary['id']}: recoverable to any instant of" in text and online_summary["id"] + ":" not in text
    shown = json.loads(run("show", cold_summary["id"], "--repo", repo, "--json").stdout)
    assert shown["recoverable_from"] == cold_summary["recoverable_from"]

    mo_service = mo.home / "mo-service"
    target = tmp_path / "restored" / "mo-data"
    target.parent.mkdir()

    def refused(*args: str, expect: str) -> None:
        proc = run("restore", "--repo", repo, "--target", target, "--mo-service", mo_service, *args)
        assert proc.returncode == 1 and expect in proc.stderr, proc.stderr
        assert not target.exists(), "a refused restore touched the target"

    now = datetime.now(UTC)
    refused("--to-time", rfc3339(now + timedelta(hours=1)), expect="is in the future")
    refused("--to-time", rfc3339(now - timedelta(seconds=1)),
            expect=f"the newest recoverable point is {online_pitr['recoverable_to']}")
    refused("--to-time", rfc3339(start - timedelta(hours=1)), expect="earlier than every window")
    refused(online_summary["id"], "--to-time", rfc3339(t), expect="holds no PITR history")
    refused("--to-time", "2026-12-01 10:00:00", expect="has no zone")
    for proc in [run("restore", "--repo", repo, "--target", target, "--to-time", rfc3339(t))]:
        assert proc.returncode == 1 and "--mo-service" in proc.stderr, proc.stderr

    # A plain restore of the same backup, for the duration it is compared with.
    clock = time.monotonic()
    plain = run("restore", cold_summary["id"], "--repo", repo, "--target", tmp_path / "plain", "--quiet")
    plain_seconds = time.monotonic() - clock
    assert plain.returncode == 0, plain.stderr

    restore_at = t - timedelta(seconds=1)
    lock = ServerLock()  # the restore starts a MatrixOne on the fixed ports: hold the machine's lock
    lock.acquire()
    try:
        wait_ports_free()
        clock = time.monotonic()
        proc = run("restore", "--repo", repo, "--target", target, "--mo-service", mo_service, "--to-time",
                   rfc3339(restore_at), "--check-sql", "select count(*) from db2.t", "--expect", "3000", "--json",
                   "--quiet")
        pitr_seconds = time.monotonic() - clock
    finally:
        lock.release()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["backup_id"] == cold_summary["id"] and result["pitr"] == "mobackup_mo"
    assert result["hostname"] == "mo-src"
    print(f"\nplain restore {plain_seconds:.1f} s; restore to a time {pitr_seconds:.1f} s ({result})")
    assert not any(p.name.startswith(".mobackup-pitr-") for p in target.parent.iterdir()), "work directory left"

    restored = matrixone_factory(DEFAULT_VERSION, workdir=target.parent, hostname="mo-src")
    restored.start()
    count, max_id, txns = assert_back_at(restored, before, incident, restore_at)
    restored.stop()

    # The online backup with the history comes back to the same instant, exactly. It holds no log service
    # data, which MatrixOne then writes under the host name it runs under: the one --hostname names.
    online_target = tmp_path / "online-restored" / "mo-data"
    online_target.parent.mkdir()
    lock.acquire()
    try:
        wait_ports_free()
        clock = time.monotonic()
        proc = run("restore", online_pitr["id"], "--repo", repo, "--target", online_target, "--mo-service",
                   mo_service, "--to-time", rfc3339(restore_at), "--hostname", "mo-src", "--json", "--quiet")
        online_seconds = time.monotonic() - clock
    finally:
        lock.release()
    assert proc.returncode == 0, proc.stderr
    print(f"restore to a time from the online backup {online_seconds:.1f} s; history added: {added}")
    from_online = matrixone_factory(DEFAULT_VERSION, workdir=online_target.parent, hostname="mo-src")
    from_online.start()
    assert checksums(from_online, ["db1", "db2"]) == before
    assert writer_rows(from_online) == (count, max_id, txns)


@pytest.mark.s3
def test_restore_s3_resident_data_to_a_time_before_an_accident(
        matrixone_factory: Callable[..., MatrixOne], s3_server: Any, tmp_path: Path) -> None:
    """The same incident on a MatrixOne whose table data is in S3. Online backups with --shared-s3
    store, beside BACKUP's output, the objects of the cluster's prefix that BACKUP's list lacks and
    that are not newer than BACKUPTS (engine/pitr_history_s3.py); `restore --to-time --target-s3`
    puts them into a new prefix with BACKUP's, a MatrixOne started on it is brought to T - 1 s:
    the exact state. A backup without --shared-s3 holds no history and is refused."""
    s3, repo, prefix = s3_server, tmp_path / "repo", f"p-{uuid.uuid4().hex[:8]}"
    shared = f"s3://{s3.bucket}/{shared_prefix(prefix)}"
    mo = s3_matrixone(matrixone_factory, s3, prefix)
    mo.start()
    no_shared = mobackup(s3, "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--repo",
                         str(repo), "--staging", f"s3://{s3.bucket}/{prefix}/staging", "--pitr-window", "1d",
                         check=False)
    assert no_shared.returncode == 1 and "needs --shared-s3" in no_shared.stderr, no_shared.stderr
    first = s3_backup(s3, repo, prefix, "--shared-s3", shared, "--pitr-window", "12h")
    assert first["extra"]["pitr"]["ensured"] == "created mobackup_cluster (12 h)", first["extra"]["pitr"]
    incident = Incident(mo)
    t, before = incident.t, incident.before
    assert incident.writer.errors == [] and len(incident.writer.log) > 20
    online = s3_backup(s3, repo, prefix, "--shared-s3", shared)
    without = s3_backup(s3, repo, prefix)  # no --shared-s3: the windows, no history
    mo.stop()
    added = online["extra"]["pitr"]["history_added"]
    assert online["type"] == "incremental" and online["extra"]["pitr"]["history"] is True, online["extra"]["pitr"]
    assert added["copied_files"] > 0 and added["listed_objects"] > added["files"], added
    assert without["extra"]["pitr"]["history"] is False and without["recoverable_from"] is None
    restore_at = t - timedelta(seconds=1)
    span = [datetime.fromisoformat(online[k].replace("Z", "+00:00")) for k in ("recoverable_from", "recoverable_to")]
    assert span[0] < restore_at < span[1], span

    other_prefix = f"n-{uuid.uuid4().hex[:8]}"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = s3_matrixone(matrixone_factory, s3, other_prefix, workdir=other_dir)
    target = f"s3://{s3.bucket}/{shared_prefix(other_prefix)}"
    argv = ["restore", "--repo", str(repo), "--to-time", rfc3339(restore_at), "--target-s3", target,
            "--local-fs-dir", str(other.data_dir), "--sql-host", "127.0.0.1", "--sql-user", "root", "--json"]

    def refused(*args: str, expect: str) -> None:
        proc = mobackup(s3, *args, check=False)
        assert proc.returncode == 1 and expect in proc.stderr, proc.stderr
        assert keys(s3, shared_prefix(other_prefix)) == {}, "a refused restore touched the target"

    refused(*argv[:-1], without["id"], expect="holds no PITR history")
    refused("restore", "--repo", str(repo), "--to-time", rfc3339(restore_at), "--target", str(tmp_path / "dir"),
            "--mo-service", str(mo.home / "mo-service"), expect="are all of S3-resident table data")
    refused(*argv[:4], rfc3339(datetime.now(UTC) - timedelta(seconds=1)), *argv[5:],
            expect=f"the newest recoverable point is {online['recoverable_to']}")

    # The restore puts the objects back, then waits for the cluster, started on them, to answer.
    other.lock.acquire()  # ours from now on: the CLI must reach no other MatrixOne on port 6001
    wait_ports_free()
    clock = time.monotonic()
    proc = subprocess.Popen([str(MOBACKUP), *argv, "--quiet", "--timeout", "300"], env=_env(s3),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        cue = proc.stderr.readline()
        assert "waiting up to 300 s for MatrixOne" in cue, cue + proc.stderr.read()
        other.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["backup_id"] == online["id"] and result["pitr"] == "mobackup_cluster", result
    print(f"\nS3 restore to a time {time.monotonic() - clock:.1f} s (PITR {result['pitr_seconds']} s); history "
          f"added: {added}")
    assert_back_at(other, before, incident, restore_at)
    other.stop()
