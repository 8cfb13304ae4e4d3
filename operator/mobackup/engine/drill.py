"""Restore drills: prove a backup restorable by restoring it into a scratch directory, starting a
scratch MatrixOne on it, and checking what it serves.

The checks: the server answers SQL (and reports its version); the databases and tables the backup
recorded (`extra["catalog"]`, engine/catalog.py) exist, with the recorded row counts; the user's
queries return the expected values. The scratch directory is removed whatever happens, and the
scratch server is always stopped (SIGTERM to its process group, SIGKILL after a grace period).

MatrixOne's stock standalone configuration binds fixed ports (SQL 6001, log service 32000-32002,
TN 19000-19002, CN 18000-18003). The scratch server therefore runs in a network namespace of its own
(bubblewrap's --unshare-net) whenever this machine allows one: its ports cannot collide with a live
MatrixOne's, and nothing in the restored data (the HAKeeper's addresses, a cold copy's raft
membership) can make it talk to the live one. SQL reaches it over a Unix socket in the scratch
directory (`[cn.frontend] unix-socket`, written into its copy of the launch configuration): the file
system is shared, the network is not. Where no namespace can be made, the drill falls back to the
host's network and refuses to start while any of the fixed ports is in use. A cold copy's log
service data is bound to the host name it was written under (logservice-data/<uuid>/<host>/): when
that differs from this machine's, the scratch server also runs in a UTS namespace with that host
name, as the source pod had.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import sqlconn
from .errors import MobackupError
from .guards import checked_local_dir
from .layout import log_hostnames
from .progress import Progress
from .repository import Repository
from .sqlconn import pymysql
from .walk import remove_tree

MO_PORTS = (6001, 32000, 32001, 32002)
STOP_GRACE_SECONDS = 5.0  # the scratch data is thrown away: no need to wait for a clean shutdown
SQL_POLL_SECONDS = 0.5
LOG_TAIL_LINES = 15
DEFAULT_PASSWORD = "111"  # MatrixOne's initial root password; the restored data keeps the source's


@dataclass(frozen=True)
class UserCheck:
    query: str
    expect: str  # compared with the first column of the first row, as text


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    expected: Any = None
    got: Any = None
    warning: bool = False  # passed, but something differed that cannot be told from a lost write

    def to_dict(self) -> dict[str, Any]:
        # 0 rows is a value: only absent fields (None, "", a False warning flag) are left out
        return {k: v for k, v in asdict(self).items() if k == "ok" or (v is not None and v != "" and v is not False)}


@dataclass
class DrillResult:
    backup_id: str
    ok: bool = False
    reason: str = ""
    backup_kind: str = "cold"
    backup_ts: str = ""
    source: str = ""
    mo_version: str | None = None
    hostname: str | None = None  # the host name the scratch server ran under
    network: str = "host"  # "own namespace" when the scratch server had a network namespace of its own
    restore_seconds: float | None = None
    start_seconds: float | None = None
    check_seconds: float | None = None
    total_seconds: float = 0.0
    restored_bytes: int = 0
    scratch_bytes: int = 0  # disk the scratch directory took at its largest (restored data + server writes)
    checks: list[CheckResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [c.to_dict() for c in self.checks]
        return data

    def fail(self, name: str, reason: str, **kw: Any) -> None:
        self.checks.append(CheckResult(name, False, reason, **kw))
        if not self.reason:
            self.reason = f"{name}: {reason}"


def busy_ports(ports: Sequence[int] = MO_PORTS) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def disk_usage(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def scratch_env() -> dict[str, str]:
    """The caller's environment without its cloud and mobackup secrets: the scratch MatrixOne needs
    none of them. (AWS_CA_BUNDLE alone also makes MatrixOne 1.3's S3 client panic at start.)"""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))}


def netns_available() -> bool:
    """Whether bubblewrap can give a process a network namespace of its own here (root, or
    unprivileged user namespaces); a pod without either cannot, and there ports are the pod's anyway."""
    global _NETNS
    if _NETNS is None:
        bwrap = shutil.which("bwrap")
        try:
            _NETNS = bwrap is not None and subprocess.run(
                [bwrap, "--die-with-parent", "--bind", "/", "/", "--dev", "/dev", "--unshare-net", "--", "true"],
                capture_output=True, timeout=20, env=scratch_env()).returncode == 0
        except (OSError, subprocess.SubprocessError):
            _NETNS = False
    return _NETNS


_NETNS: bool | None = None
SOCKET_NAME = "mysql.sock"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def set_unix_socket(workdir: Path, socket_path: Path) -> None:
    """Make the first CN of the launch configuration in `workdir/etc` listen on `socket_path`: a
    text edit of the CN's TOML, checked by parsing the result (tomllib cannot write)."""
    import re
    import tomllib

    text_path = str(socket_path)
    if any(c in text_path for c in '"\\\n') or len(text_path) > MAX_SOCKET_PATH:
        raise MobackupError(f"{text_path!r}: not usable as the scratch MatrixOne's socket path")
    try:
        launch = tomllib.loads((workdir / "etc" / "launch" / "launch.toml").read_text())
        cn_files = launch.get("cnservices") or []
        if not cn_files or not isinstance(cn_files[0], str):
            raise MobackupError("its launch.toml lists no cnservices")
        cn = (workdir / cn_files[0]).resolve()
        if not cn.is_relative_to((workdir / "etc").resolve()):
            raise MobackupError(f"its CN configuration {cn_files[0]!r} lies outside etc/")
        text = cn.read_text()
        frontend = tomllib.loads(text).get("cn", {}).get("frontend")
        line = f'unix-socket = "{text_path}"'
        if frontend is None:
            text += f"\n[cn.frontend]\n{line}\n"
        elif "unix-socket" in frontend:
            text = re.sub(r"(?m)^[ \t]*unix-socket[ \t]*=.*$", line, text)
        else:
            text = re.sub(r"(?m)^[ \t]*\[[ \t]*cn[ \t]*\.[ \t]*frontend[ \t]*\][ \t]*(#.*)?$",
                          lambda m: m.group(0) + "\n" + line, text, count=1)
        if tomllib.loads(text).get("cn", {}).get("frontend", {}).get("unix-socket") != text_path:
            raise MobackupError(f"cannot set [cn.frontend] unix-socket in {cn.name}")
        cn.write_text(text)
    except (OSError, ValueError) as error:  # tomllib.TOMLDecodeError is a ValueError
        raise MobackupError(f"the scratch MatrixOne's launch configuration: {error}") from None


class ScratchServer:
    """mo-service in `workdir` with the launch configuration copied into `workdir/etc`; with
    `socket_path`, in a network namespace of its own, answering SQL on that Unix socket only."""

    def __init__(self, mo_service: Path, workdir: Path, hostname: str | None,
                 socket_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.mo_service, self.workdir, self.hostname = mo_service, workdir, hostname
        self.socket_path = socket_path
        self.env = env or {}  # on top of scratch_env()
        self.log_path = workdir / "mo-service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapped = False  # started under bubblewrap

    def start(self) -> None:
        argv = [str(self.mo_service), "-launch", "etc/launch/launch.toml"]
        bwrap = shutil.which("bwrap")
        if (self.hostname or self.socket_path) and bwrap is None:
            raise MobackupError(f"the backup's log service data belongs to host {self.hostname!r}: running the "
                                "scratch MatrixOne under that host name needs bubblewrap (bwrap), not found")
        # Under bubblewrap whenever it works here, even without a namespace to make: --die-with-parent
        # takes the server down with us, so a killed mobackup never leaves one holding its ports.
        self.wrapped = bwrap is not None and bool(self.hostname or self.socket_path or netns_available())
        if self.wrapped:
            unshare = ["--unshare-uts", "--hostname", self.hostname] if self.hostname else []
            if self.socket_path:
                unshare.append("--unshare-net")
            argv = [str(bwrap), "--die-with-parent", "--bind", "/", "/", "--dev", "/dev", *unshare,
                    "--chdir", str(self.workdir), "--", *argv]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**scratch_env(), **self.env})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """SIGTERM, SIGKILL after `grace` seconds; True when it exited on SIGTERM (a clean stop)."""
        if self.proc is None:
            return True
        clean = False
        if self.proc.poll() is None:
            if self.wrapped:
                # bwrap dies at once on SIGTERM and its child with it (SIGKILL): only mo-service gets
                # it, and bwrap exits when mo-service has shut down.
                for pid in _group_members(self.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            else:
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
                clean = True
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:  # the leader exited; a child it left behind still holds the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        return clean

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            return ""
        return " | ".join(line[:300] for line in lines)


def _group_members(pgid: int) -> list[int]:
    """The processes of group `pgid` other than its leader (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members



def sql_connection(host: str, port: int, user: str, password: str, timeout: float, unix_socket: str | None = None,
             **options: Any) -> Any:
    return sqlconn.connect(host, port, user, password, autocommit=True, unix_socket=unix_socket,
                           connect_timeout=min(5.0, max(timeout, 0.5)), read_timeout=max(timeout, 1.0), **options)


def _wait_sql(server: ScratchServer, port: int, user: str, password: str, deadline: float) -> Any:
    def gone() -> str | None:
        if server.alive():
            return None
        rc = server.proc.returncode if server.proc else None
        return f"mo-service exited (code {rc}) before it answered SQL; its log: {server.log_tail()}"

    return wait_for_sql(port, user, password, deadline, gone,
                        unix_socket=str(server.socket_path) if server.socket_path else None)


def wait_for_sql(port: int, user: str, password: str, deadline: float,
                 gone: Callable[[], str | None] = lambda: None, host: str = "127.0.0.1",
                 unix_socket: str | None = None) -> Any:
    """A connection once the server answers `select 1` (on `unix_socket` when given); MobackupError
    when `gone()` says why the server is gone, or when the time ran out."""
    last = "no answer"
    while True:
        why = gone()
        if why:
            raise MobackupError(why)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            where = f"socket {unix_socket}" if unix_socket else f"port {port}"
            raise MobackupError(f"the scratch MatrixOne did not answer SQL on {where} within the time limit "
                                f"(last: {last})")
        try:
            connection = sql_connection(host, port, user, password, remaining, unix_socket)
            with connection.cursor() as cursor:
                cursor.execute("select 1")
            return connection
        except pymysql.MySQLError as error:
            last = str(error.args[-1])[:200]
            if error.args and error.args[0] == 1045:  # the server answers, the credentials do not
                raise MobackupError(f"the scratch MatrixOne refused user {user!r}: {last} (the restored data has "
                                    "the source's users: set MOBACKUP_SQL_PASSWORD)") from None
            time.sleep(SQL_POLL_SECONDS)


def _scalar(connection: Any, statement: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(statement)
        row = cursor.fetchone()
        return None if row is None else row[0]


def check_catalog(connection: Any, catalog: dict[str, Any], result: DrillResult) -> None:
    """The recorded databases and tables exist, with the recorded row counts."""
    from .catalog import quote

    if "error" in catalog:
        result.checks.append(CheckResult("catalog", True, f"not recorded at backup time: {catalog['error']}",
                                         warning=True))
        return
    exact = bool(catalog.get("rows_exact"))
    snapshot_note = "" if exact else " (recorded before the cold copy: later writes may explain it)"
    with connection.cursor() as cursor:
        cursor.execute("select schema_name from information_schema.schemata")
        present = {str(r[0]) for r in cursor.fetchall()}
        cursor.execute("select table_schema, table_name from information_schema.tables")
        tables = {(str(r[0]), str(r[1])) for r in cursor.fetchall()}
    databases: dict[str, dict[str, Any]] = catalog.get("databases", {})
    missing_dbs = sorted(set(databases) - present)
    if missing_dbs:
        result.fail("databases", f"{len(missing_dbs)} recorded database(s) missing: {', '.join(missing_dbs[:10])}",
                    expected=sorted(databases), got=sorted(present & set(databases)))
    else:
        result.checks.append(CheckResult("databases", True, f"{len(databases)} recorded database(s) present"))
    missing = sorted(f"{db}.{t}" for db, ts in databases.items() for t in ts if (db, t) not in tables)
    count = sum(len(ts) for ts in databases.values())
    if missing:
        result.fail("tables", f"{len(missing)} of {count} recorded table(s) missing: {', '.join(missing[:10])}")
    else:
        result.checks.append(CheckResult("tables", True, f"{count} recorded table(s) present"))
    for db, ts in sorted(databases.items()):
        for table, entry in sorted(ts.items()):
            rows = entry.get("rows") if isinstance(entry, dict) else None
            if rows is None or (db, table) not in tables:
                continue
            name = f"rows {db}.{table}"
            try:
                got = int(_scalar(connection, f"select count(*) from {quote(db)}.{quote(table)}"))
            except pymysql.MySQLError as error:
                result.fail(name, f"cannot count: {error.args[-1]}", expected=rows)
                continue
            if got == rows:
                result.checks.append(CheckResult(name, True, expected=rows, got=got))
            elif exact:
                result.fail(name, f"expected {rows} rows, got {got}", expected=rows, got=got)
            else:
                result.checks.append(CheckResult(name, True, f"expected {rows} rows, got {got}{snapshot_note}",
                                                 expected=rows, got=got, warning=True))


def run_user_checks(connection: Any, checks: Sequence[UserCheck], result: DrillResult) -> None:
    for number, check in enumerate(checks, 1):
        name = f"query {number}"
        try:
            value = _scalar(connection, check.query)
        except pymysql.MySQLError as error:
            result.fail(name, f"{check.query!r} failed: {error.args[-1]}", expected=check.expect)
            continue
        got = "NULL" if value is None else str(value)
        if got == check.expect:
            result.checks.append(CheckResult(name, True, check.query, expected=check.expect, got=got))
        else:
            result.fail(name, f"{check.query!r}: expected {check.expect!r}, got {got!r}",
                        expected=check.expect, got=got)


def run_checks(connection: Any, catalog: Any, checks: Sequence[UserCheck], result: DrillResult,
               deadline: float, timeout: float) -> None:
    """The checks on a server that answers (closes `connection`); sets result.ok."""
    started = time.monotonic()
    try:
        with connection:
            result.mo_version = str(_scalar(connection, "select version()"))
            result.checks.append(CheckResult("server answers", True, result.mo_version))
            if isinstance(catalog, dict):
                check_catalog(connection, catalog, result)
            run_user_checks(connection, checks, result)
    except pymysql.MySQLError as error:
        result.fail("checks", f"SQL failed: {error.args[-1]}")
    if time.monotonic() > deadline and not result.reason:
        result.fail("time limit", f"the checks finished after the time limit of {timeout:.0f} s")
    result.check_seconds = round(time.monotonic() - started, 3)
    result.ok = not result.reason


def launch_config(mo_service: Path) -> Path:
    etc = mo_service.parent / "etc"
    if not (etc / "launch" / "launch.toml").is_file():
        raise MobackupError(f"no MatrixOne launch configuration {etc}/launch/launch.toml next to {mo_service}")
    return etc


def _ports_refusal(busy: list[int]) -> str:
    return (f"port(s) {', '.join(map(str, busy))} in use: a MatrixOne already runs on this machine (its stock "
            "configuration uses fixed ports), and bubblewrap cannot give the scratch server a network namespace "
            "of its own here; a scratch MatrixOne needs them free")


class Scratch:
    """A backup restored into a fresh scratch directory, with a scratch MatrixOne started on it, for
    the drill and for scoped restores. `close()` stops the server and removes the directory; it is
    always called (use it as a context manager). Setting up (`__init__`) raises MobackupError for
    what makes it impossible: no mo-service, an S3-resident backup, busy ports without a namespace."""

    def __init__(self, repo: Repository, backup_id: str, mo_service: Path, scratch_parent: Path | None,
                 purpose: str = "drill") -> None:
        self.mo_service = Path(mo_service).absolute()
        if not os.access(self.mo_service, os.X_OK):
            raise MobackupError(f"{self.mo_service}: not an executable mo-service")
        self.etc = launch_config(self.mo_service)
        self.repo = repo
        self.summary = repo.load_summary(repo.resolve_id(backup_id))
        if self.summary.extra.get("resident") == "s3":
            raise MobackupError(f"backup {self.summary.id} is of a MatrixOne whose table data lives in S3: a {purpose} "
                                "starts MatrixOne on a local data directory, which cannot hold it; restore it into a "
                                "new cluster's prefix instead (docs/s3-clusters.md)")
        self.isolated = netns_available()
        if not self.isolated and (busy := busy_ports()):
            raise MobackupError(_ports_refusal(busy))
        self.hostname: str | None = None
        self.server: ScratchServer | None = None
        self.bytes_used = 0
        self.socket_path: Path | None = None
        self._socket_dir: Path | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"mobackup-{purpose}-", dir=scratch_parent))
        try:
            # A fresh directory, but where the caller said: never inside (or the root of) the repository.
            checked_local_dir(self.dir, repo, f"use as the {purpose}'s scratch directory")
            shutil.copytree(self.etc, self.dir / "etc")
            if self.isolated:
                self.socket_path = self.dir / SOCKET_NAME
                if len(str(self.socket_path)) > MAX_SOCKET_PATH:  # a deep --scratch-dir: a short private one
                    self._socket_dir = Path(tempfile.mkdtemp(prefix="mobackup-sock-"))
                    self.socket_path = self._socket_dir / SOCKET_NAME
                set_unix_socket(self.dir, self.socket_path)
        except BaseException:
            self.close()
            raise

    def restore(self, progress: Progress | None = None) -> Any:
        """run_restore into `dir/mo-data`."""
        from .restore import run_restore

        return run_restore(self.repo, self.summary.id, self.dir / "mo-data", progress=progress)

    def find_hostname(self) -> None:
        """The host name the server must run under; MobackupError when the restored data holds log
        service data of several hosts."""
        self.hostname = foreign_hostname(self.dir / "mo-data")

    def start(self, user: str, password: str, deadline: float, port: int = 6001) -> Any:
        """Start the server; a connection once it answers SQL."""
        if not self.isolated and (busy := busy_ports()):  # again: the restore took a while
            raise MobackupError(f"port(s) {', '.join(map(str, busy))} became busy during the restore: another "
                                "MatrixOne started on this machine")
        self.server = ScratchServer(self.mo_service, self.dir, self.hostname, self.socket_path)
        self.server.start()
        self.port = port
        return _wait_sql(self.server, port, user, password, deadline)

    def connect(self, user: str, password: str, timeout: float, **options: Any) -> Any:
        """One more connection to the started server (`options` as pymysql's)."""
        return sql_connection("127.0.0.1", self.port, user, password, timeout,
                        str(self.socket_path) if self.socket_path else None, **options)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.bytes_used = max(self.bytes_used, disk_usage(self.dir))
        remove_tree(self.dir, ignore_errors=True)  # a restored tree: no recursion over its depth
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_drill(
    repo: Repository,
    backup_id: str,
    mo_service: Path,
    *,
    checks: Sequence[UserCheck] = (),
    timeout: float = 600.0,
    scratch_parent: Path | None = None,
    sql_user: str = "root",
    sql_password: str | None = None,
    sql_port: int = 6001,
    progress: Progress | None = None,
) -> DrillResult:
    """Restore `backup_id` into a scratch directory, start `mo-service` on it, run the checks, stop it,
    remove the scratch directory. `timeout`: seconds the server has to answer SQL and the checks to
    finish. A failed check, restore or start is in the result (ok false, reason), not raised;
    MobackupError is raised only when the drill cannot be set up (unknown backup, busy ports, ...)."""
    clock = time.monotonic()
    password = sql_password if sql_password is not None else os.environ.get("MOBACKUP_SQL_PASSWORD", DEFAULT_PASSWORD)
    scratch = Scratch(repo, backup_id, mo_service, scratch_parent)
    summary = scratch.summary
    result = DrillResult(summary.id, backup_kind=str(summary.extra.get("kind", "cold")),
                         backup_ts=summary.backup_ts, source=summary.source,
                         network="own namespace" if scratch.isolated else "host")
    try:
        started = time.monotonic()
        try:
            restored = scratch.restore(progress)
        except (MobackupError, OSError) as error:  # a damaged or missing blob, a full scratch disk
            result.fail("restore", str(error))
            return result
        finally:
            result.restore_seconds = round(time.monotonic() - started, 3)
        try:
            scratch.find_hostname()
        except MobackupError as error:
            result.fail("hostname", str(error))
            return result
        result.hostname = scratch.hostname
        result.restored_bytes = restored.size_bytes
        result.checks.append(CheckResult("restore", True, f"{restored.file_count} files, {restored.size_bytes} bytes"))
        started = time.monotonic()
        deadline = started + timeout
        try:
            connection = scratch.start(sql_user, password, deadline, sql_port)
        except MobackupError as error:
            result.start_seconds = round(time.monotonic() - started, 3)
            result.fail("start", str(error))
            return result
        result.start_seconds = round(time.monotonic() - started, 3)
        run_checks(connection, summary.extra.get("catalog"), checks, result, deadline, timeout)
        return result
    finally:
        scratch.close()
        result.scratch_bytes = scratch.bytes_used
        result.total_seconds = round(time.monotonic() - clock, 3)


def foreign_hostname(mo_data: Path) -> str | None:
    """The host name a server on restored `mo_data` must run under (its log service data's), when
    that is not this machine's; MobackupError when the data holds several hosts' logs."""
    hosts = sorted(log_hostnames(
        f"logservice-data/{u.name}/{h.name}" for u in _dirs(mo_data / "logservice-data") for h in _dirs(u)))
    if len(hosts) > 1:
        raise MobackupError(f"the backup holds log service data of several hosts: {', '.join(hosts)}")
    return hosts[0] if hosts and hosts[0] != socket.gethostname() else None


def _dirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
