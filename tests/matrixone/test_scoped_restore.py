"""`mobackup restore ID --only DB.TABLE --into-sql-host ...` on the real MatrixOne: table B (composite
primary key, secondary index, NULLs, decimals, JSON, blobs, comments) restored from an online backup
into the RUNNING server while a writer commits into table A, and every refusal before anything is
written to the live server; a drill of the same backup beside the live server.

The live server runs in a network namespace of its own, reached on a free loopback port
(`isolated=True`), and a socket holds port 6001 throughout (or another MatrixOne does): the scratch
MatrixOne must start beside a server that holds MatrixOne's fixed ports."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
import pytest

from mo_server import DEFAULT_VERSION, REPO, MatrixOne, ServerLock, Writer, connect, port_is_free
from scoped_tables import B_DDL, B_ROWS, ODD_ROW, ROWS
from sqlserver import SqlServer

MOBACKUP = REPO / ".venv" / "bin" / "mobackup"
# Every type a row may hold, one row of extremes and one of NULLs (all copied exactly on v1.3).
TYPES = {"b": ("bool", "true"), "ti": ("tinyint", "-128"), "bu": ("bigint unsigned", "18446744073709551615"),
         "f": ("float", "3.4e38"), "d": ("double", "2.2250738585072014e-308"),
         "dc": ("decimal(38,10)", "-1234567890123456789012345678.0123456789"), "dt": ("date", "1000-01-01"),
         "tm": ("time(3)", "-838:59:59.999"), "ts": ("timestamp(6)", "2038-01-19 03:14:07.999999"),
         "ch": ("char(5)", "ab  "), "vb": ("varbinary(20)", b"\x00\xff'\\"), "tx": ("text", "h\u00e9llo\n'\"\\%s"),
         "e": ("enum('a','b')", "b"), "bt": ("bit(8)", 255), "u": ("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
         "v": ("vecf32(3)", "[1.5, -2, 3e-5]"), "j": ("json", '{"a": [1, 2.50, "x"], "b": null}')}


def run(*args: str | Path, password: str = "111", env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
           "MOBACKUP_SQL_PASSWORD": "111", "MOBACKUP_INTO_SQL_PASSWORD": password}
    if env_path is not None:
        env["PATH"] = env_path
    return subprocess.run([str(MOBACKUP), *map(str, args)], capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture
def port_6001_held() -> Iterator[None]:
    """Port 6001 busy for the test: a listening socket of ours, or the MatrixOne that already has it.
    Held under the machine's MatrixOne lock: a test that starts MatrixOne on the fixed ports waits."""
    lock = ServerLock()
    lock.acquire()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            squatter.bind(("127.0.0.1", 6001))
            squatter.listen()
        except OSError:
            pass  # someone else's server holds it: just as good
        assert not port_is_free(6001)
        yield
    finally:
        squatter.close()
        lock.release()


def rows(mo: MatrixOne, table: str) -> list[tuple[Any, ...]]:
    return mo.sql(f"select * from {table} order by region, id")


def create_sql(mo: MatrixOne, table: str) -> str:
    """SHOW CREATE TABLE without the table's own name."""
    return mo.sql(f"show create table {table}")[0][1].split(" (", 1)[1]


def tables(mo: MatrixOne) -> set[tuple[str, str]]:
    """Every table but MatrixOne's hidden ones (a secondary index's, which come and go with their table)."""
    return {(str(d), str(t)) for d, t in mo.sql("select table_schema, table_name from information_schema.tables")
            if not str(t).startswith("__mo_")}


def slip_a_row_into_the_copy(mo: MatrixOne, stop: threading.Event, slipped: list[str]) -> None:
    """Insert one row into --replace's temporary copy as soon as it exists (before its check)."""
    with mo.connect() as conn, conn.cursor() as cur:
        while not stop.is_set():
            cur.execute("select table_name from information_schema.tables where table_schema = 'shop' and "
                        "table_name like 'b_mobackup_%'")
            names = [str(r[0]) for r in cur.fetchall()]
            if names:
                try:
                    cur.execute(f"insert into shop.`{names[0]}` (region, id) values ('zz', 1)")
                except pymysql.MySQLError:
                    continue  # created but not yet usable
                slipped.append(names[0])
                return
            time.sleep(0.02)


