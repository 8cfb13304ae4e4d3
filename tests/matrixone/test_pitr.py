"""Point-in-time recovery through the CLI on the real MatrixOne: the incident of issue 19 (a writer's
numbered transactions; at T an UPDATE, a DELETE and a dropped table; then churn with checkpoints and a
global checkpoint), a cold backup that records the PITR window, and `restore --to-time` T minus one
second: the writer's rows are an exact prefix holding every transaction committed before that instant
and none begun after it, the dropped table is back with its checksum, the accident is gone. The
refusals are checked on the same repository before the restore, each touching nothing."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_drill import run

from mo_server import (
    DEFAULT_VERSION,
    TXN_ROWS,
    MatrixOne,
    ServerLock,
    checksums,
    connect,
    create_db,
    wait_ports_free,
    writer_rows,
)


class TimedWriter:
    """Numbered 100-row transactions into w.t, each with the UTC instants it began and returned."""

    def __init__(self) -> None:
        self.log: list[tuple[int, datetime, datetime]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with connect() as conn, conn.cursor() as cur:
            n = 0
            while not self._stop.is_set():
                began = datetime.now(UTC)
                try:
                    cur.execute(f"insert into w.t select result, {n} from "
                                f"generate_series({n * TXN_ROWS}, {n * TXN_ROWS + TXN_ROWS - 1}) g")
                except Exception as error:
                    self.errors.append(str(error))
                    return
                self.log.append((n, began, datetime.now(UTC)))
                n += 1
                time.sleep(0.05)  # a steady trickle: MatrixOne 1.3's PITR restore panics on very large tables

    def start(self) -> TimedWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_restore_to_a_time_before_an_accident_through_the_cli(
        matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    repo, snap = tmp_path / "repo", tmp_path / "snap"
    mo = matrixone_factory(DEFAULT_VERSION, hostname="mo-src")
    mo.start()
    # An online backup with --pitr-window creates the cluster PITR; it records the window but no history.
    online = run("backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--data-dir", mo.data_dir,
                 "--repo", repo, "--source", "mo", "--pitr-window", "12h", "--json", "--quiet")
    assert online.returncode == 0, online.stderr
    online_summary = json.loads(online.stdout)
    assert online_summary["extra"]["pitr"]["history"] is False
    assert online_summary["extra"]["pitr"]["ensured"] == "created mobackup_mo (12 h)"
    assert [w["name"] for w in online_summary["extra"]["pitr"]["windows"]] == ["mobackup_mo"]
    assert mo.sql("show pitr")[0][0] == "mobackup_mo"

    create_db(mo, "db1", 5000)
    create_db(mo, "db2", 3000)
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    before = checksums(mo, ["db1", "db2"])
    # Seen on MatrixOne 1.3: an instant a few seconds after the PITR's creation, before any checkpoint,
    # is refused ("account sys does not exist at timestamp"); one after a checkpoint is not.
    mo.checkpoint()
    time.sleep(3)
    writer = TimedWriter().start()
    try:
        time.sleep(2)
        t = datetime.now(UTC)
        time.sleep(1.2)
        mo.sql("update db1.t set v = 'accident' where id % 3 = 0", "delete from db1.t where id % 5 = 0",
               "drop table db2.t")
        for i in range(3):  # churn: deletes, inserts, checkpoints, then a global checkpoint
            mo.sql(f"delete from db1.t where id % 7 = {i}",
                   f"insert into db1.t select result, 'churn', 1 from generate_series({10**6 + i * 2000}, "
                   f"{10**6 + i * 2000 + 1999}) g")
            mo.checkpoint()
            time.sleep(1)
        assert '"OK"' in mo.sql("select mo_ctl('dn','globalcheckpoint','')")[0][0]
        time.sleep(1)
    finally:
        writer.stop()
    assert writer.errors == [] and len(writer.log) > 20
    # The cold copy: MatrixOne stopped and its directory copied (a volume snapshot), then backed up with
    # SQL reachable again so that the backup records the window (as the operator's Snapshot mode does).
    mo.stop()
    shutil.copytree(mo.data_dir, snap, symlinks=True)
    mo.start()
    cold = run("backup", "--data-dir", snap, "--sql-host", "127.0.0.1", "--sql-user", "root", "--repo", repo,
               "--source", "mo", "--type", "full", "--pitr-window", "1d", "--json", "--quiet")
    # A shorter window asked for later never shortens the PITR.
    again = run("backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--data-dir", mo.data_dir,
                "--repo", repo, "--source", "mo-online", "--pitr-window", "2h", "--json", "--quiet")
    pitrs = mo.sql("show pitr")
    mo.stop()
    assert cold.returncode == 0, cold.stderr
    cold_summary = json.loads(cold.stdout)
    assert cold_summary["extra"]["pitr"]["history"] is True
    assert cold_summary["extra"]["pitr"]["ensured"] == "lengthened mobackup_mo (1 d)"
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["extra"]["pitr"]["ensured"] == "kept mobackup_mo (1 d)"
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
            expect=f"the newest recoverable point is {cold_summary['recoverable_to']}")
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
    assert checksums(restored, ["db1", "db2"]) == before  # the accident and the churn undone, db2 back
    count, max_id, txns = writer_rows(restored)
    assert count == max_id + 1 == txns * TXN_ROWS, (count, max_id, txns)
    committed_before = [n for n, _, ended in writer.log if ended < restore_at]
    begun_after = [n for n, began, _ in writer.log if began > restore_at]
    assert txns >= len(committed_before) and (not begun_after or txns <= begun_after[0]), \
        (txns, len(committed_before), begun_after[:1])
    restored.sql("insert into w.t values (-1, -1)")  # the restored server takes writes
