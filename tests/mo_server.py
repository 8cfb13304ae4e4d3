"""The real MatrixOne (`mo-service`) as a test component.

`tests/matrixone/build` builds the servers from the Go module proxy into the cache; this module
starts one standalone MatrixOne in a working directory of the test's own with MatrixOne's
`etc/launch` configuration (all data under `WORKDIR/mo-data`), waits until `select 1` answers, and
stops it with SIGTERM within a deadline (SIGKILL after). Its ports are fixed by that configuration
(SQL 6001, log service 32000-32002, ...), so one MatrixOne runs at a time on a machine: `MatrixOne`
holds an exclusive file lock while its server runs, which also serialises concurrent test runs.
A test that fails keeps the server's log: its path is printed in the report.

Fixtures:
- `mo_install(version=DEFAULT_VERSION) -> Path` (session): the installed server directory; FAILS (never skips)
  with the installer's message when it cannot be had.
- `matrixone` (function): a `MatrixOne` of DEFAULT_VERSION in a temporary directory, stopped after the test.
- `matrixone_factory` (function): `factory(version=DEFAULT_VERSION, workdir=None, hostname=None,
  isolated=False) -> MatrixOne`. `isolated=True`: the server runs in a network namespace of its own
  (as the drill's scratch server) and answers SQL on a free loopback port (`.port`) that forwards to
  its Unix socket: it takes no lock and runs beside any other MatrixOne on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
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

from mobackup.engine.drill import scratch_env, set_unix_socket

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MOBACKUP_TEST_CACHE", Path.home() / ".cache" / "mobackup-test"))
# The servers the suite runs, named as tests/matrixone/build names them. v1.3.0-dev is MatrixOne's
# commit of 2024-10-08 (`select version()`: 8.0.30-MatrixOne-v1.3.0), the newest the Go module proxy
# serves; users run 2.x to 4.x, whose facts seen elsewhere are in docs/, not in CI.
DEFAULT_VERSION = "v1.3.0-dev"
VERSIONS = (DEFAULT_VERSION,)
SQL_PORT = 6001
# Ports of the stock standalone configuration (SQL, log service, HAKeeper, TN/CN port bases).
FIXED_PORTS = (6001, 32000, 32001, 32002)
USER, PASSWORD = "root", "111"
LOCK_PATH = Path("/tmp/mobackup-matrixone.lock")
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
# After a test its data is thrown away: no clean shutdown to wait for (one under a 2 s GC took 60 s).
TEARDOWN_STOP_TIMEOUT = 5.0


def install(version: str) -> Path:
    """The server directory for `version`, built by tests/matrixone/build if missing."""
    home = CACHE / "matrixone" / version
    proc = subprocess.run([str(REPO / "tests" / "matrixone" / "build"), version], capture_output=True, text=True)
    if proc.returncode != 0 or not (home / "mo-service").exists():
        pytest.fail(f"MatrixOne {version} is not available:\n{proc.stderr}", pytrace=False)
    return home


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ports_free(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(port_is_free(p) for p in FIXED_PORTS):
        if time.monotonic() > deadline:
            busy = [p for p in FIXED_PORTS if not port_is_free(p)]
            raise RuntimeError(f"MatrixOne's fixed ports {busy} are still in use after {timeout:.0f} s")
        time.sleep(0.2)


def connect(host: str = "127.0.0.1", port: int = SQL_PORT, **kw: Any) -> pymysql.connections.Connection:
    return pymysql.connect(host=host, port=port, user=USER, password=PASSWORD, autocommit=True,
                           connect_timeout=5, read_timeout=120, **kw)


def wait_sql(timeout: float, alive: Callable[[], bool] = lambda: True, port: int = SQL_PORT) -> float:
    """Seconds until `select 1` answers; raises when the server died or the time ran out."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        if not alive():
            raise RuntimeError("mo-service exited before SQL answered")
        try:
            with connect(port=port) as conn, conn.cursor() as cur:
                cur.execute("select 1")
                return time.monotonic() - start
        except pymysql.MySQLError as exc:
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"MatrixOne did not answer `select 1` within {timeout:.0f} s: {last}")