def test_a_table_comes_back_into_the_running_server_under_a_new_name_and_with_replace(
        matrixone_factory: Callable[..., MatrixOne], mysql_server: SqlServer, port_6001_held: None,
        tmp_path: Path) -> None:
    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    scratch.mkdir()
    live = matrixone_factory(DEFAULT_VERSION, isolated=True)
    live.start()
    mo_service = live.home / "mo-service"
    live.sql("create database shop", B_DDL, B_ROWS, "create table shop.c (id int primary key)",
             "create database w", "create table w.t (id bigint primary key, txn int)")
    live.sql("create table shop.types (id int primary key, " + ", ".join(f"`{c}` {t}" for c, (t, _) in TYPES.items())
             + ")", "create view shop.v as select id from shop.types")
    with live.connect() as conn, conn.cursor() as cur:
        cur.execute("insert into shop.b values (%s, %s, %s, %s, %s, %s, %s, %s)", ODD_ROW)
        cur.execute(f"insert into shop.types values (1, {', '.join(['%s'] * len(TYPES))})",
                    [v for _, v in TYPES.values()])
        cur.execute("insert into shop.types (id) values (2)")
    # A cluster PITR, so that the online backup takes the history (engine/pitr_history.py); T, then a
    # change to B that the backup holds but a restore to T must not.
    live.sql("create pitr scoped for cluster range 1 'd'")
    live.checkpoint()
    time.sleep(3)  # MatrixOne 1.3 refuses instants in the first seconds of a PITR
    at_t = rows(live, "shop.b")
    t = datetime.now(UTC)
    time.sleep(1.2)
    live.sql("update shop.b set note = 'after T' where id % 7 = 0")
    backup = run("backup", "--online", "--sql-host", "127.0.0.1", "--sql-port", str(live.port), "--sql-user", "root",
                  "--data-dir", live.data_dir, "--repo", repo, "--json", "--quiet")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["id"]
    at_backup, ddl = rows(live, "shop.b"), create_sql(live, "shop.b")
    types_at_backup = live.sql("select * from shop.types order by id")
    assert len(at_backup) == ROWS + 1
    # The accident on B after the backup.
    live.sql("delete from shop.b where id % 10 = 0", "update shop.b set note = 'damaged' where id % 3 = 0")
    after_accident = rows(live, "shop.b")

    # A drill of the backup beside the live server (which, like port 6001, stays busy meanwhile).
    drill = run("drill", backup_id, "--repo", repo, "--mo-service", mo_service, "--scratch-dir", scratch, "--json",
                "--check-sql", "select count(*) from shop.b", "--expect", str(ROWS + 1))
    assert drill.returncode == 0, drill.stderr
    drilled = json.loads(drill.stdout)
    assert drilled["ok"] and drilled["network"] == "own namespace", drilled
    assert list(scratch.iterdir()) == []

    # Each refusal, before anything is written to the live server.
    before = tables(live)
    common = ("--repo", repo, "--into-sql-host", "127.0.0.1", "--into-sql-port", str(live.port),
              "--mo-service", mo_service, "--scratch-dir", scratch)
    missing = run("restore", backup_id, "--only", "shop.nope", *common)
    assert missing.returncode == 1 and "no table shop.nope" in missing.stderr, missing.stderr
    assert "shop.b, shop.c, shop.types, shop.v" in missing.stderr, missing.stderr  # it lists what the backup has
    nodb = run("restore", backup_id, "--only", "gone", *common)
    assert nodb.returncode == 1 and "no database 'gone'" in nodb.stderr and "shop" in nodb.stderr, nodb.stderr
    exists = run("restore", backup_id, "--only", "shop.b", "--as", "Shop.C", *common)  # MatrixOne folds case
    assert exists.returncode == 1 and "Shop.C exists on the live server" in exists.stderr, exists.stderr
    wrong_password = run("restore", backup_id, "--only", "shop.b", *common, password="nope")
    assert wrong_password.returncode == 1 and "cannot connect to the live MatrixOne" in wrong_password.stderr
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    unreachable = run("restore", backup_id, "--only", "shop.b", *common[:-6], "--into-sql-port", str(dead_port),
                      "--mo-service", mo_service, "--scratch-dir", scratch)
    assert unreachable.returncode == 1 and "cannot connect to the live MatrixOne" in unreachable.stderr
    mariadb = run("restore", backup_id, "--only", "shop.b", "--repo", repo, "--into-sql-host", mysql_server.host,
                  "--into-sql-port", str(mysql_server.port), "--into-sql-user", mysql_server.user,
                  "--mo-service", mo_service, "--scratch-dir", scratch, password=mysql_server.password)
    assert mariadb.returncode == 1 and "is not MatrixOne" in mariadb.stderr, mariadb.stderr
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        full = run("restore", backup_id, "--only", "shop.b", *common[:-1], small)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert full.returncode == 1 and "free; use --scratch-dir elsewhere" in full.stderr, full.stderr
    assert tables(live) == before and rows(live, "shop.b") == after_accident
    assert list(scratch.iterdir()) == []

    # B restored under a new name while the writer commits into A; the live server keeps running.
    pid = live.proc.pid if live.proc else None
    with live.connect() as held, held.cursor() as cursor:  # a session a restart would end
        writer = Writer(port=live.port).start()
        try:
            restored = run("restore", backup_id, "--only", "shop.b", *common, "--json")
        finally:
            writer.stop()
        cursor.execute("select count(*) from w.t")
        assert cursor.fetchone()[0] == writer.committed * 100
    assert restored.returncode == 0, restored.stderr
    assert writer.errors == [] and writer.committed > 5
    assert live.proc is not None and live.proc.pid == pid and live.proc.poll() is None
    result = json.loads(restored.stdout)
    assert result["network"] == "own namespace"
    (copy,) = result["tables"]
    assert copy["source"] == "shop.b" and re.fullmatch(r"shop\.b_restored_\d{14}", copy["target"]), copy
    assert copy["rows"] == ROWS + 1 and copy["replaced"] is None
    assert rows(live, copy["target"]) == at_backup
    assert create_sql(live, copy["target"]) == ddl  # keys, index, defaults, comments
    assert rows(live, "shop.b") == after_accident  # the damaged original is untouched
    assert list(scratch.iterdir()) == [], "the scratch directory outlived the restore"
    print(f"\nscoped restore of {ROWS + 1} rows: scratch restore {result['restore_seconds']} s, start "
          f"{result['start_seconds']} s, copy {copy['seconds']} s ({copy['rows_per_second']} rows/s, "
          f"{copy['mb_per_second']} MB/s), total {result['total_seconds']} s, writer's longest pause "
          f"{writer.longest_pause:.2f} s")

    # A whole database into a new one: every table under its own name, the view left out; its rows
    # streamed as CSV by LOAD DATA LOCAL over three connections (--copy-method load).
    whole = run("restore", backup_id, "--only", "SHOP", "--as", "shop_copy", "--insert-connections", "3",
                "--copy-method", "load", *common, "--json")
    assert whole.returncode == 0, whole.stderr
    result = json.loads(whole.stdout)
    assert [t["target"] for t in result["tables"]] == ["shop_copy.b", "shop_copy.c", "shop_copy.types"]
    assert result["skipped"] == ["shop.v (view)"]
    assert rows(live, "shop_copy.b") == at_backup and live.sql("select * from shop_copy.types order by id") == \
        types_at_backup
    assert create_sql(live, "shop_copy.types") == create_sql(live, "shop.types")
    # The connection that streams LOAD DATA LOCAL answers a server's request for any other name (here a
    # file of this machine) with no data and an error: a hostile server gets nothing it was not offered.
    from mobackup.engine import sqlconn

    with sqlconn.connect_streaming("127.0.0.1", live.port, "root", "111", autocommit=True,
                                   database="shop_copy") as conn, conn.cursor() as cur:
        cur.execute("create table w.leak (line text)")
        with pytest.raises(pymysql.err.OperationalError, match="which mobackup did not offer"):
            cur.execute("load data local infile '/etc/hostname' into table w.leak")
        cur.execute("select count(*) from w.leak")
        assert cur.fetchone()[0] == 0
        cur.execute("drop table w.leak")

    # --replace whose check fails (a row slipped into the copy under way): the old B stays as it was.
    slipped: list[str] = []
    stop = threading.Event()
    meddler = threading.Thread(target=slip_a_row_into_the_copy, args=(live, stop, slipped), daemon=True)
    meddler.start()
    try:
        failed = run("restore", backup_id, "--only", "shop.b", "--as", "shop.b", "--replace", *common)
    finally:
        stop.set()
        meddler.join()
    assert slipped, "the copy's table never appeared"
    assert failed.returncode == 1 and "does not match the backup" in failed.stderr, failed.stderr
    assert "nothing was replaced" in failed.stderr
    assert rows(live, "shop.b") == after_accident
    assert tables(live) == before | {("shop", copy["target"][5:])} | {("shop_copy", t) for t in ("b", "c", "types")}

    # The table as it was at T (before the change the backup holds): the scratch brought to T by its PITR.
    at_time = run("restore", "--to-time", t.isoformat().replace("+00:00", "Z"), "--only", "shop.b", "--suffix",
                  "_at_t", *common, "--json")
    assert at_time.returncode == 0, at_time.stderr
    timed = json.loads(at_time.stdout)
    assert timed["backup_id"] == backup_id and timed["point_in_time"]["pitr"] == "scoped", timed
    assert rows(live, "shop.b_at_t") == at_t != at_backup

    # --replace: the damaged B swapped for the backup's, the old one kept aside.
    replaced = run("restore", backup_id, "--only", "shop.b", "--as", "shop.b", "--replace", *common, "--json")
    assert replaced.returncode == 0, replaced.stderr
    (swap,) = json.loads(replaced.stdout)["tables"]
    assert swap["target"] == "shop.b" and re.fullmatch(r"shop\.b_replaced_\d{14}", swap["replaced"]), swap
    assert rows(live, "shop.b") == at_backup and create_sql(live, "shop.b") == ddl
    assert rows(live, swap["replaced"]) == after_accident
    assert not [t for d, t in tables(live) if d == "shop" and "_mobackup_" in t]
    assert list(scratch.iterdir()) == []


    # The checksum (engine/scoped_export.py, computed by the server): the same rows in another order give
    # the same value; a changed value, a NULL for an empty string and two swapped columns each change it.
    from mobackup.engine.scoped import RAW, table_checksum

    variants = {"same": "('x', 'y', 1), ('', null, 2)", "reordered": "('', null, 2), ('x', 'y', 1)",
                "changed": "('x', 'z', 1), ('', null, 2)", "null": "('x', 'y', 1), (null, null, 2)",
                "swapped": "('y', 'x', 1), ('', null, 2)"}
    sums = {}
    for name, values in variants.items():
        live.sql(f"create table shop.ck_{name} (a varchar(5), b varchar(5), n int)",
                 f"insert into shop.ck_{name} values {values}")
        with connect(port=live.port, conv=RAW) as raw:
            sums[name] = table_checksum(raw, "shop", f"ck_{name}")
    assert sums["same"] == sums["reordered"] and sums["same"][0] == 2
    assert len({sums[n] for n in ("same", "changed", "null", "swapped")}) == 4, sums
