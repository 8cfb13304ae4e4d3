"""The seed's examples through the operator, with the real MatrixOne (`mo-service` v2.2.2) as the
StatefulSet's container: the local node runs it as a process whose working directory is the PVC
(the stock standalone configuration copied there, data in `mo-data`), and the pod name `mo-0` is
its host name, as in a real StatefulSet. `MOBackup` full and incremental with `consistency: Stop`
and `spec.sql` (checkpoint forced, version recorded), then `MORestore` with `overwrite` and
`sqlCheck`; the databases and row checksums after the restore are read from the pod's server.
MatrixOne's ports are fixed, so the test holds the suite's MatrixOne lock while its pod runs."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from mo_cluster_e2e import stop_mo as stop_statefulset
from mo_e2e import Env

from mo_server import (
    DEFAULT_VERSION,
    PASSWORD,
    TXN_ROWS,
    USER,
    ServerLock,
    SqlClient,
    Writer,
    checksums,
    create_db,
    insert_rows,
    statefulset,
    user_databases,
    wait_ports_free,
    wait_sql,
    writer_rows,
)

pytestmark = pytest.mark.cluster

STS = {"kind": "StatefulSet", "name": "mo"}


class Downtime:
    """Polls `select 1` every 0.1 s in a thread; `longest` is the longest stretch without an answer."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                with pymysql.connect(host="127.0.0.1", port=6001, user=USER, password=PASSWORD,
                                     connect_timeout=1, read_timeout=2) as conn, conn.cursor() as cur:
                    cur.execute("select 1")
                if down_since is not None:
                    self.longest = max(self.longest, time.monotonic() - down_since)
                    down_since = None
            except pymysql.MySQLError:
                down_since = down_since or time.monotonic()
            time.sleep(0.1)

    def __enter__(self) -> Downtime:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def real_mo(env: Env, mo_install: Callable[[str], Path]) -> Iterator[Callable[..., SqlClient]]:
    """`start(name="mo", claim="mo-data")`: a PVC (kept if it exists) and a StatefulSet of 1 replica
    running the real mo-service on it; returns when SQL answers."""
    lock = ServerLock()
    started: list[str] = []

    def start(name: str = "mo", claim: str = "mo-data") -> SqlClient:
        home = mo_install(DEFAULT_VERSION)
        lock.acquire()
        wait_ports_free()
        host = env.cluster.pv_root / env.ns / claim
        if not host.exists():
            host = env.cluster.make_pvc(env.ns, claim, size="5Gi")
        shutil.copytree(home / "etc", host / "etc", dirs_exist_ok=True)
        env.api.create(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets", statefulset(name, claim, home))
        started.append(name)
        wait_sql(180)
        return SqlClient()

    yield start
    try:
        stop_statefulset(env, *started)
    finally:
        lock.release()


def sql_ref() -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": 6001, "user": USER, "passwordSecretRef": {"name": "mo-sql", "key": "password"}}


def backup(env: Env, name: str, backup_type: str) -> tuple[dict[str, Any], float]:
    with Downtime() as downtime:
        env.create("MOBackup", name, {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS,
                                                 "sql": sql_ref()},
                                      "storageRef": {"name": "s3"}, "type": backup_type, "consistency": "Stop"})
        st = env.wait_phase("MOBackup", name, "Completed", "Failed", timeout=300)["status"]
        assert st["phase"] == "Completed", st
        env.wait_replicas_running(timeout=120)
        wait_sql(180)
    return st, downtime.longest