def _terminate_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so a killed test run leaves no server
    holding MatrixOne's fixed ports (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class ServerLock:
    """The machine-wide lock on MatrixOne's fixed ports (flock: released if the holder dies)."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def acquire(self, timeout: float = 1800.0) -> None:
        if self.fd is not None:
            return
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(f"another MatrixOne holds {LOCK_PATH}") from None
                time.sleep(0.5)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class SqlClient:
    """SQL on the MatrixOne listening on 127.0.0.1:6001 (a fixture's process, or a pod's)."""

    port = SQL_PORT

    def connect(self) -> pymysql.connections.Connection:
        return connect(port=self.port)

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Runs the statements in one session; returns the rows of the last one."""
        rows: list[tuple[Any, ...]] = []
        with self.connect() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
        return rows

    def checkpoint(self) -> None:
        out = self.sql("select mo_ctl('dn','checkpoint','')")[0][0]
        assert '"OK"' in out, out

    def fail_backup_checkpoints(self, times: int) -> None:
        """MatrixOne's own fault point "tae: flush timeout": its next `times` forced flushes fail, so
        its TN cannot take BACKUP's checkpoint and BACKUP panics on the TN's "Failed", as it does when
        a checkpoint runs beside it. The injection is reset first (a point is added only once)."""
        fault = "select mo_ctl('dn','AddFaultPoint','{}')"
        answers = self.sql(fault.format("disable_fault_injection"), fault.format("enable_fault_injection"),
                           fault.format(f"tae: flush timeout.1:{times}::.echo.0.injected by the mobackup tests"))
        assert '"OK"' in answers[0][0], answers


