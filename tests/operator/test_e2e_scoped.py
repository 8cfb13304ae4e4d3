"""Scoped MORestore (spec.scope + target.sql) on the test cluster with the real MatrixOne: the live
server runs in a StatefulSet pod (its data on a PVC), a writer commits into table A (w.t) while
table B (composite primary key, secondary index, NULLs, decimals, JSON, blobs) comes back from an
Online backup under a new name (scope.copyMethod load: the CLI test covers the INSERTs); the copy's
checksum is B's at the backup, the writer saw no error,
the live server was never restarted (same pod, no restart, a session opened before still answers),
and every scratch object is gone after. The refusals (a table not in the backup, a target that
exists, an unreachable live server, a scratch volume too small) fail before any Job, PVC or write,
with the reason and an Event; the schema refuses `as` with `suffix`. Then B as it was at an instant T
before a change the backup holds (spec.pointInTime, no backupName: the operator picks the Online
backup, which took the PITR history): the scratch MatrixOne is brought to T and B's copy matches B's
checksum at T.

The local node runs pods on the host's network, where the live MatrixOne holds the fixed ports: the
scratch MatrixOne's command is wrapped in a network namespace of its own (bubblewrap), its launch
configuration sets a Unix socket in its working directory, and the operator's drill.matrixOne.sqlSocket
setting (MOBACKUP_DRILL_SQL_SOCKET) points the loader at it, as a pod's own network would separate
them on a real cluster."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mo_e2e import Env, OperatorProcess
from test_e2e_drill import scratch_objects
from test_e2e_matrixone import STS, real_mo, sql_ref  # noqa: F401 - real_mo is a fixture

from cluster.kube_api import ApiError
from mo_server import DEFAULT_VERSION, PASSWORD, SqlClient, Writer, connect
from scoped_tables import B_DDL, ODD_ROW, b_rows

pytestmark = pytest.mark.cluster

ROWS = 3000


@pytest.fixture
def scratch_home(mo_install: Callable[[str], Path]) -> Iterator[Path]:
    """The scratch MatrixOne's working directory: the stock configuration with a Unix socket (a short
    path: a socket's name holds at most 108 bytes). Not under /tmp, where the loader's container has
    an emptyDir of its own: beside the MatrixOne installation."""
    from mobackup.engine.drill import set_unix_socket

    home = mo_install(DEFAULT_VERSION)
    workdir = Path(tempfile.mkdtemp(prefix="mo-scoped-", dir=home.parent))
    shutil.copytree(home / "etc", workdir / "etc")
    set_unix_socket(workdir, workdir / "mysql.sock")
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def scoped_operator(env: Env, home: Path, workdir: Path, tmp_path: Path) -> OperatorProcess:
    netns = ["bwrap", "--die-with-parent", "--bind", "/", "/", "--dev", "/dev", "--unshare-net", "--",
             str(home / "mo-service")]
    return OperatorProcess(env.cluster, [env.ns], tmp_path / "operator-scoped.log", extra_env={
        "MOBACKUP_DRILL_COMMAND": json.dumps(netns),
        "MOBACKUP_DRILL_ARGS": json.dumps(["-launch", "etc/launch/launch.toml"]),
        "MOBACKUP_DRILL_WORKING_DIR": str(workdir), "MOBACKUP_DRILL_DATA_PATH": str(workdir / "mo-data"),
        "MOBACKUP_DRILL_SQL_SOCKET": str(workdir / "mysql.sock")})


def checksum(table: str) -> tuple[int, str]:
    from mobackup.engine.scoped import RAW, table_checksum

    database, name = table.split(".")
    with connect(conv=RAW) as raw:
        return table_checksum(raw, database, name)


def restore(env: Env, name: str, scope: dict[str, Any], port: int = 6001, **spec: Any) -> dict[str, Any]:
    """The MORestore's status once terminal (the Job's pod logs in the error when it is not); a spec
    field given as None is left out."""
    body = {"backupName": "mo-online", "scope": {"timeoutSeconds": 120, **scope}, **spec,
            "target": {"sql": {**sql_ref(), "port": port}}}
    env.create("MORestore", name, {k: v for k, v in body.items() if v is not None})
    try:
        st = env.wait_phase("MORestore", name, "Completed", "Failed", timeout=240)["status"]
    except AssertionError as error:
        st = {}
        failure: AssertionError | None = error
    else:
        failure = None
    if failure is not None or st.get("phase") != "Completed":
        job = env.get("MORestore", name)["status"].get("jobName")  # its pods are gone, their logs stay
        for log in sorted((env.cluster.state_dir / "node" / "pods").glob(f"{env.ns}_{job}-*/*.log")) if job else []:
            print(f"==> {log} <==\n{log.read_text(errors='replace')[-3000:]}")
    if failure is not None:
        raise failure
    return st


def test_a_table_comes_back_into_the_running_matrixone_through_the_operator(
        env: Env, real_mo: Callable[..., SqlClient],  # noqa: F811 - the fixture imported above
        mo_install: Callable[[str], Path], scratch_home: Path, tmp_path: Path) -> None:
    env.op.kill(signal.SIGTERM)
    env.op = scoped_operator(env, mo_install(DEFAULT_VERSION), scratch_home, tmp_path)
    env.op.start()
    mo = real_mo()
    env.s3_storage()
    env.secret("mo-sql", {"password": PASSWORD})
    mo.sql("create database shop", B_DDL, b_rows(ROWS), "create table shop.c (id int primary key)",
           "create database w", "create table w.t (id bigint primary key, txn int)")
    with mo.connect() as conn, conn.cursor() as cur:
        cur.execute("insert into shop.b values (%s, %s, %s, %s, %s, %s, %s, %s)", ODD_ROW)
    # A cluster PITR, so that the Online backup takes the history; T, then a change to B that the backup
    # holds but a scoped restore to T must not.
    mo.sql("create pitr scoped for cluster range 1 'd'")
    mo.checkpoint()
    time.sleep(3)  # MatrixOne 1.3 refuses instants in the first seconds of a PITR
    at_t = checksum("shop.b")
    t = datetime.now(UTC)
    time.sleep(1.2)
    mo.sql("update shop.b set note = 'after T' where id % 7 = 0")
    env.create("MOBackup", "mo-online", {"source": {"pvc": {"claimName": "mo-data", "path": "mo-data"},
                                                    "workload": STS, "sql": sql_ref()}, "storageRef": {"name": "s3"}})
    backup = env.wait_phase("MOBackup", "mo-online", "Completed", "Failed", timeout=300)["status"]
    assert backup["phase"] == "Completed", backup
    assert backup.get("recoverableTo"), backup  # the Online backup took the PITR history
    at_backup = checksum("shop.b")
    assert at_backup != at_t
    assert at_backup[0] == ROWS + 1
    mo.sql("delete from shop.b where id % 10 = 0")  # the accident on B after the backup
    after_accident = checksum("shop.b")

    # The refusals: Failed with the reason and an Event, before any Job, PVC or write.
    def refused(name: str, reason: str, scope: dict[str, Any], **kw: Any) -> str:
        st = restore(env, name, scope, **kw)
        assert st["phase"] == "Failed" and st["reason"] == reason, st
        assert reason in env.event_reasons(name, {reason})
        assert not scratch_objects(env, env.get("MORestore", name)), name
        return str(st["message"])

    message = refused("nope", "NotInBackup", {"tables": ["shop.nope"]})
    assert "no table shop.nope" in message and "shop.b, shop.c" in message, message
    assert "Shop.C exists" in refused("exists", "TargetExists", {"tables": ["shop.b"], "as": "Shop.C"})
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    assert "cannot connect" in refused("dead", "LiveServerUnusable", {"tables": ["shop.b"]}, port=dead)
    assert "set spec.scope.scratch.size" in refused("small", "ScratchTooSmall",
                                                     {"tables": ["shop.b"], "scratch": {"size": "1Mi"}})
    with pytest.raises(ApiError) as schema:
        env.create("MORestore", "both", {"backupName": "mo-online", "target": {"sql": sql_ref()},
                                         "scope": {"tables": ["shop.b"], "as": "x.y", "suffix": "_z"}})
    assert "as and suffix exclude each other" in schema.value.body

    # B under a new name while the writer commits into A; the live server keeps running.
    pod = env.api.get(f"/api/v1/namespaces/{env.ns}/pods/mo-0")
    with connect() as held, held.cursor() as cursor:  # a session a restart would end
        writer = Writer().start()
        try:
            st = restore(env, "b-back", {"tables": ["shop.b"], "as": "restored.b", "copyMethod": "load"})
        finally:
            writer.stop()
        cursor.execute("select count(*) from w.t")
        assert cursor.fetchone()[0] == writer.committed * 100
    assert st["phase"] == "Completed" and st["reason"] == "ScopedRestoreCompleted", st
    assert writer.errors == [] and writer.committed > 5, writer.errors
    now = env.api.get(f"/api/v1/namespaces/{env.ns}/pods/mo-0")
    assert now["metadata"]["uid"] == pod["metadata"]["uid"]
    assert all(c.get("restartCount", 0) == 0 for c in now["status"]["containerStatuses"])
    (table,) = st["tables"]
    assert table["source"] == "shop.b" and table["target"] == "restored.b" and table["rows"] == ROWS + 1, table
    assert checksum("restored.b") == at_backup and table["checksum"] == at_backup[1]
    assert checksum("shop.b") == after_accident  # the damaged original is untouched
    with connect() as conn, conn.cursor() as cur:
        cur.execute("show create table restored.b")
        ddl = cur.fetchone()[1]
    assert "PRIMARY KEY (`region`,`id`)" in ddl and "by_amount" in ddl and "table B" in ddl, ddl
    assert st["liveVersion"].startswith("8.0.30-MatrixOne") and st["rowsCopied"] == ROWS + 1
    wanted = {"JobCreated", "ScopedRestoreCompleted"}
    assert wanted <= env.event_reasons("b-back", wanted)
    obj = env.wait("MORestore", "b-back", lambda o: bool(o["status"].get("cleanedUp")), 90, "cleanedUp")
    deadline = time.monotonic() + 90
    while scratch_objects(env, obj):
        assert time.monotonic() < deadline, f"scratch objects outlived the restore: {scratch_objects(env, obj)}"
        time.sleep(0.5)
    metrics = env.op.metrics()
    assert any(line.startswith("mobackup_successes_total{") and 'kind="MORestore"' in line and env.ns in line
               for line in metrics.splitlines()), metrics

    # B as it was at T (the update after T undone): no backupName, the operator picks mo-online (a backup of
    # target.sql's MatrixOne holding T), and the loader brings the scratch MatrixOne to T before the copy.
    # The scratch servers of this test share one working directory (a pod's own file system on a real
    # cluster), and MatrixOne listens on no socket path where a file is: the last one's socket goes.
    (scratch_home / "mysql.sock").unlink(missing_ok=True)
    at = restore(env, "b-at-t", {"tables": ["shop.b"], "as": "restored.b_at_t", "copyMethod": "load"},
                 pointInTime=t.isoformat().replace("+00:00", "Z"), backupName=None)
    assert at["phase"] == "Completed", at
    assert at["pointInTime"]["backupName"] == "mo-online" and at["pointInTime"]["serverTime"], at
    assert at["pointInTime"]["time"].startswith(t.strftime("%Y-%m-%dT%H:%M:%S")) and at["pointInTime"]["pitr"], at
    assert checksum("restored.b_at_t") == at_t and at["tables"][0]["checksum"] == at_t[1], (at, at_t)
    print(f"\nscoped restore via the operator of {ROWS + 1} rows: scratch restore {st.get('restoreSeconds')} s, "
          f"start {st.get('startSeconds')} s, copy {st.get('copySeconds')} s, whole {st.get('duration')}; "
          f"writer's longest pause {writer.longest_pause:.2f} s")
