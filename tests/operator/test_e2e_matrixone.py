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
from mo_e2e import Env

from mo_server import (
    PASSWORD,
    USER,
    ServerLock,
    SqlClient,
    checksums,
    create_db,
    insert_rows,
    user_databases,
    wait_ports_free,
    wait_sql,
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
def real_mo(env: Env, mo_install: Callable[[str], Path]) -> Iterator[Callable[[], SqlClient]]:
    """Starts the StatefulSet `mo` (1 replica) running the real mo-service on PVC `mo-data`."""
    lock = ServerLock()

    def start() -> SqlClient:
        home = mo_install("v2.2.2")
        lock.acquire()
        wait_ports_free()
        host = env.cluster.make_pvc(env.ns, "mo-data", size="5Gi")
        shutil.copytree(home / "etc", host / "etc")
        env.api.create(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets", {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "mo"},
            "spec": {"replicas": 1, "serviceName": "mo", "selector": {"matchLabels": {"app": "mo"}},
                     "template": {"metadata": {"labels": {"app": "mo"}}, "spec": {
                         "terminationGracePeriodSeconds": 60,
                         "containers": [{"name": "matrixone", "image": "matrixorigin/matrixone:2.2.2",
                                         "command": [str(home / "mo-service")],
                                         "args": ["-launch", "etc/launch/launch.toml"],
                                         "workingDir": "/data",
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "mo-data"}}]}}}})
        wait_sql(180)
        return SqlClient()

    yield start
    try:
        env.api.merge_patch(f"/apis/apps/v1/namespaces/{env.ns}/statefulsets/mo", {"spec": {"replicas": 0}})
        deadline = time.monotonic() + 90
        while env.api.get(f"/api/v1/namespaces/{env.ns}/pods", labelSelector="app=mo")["items"]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        wait_ports_free(90)
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


def test_seed_examples_through_the_operator_with_real_matrixone(env: Env, real_mo: Callable[[], SqlClient]) -> None:
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