def test_seed_examples_through_the_operator_with_real_matrixone(env: Env, real_mo: Callable[..., SqlClient]) -> None:
    mo = real_mo()
    env.s3_storage()
    env.secret("mo-sql", {"password": PASSWORD})
    create_db(mo, "db1", 2000)
    create_db(mo, "db2", 2000)
    at_full = checksums(mo, ["db1", "db2"])

    full, full_downtime = backup(env, "mo-full-1", "Full")
    assert full["type"] == "Full" and full["moVersion"].startswith("8.0.30-MatrixOne"), full
    assert full["checkpoint"]["ok"] is True, full

    insert_rows(mo, "db1", 100_001, 700)
    create_db(mo, "db4", 300)
    at_incremental = checksums(mo, ["db1", "db2", "db4"])
    incremental, inc_downtime = backup(env, "mo-inc-1", "Incremental")
    assert incremental["baseBackupID"] == full["backupID"], incremental
    assert incremental["newBytes"] < full["newBytes"] / 2, (incremental, full)
    print(f"\nreal MatrixOne via the operator: full {full['size']} in {full['duration']}, Stop downtime "
          f"{full_downtime:.1f} s; incremental {incremental['newBytes']} new bytes, downtime {inc_downtime:.1f} s")

    mo.sql("drop database db1", "drop database db4")
    create_db(mo, "db3", 10)

    env.create("MORestore", "restore-inc", {
        "backupName": "mo-inc-1", "overwrite": True,
        "target": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS},
        "sqlCheck": {**sql_ref(), "timeoutSeconds": 180}})
    r = env.wait_phase("MORestore", "restore-inc", "Completed", "Failed", timeout=400)["status"]
    assert r["phase"] == "Completed", r
    assert "db1" in r["sqlCheck"] and "db3" not in r["sqlCheck"], r["sqlCheck"]
    wait_sql(180)
    assert user_databases(mo) == {"db1", "db2", "db4"}
    assert checksums(mo, ["db1", "db2", "db4"]) == at_incremental

    env.create("MORestore", "restore-full", {
        "backupName": "mo-full-1", "overwrite": True,
        "target": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS}})
    r = env.wait_phase("MORestore", "restore-full", "Completed", "Failed", timeout=400)["status"]
    assert r["phase"] == "Completed", r
    wait_sql(180)
    assert user_databases(mo) == {"db1", "db2"}
    assert checksums(mo, ["db1", "db2"]) == at_full


def test_online_backup_through_the_operator_has_no_downtime_and_restores_under_another_name(
        env: Env, real_mo: Callable[..., SqlClient]) -> None:
    """`source.sql` makes the backup Online: no scaling, the writer never stops, MatrixOne answers
    throughout; the Job runs beside MatrixOne's pod and leaves no staging. MatrixOne's first BACKUP
    fails the transient way (its own fault point): the Job runs it again, and a Warning Event says so.
    The backup restores into a new PVC under a StatefulSet of another name (an online backup holds no
    WAL) as an exact prefix."""
    mo = real_mo()
    env.s3_storage()
    env.secret("mo-sql", {"password": PASSWORD})
    create_db(mo, "db1", 50_000)
    mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
    writer = Writer().start()
    mo.fail_backup_checkpoints(1)
    with Downtime() as downtime:
        committed_before = writer.committed
        env.create("MOBackup", "mo-online-1", {
            "source": {"pvc": {"claimName": "mo-data", "path": "mo-data"}, "workload": STS, "sql": sql_ref()},
            "storageRef": {"name": "s3"}})
        st = env.wait_phase("MOBackup", "mo-online-1", "Completed", "Failed", timeout=300)["status"]
    writer.stop()
    assert st["phase"] == "Completed", st
    assert st["consistency"] == "Online" and st["stagedBytes"] > 0 and st["storedBytes"] > 0, st
    assert st["moVersion"].startswith("8.0.30-MatrixOne"), st
    retried = [e for e in env.events("mo-online-1") if e["reason"] == "BackupRetried"]
    assert len(retried) == 1 and retried[0]["type"] == "Warning" and "failed 1 time(s)" in retried[0]["message"] \
        and "panic" in retried[0]["message"], retried
    assert downtime.longest == 0.0 and writer.errors == [] and writer.longest_pause < 1.0, (
        downtime.longest, writer.errors, writer.longest_pause)
    assert env.replicas()[0] == 1
    assert not list((env.cluster.pv_root / env.ns / "mo-data" / "mo-data").glob(".mobackup-staging-online-*"))
    job = env.api.get(f"/apis/batch/v1/namespaces/{env.ns}/jobs/{st['jobName']}")
    affinity = job["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"]["app"] == "mo"
    print(f"\nonline backup via the operator: {st['size']} in {st['duration']}, staged {st['stagedBytes']} B; "
          f"writer's longest pause {writer.longest_pause:.3f} s, SQL downtime {downtime.longest:.1f} s")

    stop_statefulset(env, "mo")
    env.cluster.make_pvc(env.ns, "mo-data-copy", size="5Gi")
    env.create("MORestore", "to-copy", {"backupName": "mo-online-1",
                                         "target": {"pvc": {"claimName": "mo-data-copy", "path": "mo-data"}}})
    r = env.wait_phase("MORestore", "to-copy", "Completed", "Failed", timeout=300)["status"]
    assert r["phase"] == "Completed", r
    copy = real_mo("mo-copy", "mo-data-copy")
    count, max_id, txns = writer_rows(copy)
    assert count == max_id + 1 and count % TXN_ROWS == 0 and txns >= committed_before, (count, max_id, txns)
    assert checksums(copy, ["db1"])["db1"][0] == 50_000