class MatrixOne(SqlClient):
    """One standalone mo-service whose data is `workdir/mo-data`."""

    def __init__(self, home: Path, workdir: Path, version: str, hostname: str | None = None,
                 isolated: bool = False) -> None:
        self.home, self.workdir, self.version = home, workdir, version
        self.isolated = isolated
        self.forwarder: SocketForwarder | None = None
        # The log service keeps its WAL under the host name: `hostname` runs the server in a UTS
        # namespace of its own with that name (bubblewrap), as a StatefulSet pod would have.
        self.hostname = hostname
        self.data_dir = workdir / "mo-data"
        self.log_path = workdir / "mo-service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = ServerLock()
        self.start_seconds: list[float] = []
        if not (workdir / "etc").exists():
            shutil.copytree(home / "etc", workdir / "etc")
        if isolated:
            set_unix_socket(workdir, workdir / "mysql.sock")
            self.forwarder = SocketForwarder(workdir / "mysql.sock")
            self.port = self.forwarder.port

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Starts the server and returns the seconds until SQL answered."""
        assert self.proc is None, "already running"
        if not self.isolated:
            self.lock.acquire()
            wait_ports_free()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            argv = [str(self.home / "mo-service"), "-launch", "etc/launch/launch.toml"]
            if self.hostname or self.isolated:
                unshare = ["--unshare-uts", "--hostname", self.hostname] if self.hostname else []
                unshare += ["--unshare-net"] if self.isolated else []
                argv = ["bwrap", "--die-with-parent", "--bind", "/", "/", "--dev", "/dev", *unshare,
                        "--chdir", str(self.workdir), "--", *argv]
            # As the drill's scratch server: no AWS_* variables (MatrixOne reads its S3 keys from its
            # own configuration, and an inherited AWS_CA_BUNDLE makes 1.3's S3 client panic).
            env = scratch_env()
            self.proc = subprocess.Popen(argv,
                                         cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                         preexec_fn=_terminate_with_parent)
        try:
            seconds = wait_sql(timeout, alive=lambda: self.proc is not None and self.proc.poll() is None,
                               port=self.port)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}; last log lines:\n{self.log_tail()}") from exc
        self.start_seconds.append(seconds)
        return seconds

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM, SIGKILL after `timeout`; waits until the ports are free. Returns the seconds taken."""
        start = time.monotonic()
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.proc = None
            if not self.isolated:
                wait_ports_free()
            with contextlib.suppress(FileNotFoundError):  # MatrixOne listens only where no file is
                (self.workdir / "mysql.sock").unlink()
        self.lock.release()
        return time.monotonic() - start

    def restart(self) -> float:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class SocketForwarder:
    """A loopback TCP port (free, chosen by the kernel) whose connections are piped to a Unix socket:
    how the tests reach a MatrixOne in a network namespace of its own over TCP, as users reach theirs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            try:
                server.connect(str(self.path))
            except OSError:
                client.close()
                server.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def statefulset(name: str, claim: str, home: Path) -> dict[str, Any]:
    """A StatefulSet of one replica running this mo-service on PVC `claim` (mounted at /data, the
    working directory: copy `home/etc` there first; data in /data/mo-data). On the test cluster the
    local node runs the container's command as a process and the pod name is its host name."""
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {
                     "terminationGracePeriodSeconds": 60,
                     "containers": [{"name": "matrixone", "image": "matrixorigin/matrixone:1.3.0",
                                     "command": [str(home / "mo-service")],
                                     "args": ["-launch", "etc/launch/launch.toml"],
                                     "workingDir": "/data",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}}


# ---- the seed's data: databases with one table each, and what a lost or torn row would change
Checksums = dict[str, tuple[int, int, int]]


def create_db(mo: SqlClient, name: str, rows: int, first: int = 1) -> None:
    mo.sql(f"create database {name}",
           f"create table {name}.t (id bigint primary key, v varchar(64), n double)")
    insert_rows(mo, name, first, rows)


def insert_rows(mo: SqlClient, name: str, first: int, count: int) -> None:
    mo.sql(f"insert into {name}.t select result, concat('row-', result, '-', {first}), result * 1.5 "
           f"from generate_series({first}, {first + count - 1}) g")


def user_databases(mo: SqlClient) -> set[str]:
    """The test's databases (db1, db2, ...) that `show databases` lists."""
    return {row[0] for row in mo.sql("show databases") if re.fullmatch(r"db\d+", row[0])}


def checksums(mo: SqlClient, names: list[str]) -> Checksums:
    """Per database: row count, sum of ids and of value lengths."""
    out: Checksums = {}
    for name in names:
        count, ids, lengths = mo.sql(f"select count(*), sum(id), sum(length(v)) from {name}.t")[0]
        out[name] = (int(count), int(ids or 0), int(lengths or 0))
    return out


TXN_ROWS = 100


def writer_rows(mo: SqlClient) -> tuple[int, int, int]:
    """(rows, max id, transactions) of the Writer's table: an exact prefix of whole transactions has
    rows == max id + 1 == TXN_ROWS * transactions. (`count(distinct ...)` fails on larger tables in
    MatrixOne v2.2.2: "distinct agg should be run in only one node", hence the group by.)"""
    count, max_id = mo.sql("select count(*), max(id) from w.t")[0]
    txns = mo.sql("select count(*) from (select txn from w.t group by txn) g")[0][0]
    return int(count), int(max_id if max_id is not None else -1), int(txns)


class Writer:
    """Commits numbered 100-row transactions into w.t (ids 0, 1, 2, ...), without pause unless `pause`
    seconds are asked for. `log` holds each transaction's number with the UTC instants it began and
    returned (a point-in-time restore then knows which must be back)."""

    def __init__(self, pause: float = 0.0, port: int = SQL_PORT) -> None:
        self.port = port
        self.committed = 0  # transactions
        self.errors: list[str] = []
        self.longest_pause = 0.0  # not counting `pause`
        self.pause = pause
        self.log: list[tuple[int, datetime, datetime]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with connect(port=self.port) as conn, conn.cursor() as cur:
            last = time.monotonic()
            while not self._stop.is_set():
                first = self.committed * TXN_ROWS
                began = datetime.now(UTC)
                try:
                    cur.execute(f"insert into w.t select result, {self.committed} from "
                                f"generate_series({first}, {first + TXN_ROWS - 1}) g")
                except pymysql.MySQLError as error:
                    self.errors.append(str(error))
                    return
                self.log.append((self.committed, began, datetime.now(UTC)))
                now = time.monotonic()
                self.longest_pause = max(self.longest_pause, now - last)
                self.committed += 1
                if self.pause:
                    time.sleep(self.pause)
                last = time.monotonic()

    def start(self) -> Writer:
        self._thread.start()
        while self.committed < 5:
            if self.errors or not self._thread.is_alive():
                raise RuntimeError(f"the writer stopped before its fifth transaction: {self.errors}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# Checkpoints every 2 s; the disk cleaner runs every 2 s and may consume checkpoints older than 20 s
# (defaults: 30 min and 1 h), merging checkpoint files as it goes. Appended to etc/launch/tn.toml.
AGGRESSIVE_GC = '''
[tn.Ckp]
incremental-interval = "2s"
global-min-count = 2
min-count = 1

[tn.GCCfg]
gc-ttl = "20s"
scan-gc-interval = "2s"
'''


class Incident:
    """Issue 19's incident on a server with a cluster PITR: db1 (5,000 rows) and db2 (3,000), a
    checkpoint and a pause (MatrixOne 1.3 refused PITR instants in the first seconds of a PITR); a
    Writer with pauses; at `t` + 1.2 s an UPDATE and a DELETE of db1 and DROP TABLE db2.t; three rounds
    of churn (deletes, inserts, a checkpoint), then a global checkpoint. `before`: the checksums of
    db1 and db2 before the accident; `writer`: stopped, with its log."""

    def __init__(self, mo: SqlClient) -> None:
        create_db(mo, "db1", 5000)
        create_db(mo, "db2", 3000)
        mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
        self.before = checksums(mo, ["db1", "db2"])
        mo.checkpoint()
        time.sleep(3)
        # A trickle: MatrixOne 1.3's PITR restore panicked on about 10^5 rows written just before T.
        self.writer = Writer(pause=0.05).start()
        try:
            time.sleep(2)
            self.t = datetime.now(UTC)
            time.sleep(1.2)
            mo.sql("update db1.t set v = 'accident' where id % 3 = 0", "delete from db1.t where id % 5 = 0",
                   "drop table db2.t")
            for i in range(3):
                mo.sql(f"delete from db1.t where id % 7 = {i}",
                       f"insert into db1.t select result, 'churn', 1 from generate_series({10**6 + i * 2000}, "
                       f"{10**6 + i * 2000 + 1999}) g")
                mo.checkpoint()
                time.sleep(1)
            assert '"OK"' in mo.sql("select mo_ctl('dn','globalcheckpoint','')")[0][0]
            time.sleep(1)
        finally:
            self.writer.stop()

    def committed_before(self, instant: datetime) -> int:
        """Transactions that had returned before `instant` (all must be back)."""
        return sum(1 for _, _, ended in self.writer.log if ended < instant)

    def first_begun_after(self, instant: datetime) -> int | None:
        """The first transaction begun after `instant` (it and later ones must not be back)."""
        return next((n for n, began, _ in self.writer.log if began > instant), None)


@pytest.fixture(scope="session")
def mo_install() -> Callable[[str], Path]:
    homes: dict[str, Path] = {}

    def get(version: str = DEFAULT_VERSION) -> Path:
        if version not in homes:
            homes[version] = install(version)
        return homes[version]

    return get


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash[FAILED_KEY] = True
    return report


FAILED_KEY = pytest.StashKey[bool]()


@pytest.fixture
def matrixone_factory(request: pytest.FixtureRequest, mo_install: Callable[[str], Path],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MatrixOne]]:
    servers: list[MatrixOne] = []

    def make(version: str = DEFAULT_VERSION, workdir: Path | None = None, hostname: str | None = None,
             isolated: bool = False) -> MatrixOne:
        workdir = workdir or tmp_path_factory.mktemp(f"mo-{version}")
        server = MatrixOne(mo_install(version), workdir, version, hostname, isolated)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(TEARDOWN_STOP_TIMEOUT)
        if server.forwarder is not None:
            server.forwarder.close()
    if request.node.stash.get(FAILED_KEY, False):
        kept = Path("/tmp/mobackup-test-logs") / request.node.name
        kept.mkdir(parents=True, exist_ok=True)
        for server in servers:
            if server.log_path.exists():
                shutil.copy(server.log_path, kept / f"{server.workdir.name}.log")
        print(f"\nMatrixOne logs kept in {kept}")


@pytest.fixture
def matrixone(matrixone_factory: Callable[..., MatrixOne]) -> MatrixOne:
    return matrixone_factory(DEFAULT_VERSION)
