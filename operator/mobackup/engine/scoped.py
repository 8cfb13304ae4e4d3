"""Scoped restores: one database or table from a backup into the RUNNING MatrixOne, under a new name
by default (`mobackup restore ID --only DB[.TABLE] --into-sql-host H ...`).

The backup is restored into a scratch directory and a scratch MatrixOne is started on it (the
drill's `Scratch`: own network namespace, removed whatever happens). Each selected table is then
copied into the live server over SQL: its schema from the scratch server's `SHOW CREATE TABLE`
under the new name, its rows in multi-row INSERTs of about 1 MB, each its own transaction, so the
live server keeps serving and never holds a long transaction of ours. Or (method "load") by
LOAD DATA LOCAL INFILE, one statement (and transaction) per 16 MB of whole rows: the scratch server
exports the table with SELECT ... INTO OUTFILE into a directory only we can write and the file's
bytes are streamed (engine/scoped_export.py: the format, and how it is split at row ends), no row
parsed in Python; a table with a column the export cannot print exactly (bit) goes as CSV built from
its rows: NULL as \\N, every other value enclosed in double quotes with backslash and double quote
backslash-escaped, all other bytes as they are. The client never opens a file for the server: the
live connection is a sqlconn.StreamingConnection, which answers the server's request for the one
name it was armed with by that batch's bytes and any other request by nothing and an error (a
hostile server cannot ask for a file of ours). Then the same row count and checksum must come back
from both ends.

Rows (method insert) are read as the server's text (pymysql without its type conversions: no
Decimal or datetime is built, which halves the client's work) and sent back as quoted literals the
live server casts to the column's type. The checksum is computed by each server with the same SQL
(engine/scoped_export.py table_checksum): the sum modulo 2**128 of the MD5 of each row's
`serial_full` of every column (MatrixOne's typed tuple encoding, NULL marked), order-independent, so
neither end sorts the table (with the export, the scratch side is summed while the live side loads).

Everything the live server could refuse is checked before the first write to it: the names asked
for exist in the backup (the catalog recorded at backup time first, then the scratch server), no
target exists (unless `replace`), the live server answers and is MatrixOne, the scratch directory's
file system has room for the backup. SHOW CREATE TABLE's text comes from the backup, so it is
untrusted: it must start with the table's own quoted name and hold no statement separator, comment
or foreign key outside its quoted strings (MatrixOne runs several statements sent in one query).

`replace`: the copy goes to a temporary name in the target database, is checked, and only then is
swapped in. MatrixOne 1.3 checks every pair of a multi-table RENAME against the tables as they were
before the statement (`rename table t to t_old, new to t` fails: "table t already exists") and
refuses a RENAME inside a transaction, so the swap is two RENAMEs a moment apart: the old table is
kept as `<table>_replaced_<stamp>` (never dropped by us); a failed check leaves it untouched.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import sqlconn
from .catalog import SYSTEM_DATABASES, quote
from .drill import DEFAULT_PASSWORD, Scratch
from .errors import MobackupError
from .mosql import SqlEndpoint
from .progress import Progress, human_bytes
from .repository import Repository
from .scoped_export import (
    UTC_SESSION,
    export_expressions,
    export_statement,
    load_batches,
    open_export,
    pump,
    put_unless_stopped,
    row_batches,
)
from .scoped_export import table_checksum as table_checksum
from .sqlconn import pymysql

MAX_NAME = 64  # MatrixOne's (and MySQL's) longest identifier
# One INSERT statement (and transaction): about 1 MB of rows, at most half the live server's
# max_allowed_packet. MatrixOne's INSERT path bounds the copy: 200k rows took 10.4-13.7 s in
# batches of 1, 2, 4 or 8 MB alike with a writer running beside (and 8 MB batches made the 1M-row
# benchmark's writer pause up to 4.8 s); the smallest keeps the live server's own writers' pauses
# shortest. A second writing connection copies faster but takes that capacity from them.
BATCH_BYTES = 1 << 20
MIN_BATCH_BYTES = 64 << 10
FETCH_ROWS = 2000
# `load`: the CSV of one LOAD DATA LOCAL statement (and transaction), and the only name a StreamingConnection
# answers a LOAD DATA LOCAL request for (engine/sqlconn.py: no file is ever opened for the server).
LOAD_BATCH_BYTES = 16 << 20
STREAM_NAME = "mobackup-scoped-stream"
LOAD_PACKET = 64 << 10
COPY_METHODS = ("insert", "load")
# Connections to the live server by default: INSERTs over one (MatrixOne's INSERT path bounds them, and
# a second takes capacity from the server's own writers); LOADs over two (one LOAD statement keeps
# MatrixOne busy on fewer cores than it has: 1M rows took 14.7 s over two against 25 s over one, and
# a writer beside them paused at most 1.1 s, as beside the INSERTs; benchmarks/scoped_restore.py).
DEFAULT_CONNECTIONS = {"insert": 1, "load": 2}
RAW: dict[Any, Any] = {}  # pymysql's `conv` for reading the server's text: no conversions
SCRATCH_MARGIN = 512 << 20  # what the scratch MatrixOne writes beside the restored data at start
HIDDEN_PREFIX = "__mo_"  # MatrixOne's hidden tables (secondary indexes): created with their table


@dataclass(frozen=True)
class Selection:
    database: str
    table: str | None = None

    def __str__(self) -> str:
        return self.database if self.table is None else f"{self.database}.{self.table}"


def check_name(name: str, what: str) -> str:
    if not 0 < len(name) <= MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name) or name != name.strip():
        raise MobackupError(f"{what} {name!r}: not a valid name (1-{MAX_NAME} printable characters, no surrounding "
                            "spaces)")
    if name.startswith(HIDDEN_PREFIX):
        raise MobackupError(f"{what} {name!r}: MatrixOne's hidden tables are restored with their table")
    return name


def parse_selection(text: str, what: str = "--only") -> Selection:
    """DB or DB.TABLE (split at the first dot: a database name with a dot cannot be selected)."""
    database, dot, table = text.partition(".")
    check_name(database, f"{what} database")
    if database.lower() in SYSTEM_DATABASES:
        raise MobackupError(f"{what} {text!r}: {database} is a system database")
    return Selection(database, check_name(table, f"{what} table") if dot else None)


@dataclass
class TableCopy:
    source: str
    target: str
    rows: int = 0
    bytes_sent: int = 0  # of the INSERT statements: what went over the wire to the live server
    checksum: str = ""
    seconds: float = 0.0  # all of it: create, rows, check, swap
    rows_seconds: float = 0.0  # the rows' copy alone (what rows_per_second and mb_per_second divide by)
    check_seconds: float = 0.0  # the live copy's count and checksum
    export_seconds: float = 0.0  # method load: the scratch server's SELECT INTO OUTFILE (part of rows_seconds)
    replaced: str | None = None  # with replace: the name the old table is kept under

    @property
    def rows_per_second(self) -> float:
        return round(self.rows / self.rows_seconds, 1) if self.rows_seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return round(self.bytes_sent / 1e6 / self.rows_seconds, 2) if self.rows_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second, "mb_per_second": self.mb_per_second}


@dataclass
class ScopedResult:
    backup_id: str
    live_version: str = ""
    network: str = ""
    restore_seconds: float | None = None
    start_seconds: float | None = None
    copy_seconds: float | None = None
    total_seconds: float = 0.0
    scratch_bytes: int = 0
    tables: list[TableCopy] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # views and other non-tables of a selected database
    # With a time: the scratch brought to it first (PITR name, T, the scratch's time after, seconds).
    point_in_time: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tables"] = [t.to_dict() for t in self.tables]
        return data


@dataclass
class _Plan:
    source: tuple[str, str]
    target: tuple[str, str]
    body: str  # SHOW CREATE TABLE after "CREATE TABLE `name` (", checked
    exists: bool  # the target exists on the live server (replace)


def _outside_quotes(text: str) -> str:
    """`text` with every quoted string and identifier blanked out; MobackupError when one is unterminated."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c not in "'\"`":
            out.append(c)
            i += 1
            continue
        i += 1
        while True:
            if i >= n:
                raise MobackupError("an unterminated quoted string")
            if text[i] == "\\" and c != "`":
                i += 2
                continue
            if text[i] == c:
                if i + 1 < n and text[i + 1] == c:  # a doubled quote stands for itself
                    i += 2
                    continue
                break
            i += 1
        i += 1
        out.append(" ")
    return "".join(out)


def create_statement(name: tuple[str, str], body: str) -> str:
    return f"CREATE TABLE {quote(name[0])}.{quote(name[1])} (" + body


def ddl_body(ddl: str, table: str) -> str:
    """SHOW CREATE TABLE's text for `table`, checked (module docstring), without its head: what follows
    "CREATE TABLE `table` (" (see create_statement)."""
    head = f"CREATE TABLE {quote(table)} ("
    if not ddl.startswith(head):
        raise MobackupError(f"SHOW CREATE TABLE of {table!r} does not start with {head!r}: {ddl[:80]!r}")
    try:
        bare = _outside_quotes(ddl)
    except MobackupError as error:
        raise MobackupError(f"SHOW CREATE TABLE of {table!r}: {error}") from None
    for pattern, why in ((r";", "a statement separator"), (r"/\*|--|#", "a comment"),
                         (r"(?i)\b(foreign\s+key|references)\b", "a foreign key (not supported by scoped restores)"),
                         # A table's own DDL has no query, and no default that acts beyond the row.
                         (r"(?i)\b(select|mo_ctl|load_file|sleep|benchmark|outfile)\b", "a query or a function with "
                          "side effects")):
        if re.search(pattern, bare):
            raise MobackupError(f"SHOW CREATE TABLE of {table!r} holds {why}: refusing to run it on the live server")
    return ddl[len(head):]


def csv_field(value: Any) -> bytes:
    """One value of a LOAD DATA row (module docstring): NULL as \\N, else enclosed in double quotes with
    backslash and double quote escaped by a backslash; every other byte (newlines, NUL, any binary) as
    it is. Exact for every type scoped restores were tested with on MatrixOne 1.3."""
    if value is None:
        return b"\\N"
    data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def load_statement(table: tuple[str, str]) -> str:
    return (f"load data local infile '{STREAM_NAME}' into table {quote(table[0])}.{quote(table[1])} "
            "fields terminated by ',' enclosed by '\"' escaped by '\\\\' lines terminated by '\\n'")


def copy_rows(source: Any, target: Any, src: tuple[str, str], dst: tuple[str, str], copy: TableCopy,
              batch_bytes: int = BATCH_BYTES, more_targets: Sequence[Any] = (), method: str = "insert") -> None:
    """Stream `src`'s rows from the scratch server (`source`: conv=RAW) into `dst` on the live one,
    one statement and transaction a batch: `insert`, multi-row INSERTs (`target`:
    pymysql's default conv, whose escape() knows the server's quoting mode); `load`, LOAD DATA LOCAL of
    CSV streamed from memory (`target`: a sqlconn.StreamingConnection, which sends only the batch it is
    armed with). A thread reads and builds the next batches while this one (and one thread for
    each of `more_targets`, further connections to the live server) sends them. The checksum is the
    caller's (table_checksum, computed by the servers)."""
    statements: queue.Queue[tuple[Any, int] | BaseException | None] = queue.Queue(maxsize=4 + len(more_targets))
    stop = threading.Event()
    errors: list[BaseException] = []
    counting = threading.Lock()

    def put(item: tuple[Any, int] | BaseException | None) -> bool:
        return put_unless_stopped(statements, item, stop)

    def read() -> None:
        try:
            with source.cursor(pymysql.cursors.SSCursor) as reader:
                reader.execute(f"select * from {quote(src[0])}.{quote(src[1])}")
                columns = ", ".join(quote(str(d[0])) for d in reader.description)
                prefix = f"insert into {quote(dst[0])}.{quote(dst[1])} ({columns}) values "

                def batched(batch: list[Any]) -> tuple[Any, int]:
                    if method == "load":
                        return b"".join(batch), len(batch)
                    return prefix + ",".join(batch), len(batch)

                batch: list[Any] = []
                size = 0
                while chunk := reader.fetchmany(FETCH_ROWS):
                    for row in chunk:
                        if method == "load":
                            values: Any = b",".join(map(csv_field, row)) + b"\n"
                        else:
                            values = "(" + ",".join(target.escape(v) for v in row) + ")"
                        batch.append(values)
                        size += len(values)
                        if size >= batch_bytes:
                            if not put(batched(batch)):
                                return
                            batch, size = [], 0
                if batch and not put(batched(batch)):
                    return
            put(None)
        except BaseException as error:  # handed to a writer, which raises it
            put(error)

    def drain(connection: Any) -> None:
        try:
            with connection.cursor() as writer:
                if method == "load":  # MatrixOne 1.3 refuses LOAD DATA without a current database
                    writer.execute(f"use {quote(dst[0])}")
                while not stop.is_set():
                    try:
                        item = statements.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    if item is None:  # the end: left for the other writers too
                        statements.put(None)
                        return
                    if isinstance(item, BaseException):
                        raise item
                    payload, count = item
                    if method == "load":
                        view = memoryview(payload)  # in packets well under the protocol's 16 MB limit
                        connection.stream(STREAM_NAME, (view[i:i + LOAD_PACKET] for i in range(0, len(view),
                                                                                                LOAD_PACKET)))
                        writer.execute(load_statement(dst))
                        sent = len(payload)
                    else:
                        writer.execute(payload)
                        sent = len(payload.encode("utf-8", "surrogateescape"))
                    with counting:
                        copy.rows += count
                        copy.bytes_sent += sent
        except BaseException as error:
            errors.append(error)
            stop.set()

    pump(read, drain, [target, *more_targets], stop, errors, "scoped-restore")


class LiveServer:
    """The running MatrixOne the tables go into."""

    def __init__(self, endpoint: SqlEndpoint) -> None:
        self.endpoint = endpoint
        self.where = f"{endpoint.host}:{endpoint.port}"
        try:
            # Streaming: a LOAD DATA LOCAL (method "load") sends only the batch armed for it, never a file.
            self.connection = sqlconn.connect_streaming(endpoint.host, endpoint.port, endpoint.user,
                                                        endpoint.password, connect_timeout=endpoint.timeout,
                                                        read_timeout=None, autocommit=True)
            self.raw = sqlconn.connect(endpoint.host, endpoint.port, endpoint.user, endpoint.password, conv=RAW,
                                       connect_timeout=endpoint.timeout, read_timeout=None, autocommit=True)
        except pymysql.MySQLError as error:
            raise MobackupError(f"cannot connect to the live MatrixOne at {self.where}: {error.args[-1]}") from None
        self.version = str(self.scalar("select version()"))
        if "matrixone" not in self.version.lower():
            self.close()
            raise MobackupError(f"the server at {self.where} is not MatrixOne (version {self.version!r}): a scoped "
                                "restore copies MatrixOne tables only into MatrixOne")
        try:
            packet = int(self.scalar("select @@max_allowed_packet"))
        except (MobackupError, TypeError, ValueError):
            packet = 4 * MIN_BATCH_BYTES
        self.batch_bytes = max(MIN_BATCH_BYTES, min(BATCH_BYTES, packet // 2))
        self.more: list[Any] = []  # further connections that INSERT in parallel (parallel > 1)
        self.method = "insert"  # or "load" (copy_rows)
        try:  # the names the server will report for what we create (MatrixOne: 1, lower case)
            self.folds_case = str(self.scalar("select @@lower_case_table_names")) == "1"
        except MobackupError:
            self.folds_case = False

    def scalar(self, statement: str, args: Sequence[Any] = ()) -> Any:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(statement, args or None)
                row = cursor.fetchone()
                return None if row is None else row[0]
        except pymysql.MySQLError as error:
            raise MobackupError(f"the live MatrixOne at {self.where}: {error.args[-1]}") from None

    def exists(self, database: str, table: str) -> bool:
        """Compared without case: MatrixOne folds names to lower case (lower_case_table_names = 1), so
        `T` and `t` are one table there; where a server does not, refusing the other case is still safe."""
        return bool(self.scalar("select count(*) from information_schema.tables where lower(table_schema) = "
                                "lower(%s) and lower(table_name) = lower(%s)", (database, table)))

    def open_more(self, count: int) -> None:
        try:
            for _ in range(count):
                self.more.append(sqlconn.connect_streaming(
                    self.endpoint.host, self.endpoint.port, self.endpoint.user, self.endpoint.password,
                    connect_timeout=self.endpoint.timeout, read_timeout=None, autocommit=True))
        except pymysql.MySQLError as error:
            raise MobackupError(f"cannot connect to the live MatrixOne at {self.where}: {error.args[-1]}") from None

    def close(self) -> None:
        self.connection.close()
        for connection in [getattr(self, "raw", None), *getattr(self, "more", [])]:
            if connection is not None:
                connection.close()


def _stamp(now: datetime) -> str:
    """UTC, digits only: MatrixOne would fold a "T...Z" to lower case."""
    return now.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def target_for(source: tuple[str, str], selection: Selection, as_name: Selection | None, suffix: str | None,
               replace: bool, stamp: str) -> tuple[str, str]:
    """Where one table goes: --as (database.table for a one-table selection, or a database where the
    tables keep their names), the same name with --replace, else the table's name plus --suffix or
    `_restored_<stamp>` in its own database."""
    database, table = source
    if as_name is not None:
        return as_name.database, as_name.table if as_name.table is not None else table
    if replace:
        return database, table
    return database, check_name(table + (suffix if suffix is not None else f"_restored_{stamp}"), "target table")


def _listing(tables: Iterable[tuple[str, str]], database: str | None = None) -> str:
    names = sorted(f"{d}.{t}" for d, t in tables if database is None or d == database)
    return ", ".join(names[:50]) + (f" (and {len(names) - 50} more)" if len(names) > 50 else "") or "none"


def _spelled(name: str, names: Iterable[str]) -> str | None:
    """`name` as the backup spells it: the same, else the one name equal but for case (MatrixOne
    folds names to lower case, so `--only Shop.Orders` means shop.orders)."""
    names = set(names)
    if name in names:
        return name
    folded = [n for n in names if n.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _check_in_backup(selections: Sequence[Selection], tables: set[tuple[str, str]], databases: set[str],
                     backup_id: str) -> list[Selection]:
    """The selections as the backup spells them; MobackupError naming what it has for one it lacks."""
    spelled = []
    for sel in selections:
        database = _spelled(sel.database, databases)
        if database is None:
            raise MobackupError(f"backup {backup_id} has no database {sel.database!r}; it has: "
                                f"{', '.join(sorted(databases)) or 'none'}")
        table = None
        if sel.table is not None:
            table = _spelled(sel.table, (t for d, t in tables if d == database))
            if table is None:
                raise MobackupError(f"backup {backup_id} has no table {sel}; database {database} has: "
                                    f"{_listing(tables, database)}")
        spelled.append(Selection(database, table))
    return list(dict.fromkeys(spelled))


def _check_space(parent: Path, summary: Any) -> None:
    free = shutil.disk_usage(parent).free
    needed = scratch_needed(summary)
    if needed > free:
        raise MobackupError(f"{parent}: the scratch MatrixOne needs about {human_bytes(needed)} (the backup's "
                            f"{human_bytes(summary.size_bytes)} and {human_bytes(SCRATCH_MARGIN)} for the server) but "
                            f"its file system has {human_bytes(free)} free; use --scratch-dir elsewhere")


@dataclass(frozen=True)
class ScopedOptions:
    """What to copy and where, checked (`scoped_options`): shared by the CLI and the operator's loader."""

    selections: tuple[Selection, ...]
    as_name: Selection | None
    suffix: str | None
    replace: bool
    stamp: str


def scoped_options(only: Sequence[str], as_name: str | None = None, suffix: str | None = None,
                   replace: bool = False, now: datetime | None = None) -> ScopedOptions:
    selections = tuple(dict.fromkeys(parse_selection(text) for text in only))
    if not selections:
        raise MobackupError("a scoped restore needs --only DB or --only DB.TABLE")
    if as_name is not None and suffix is not None:
        raise MobackupError("--as and --suffix exclude each other")
    target_sel = parse_selection(as_name, "--as") if as_name is not None else None
    if target_sel is not None and len(selections) > 1:
        raise MobackupError("--as names one target: give one --only with it")
    if target_sel is not None and target_sel.table is not None and selections[0].table is None:
        raise MobackupError("--as DB.TABLE needs --only DB.TABLE (for a database, --as names the target database)")
    if suffix is not None:
        check_name("t" + suffix, "--suffix")
    return ScopedOptions(selections, target_sel, suffix, replace, _stamp(now or datetime.now(UTC)))


def _catalog(summary: Any) -> dict[str, Any] | None:
    catalog = summary.extra.get("catalog")
    return catalog if isinstance(catalog, dict) and isinstance(catalog.get("databases"), dict) else None


def check_backup(summary: Any, options: ScopedOptions) -> ScopedOptions:
    """The selections as the backup spells them, from the catalog the backup recorded (when it is whole);
    MobackupError naming what the backup has for a name it lacks."""
    catalog = _catalog(summary)
    if catalog is None or catalog.get("truncated"):
        return options
    recorded = {(str(d), str(t)) for d, ts in catalog["databases"].items() if isinstance(ts, dict) for t in ts}
    spelled = _check_in_backup(options.selections, recorded, {str(d) for d in catalog["databases"]}, summary.id)
    return ScopedOptions(tuple(spelled), options.as_name, options.suffix, options.replace, options.stamp)


def check_targets(target: LiveServer, summary: Any, options: ScopedOptions) -> None:
    """Early: the backup's catalog names the tables before any scratch server starts; none of their
    targets may exist on the live server (unless replace). `_plan` checks again on the scratch's tables."""
    catalog = _catalog(summary)
    if catalog is None or options.replace:
        return
    for sel in options.selections:
        tables = ([sel.table] if sel.table is not None
                  else [t for t, e in catalog["databases"].get(sel.database, {}).items()
                        if isinstance(e, dict) and e.get("type") == "table"])
        for table in tables:
            dst = target_for((sel.database, table), sel, options.as_name, options.suffix, False, options.stamp)
            if target.exists(*dst):
                raise MobackupError(f"{dst[0]}.{dst[1]} exists on the live server: choose another name "
                                    "(--as, --suffix) or pass --replace")


def scratch_needed(summary: Any) -> int:
    """Bytes the scratch MatrixOne needs: the backup's size and room for the server's own files."""
    return int(summary.size_bytes) + SCRATCH_MARGIN


def plan_copies(source: Any, target: LiveServer, options: ScopedOptions, backup_id: str,
                result: ScopedResult) -> list[_Plan]:
    """Every table to copy from the started scratch server (`source`: pymysql's default conv), its
    checked DDL and target: every refusal before the first write to the live server."""
    return _plan(source, target, options.selections, options.as_name, options.suffix, options.replace,
                 options.stamp, backup_id, result.skipped)


def copy_plans(raw: Any, target: LiveServer, plans: Sequence[_Plan], options: ScopedOptions,
               result: ScopedResult, export_dir: Path | None = None) -> None:
    """Copy each planned table from the scratch server (`raw`: a connection with conv=RAW) into the
    live one, appending to `result`; MobackupError says which tables were done before a failure.
    `export_dir`: a directory only we (and the scratch server) can write, which the scratch server
    writes its exports into (method `load`, engine/scoped_export.py); without it, the row path."""
    started = time.monotonic()
    for index, plan in enumerate(plans):
        try:
            result.tables.append(_copy_one(raw, target, plan, options.stamp, export_dir, index))
        except MobackupError as error:
            done = ", ".join(t.target for t in result.tables)
            raise MobackupError(f"{error}" + (f"; restored and checked before it: {done}" if done
                                              else "")) from None
    result.copy_seconds = round(time.monotonic() - started, 3)


def run_scoped_restore(
    repo: Repository,
    backup_id: str | None,
    only: Sequence[str],
    live: SqlEndpoint,
    mo_service: Path,
    *,
    as_name: str | None = None,
    suffix: str | None = None,
    replace: bool = False,
    scratch_parent: Path | None = None,
    scratch_user: str = "root",
    scratch_password: str | None = None,
    timeout: float = 600.0,
    parallel: int | None = None,
    method: str = "insert",
    progress: Progress | None = None,
    now: datetime | None = None,
    to_time: datetime | None = None,
) -> ScopedResult:
    """Copy the selected tables of `backup_id` into the live MatrixOne (module docstring). Raises
    MobackupError for a refusal (before anything is written to the live server) or a failed copy
    (the message says what was done). `parallel`: connections that INSERT (or LOAD) at once (the
    copy goes faster where the live server has idle capacity, and takes it from its own users;
    default DEFAULT_CONNECTIONS). `to_time`:
    the tables as they were at that instant: the backup whose recoverable interval holds it (or
    `backup_id`'s, checked) is restored, and the scratch server brought to it by its PITR
    (engine/pitr_restore.py) before the copy; the names are then checked on the scratch's tables
    only, since the backup's catalog describes BACKUPTS, not the instant."""
    clock = time.monotonic()
    options = scoped_options(only, as_name, suffix, replace, now)
    if to_time is None:
        summary = repo.load_summary(repo.resolve_id(backup_id))
    else:
        from .pitr_restore import choose_backup

        summary, _ = choose_backup(repo.list_backups(), to_time, datetime.now(UTC),
                                   repo.resolve_id(backup_id) if backup_id else None)
    result = ScopedResult(summary.id)
    if to_time is None:
        options = check_backup(summary, options)
    parent = Path(scratch_parent) if scratch_parent else Path(tempfile.gettempdir())
    _check_space(parent, summary)
    if method not in COPY_METHODS:
        raise MobackupError(f"copy method {method!r}: use one of {', '.join(COPY_METHODS)}")
    target = LiveServer(live)
    target.method = method
    result.live_version = target.version
    try:
        target.open_more(max(0, (parallel or DEFAULT_CONNECTIONS[method]) - 1))
        if to_time is None:
            check_targets(target, summary, options)
        password = scratch_password if scratch_password is not None else os.environ.get(
            "MOBACKUP_SQL_PASSWORD", DEFAULT_PASSWORD)
        with Scratch(repo, summary.id, mo_service, scratch_parent, purpose="scoped") as scratch:
            result.network = "own namespace" if scratch.isolated else "host"
            started = time.monotonic()
            try:
                scratch.restore(progress)
                scratch.find_hostname()
            finally:
                result.restore_seconds = round(time.monotonic() - started, 3)
            started = time.monotonic()
            try:
                source = scratch.start(scratch_user, password, time.monotonic() + timeout)
            finally:
                result.start_seconds = round(time.monotonic() - started, 3)
            with source:
                if to_time is not None:
                    result.point_in_time = bring_scratch_to_time(source, summary, to_time)
                export_dir = scratch.dir / "export"  # in the scratch's own directory (mode 0700)
                export_dir.mkdir(mode=0o700)
                with scratch.connect(scratch_user, password, timeout, conv=RAW) as raw:
                    copy_plans(raw, target, plan_copies(source, target, options, summary.id, result),
                               options, result, export_dir)
        result.scratch_bytes = scratch.bytes_used  # measured by close()
    finally:
        target.close()
        result.total_seconds = round(time.monotonic() - clock, 3)
    return result


def bring_scratch_to_time(connection: Any, summary: Any, t: datetime) -> dict[str, Any]:
    """RESTORE CLUSTER FROM PITR on the scratch server (never the live one) to `t`."""
    from .model import iso
    from .pitr_restore import PitrRestoreResult, bring_to_time

    done = PitrRestoreResult(summary.id, "scratch", iso(t), summary.backup_ts, None, "")
    bring_to_time(connection, t, done)
    return {"to_time": done.to_time, "pitr": done.pitr, "server_time": done.server_time,
            "pitr_seconds": done.pitr_seconds}


def _plan(source: Any, target: LiveServer, selections: Sequence[Selection], target_sel: Selection | None,
          suffix: str | None, replace: bool, stamp: str, backup_id: str, skipped: list[str]) -> list[_Plan]:
    """Every table to copy, its checked DDL and target; every refusal before the first write. The
    views (and other non-tables) of a selected database go to `skipped`."""
    with source.cursor() as cursor:
        cursor.execute("select table_schema, table_name, table_type from information_schema.tables")
        listed = [(str(d), str(t), str(k)) for d, t, k in cursor.fetchall()
                  if str(d) not in SYSTEM_DATABASES and not str(t).startswith(HIDDEN_PREFIX)]
        cursor.execute("select schema_name from information_schema.schemata")
        databases = {str(r[0]) for r in cursor.fetchall()} - SYSTEM_DATABASES
    tables = {(d, t) for d, t, _ in listed}
    selections = _check_in_backup(selections, tables, databases, backup_id)
    base = {(d, t) for d, t, k in listed if k == "BASE TABLE"}
    plans: list[_Plan] = []
    seen: set[tuple[str, str]] = set()
    for sel in selections:
        if sel.table is not None and (sel.database, sel.table) not in base:
            raise MobackupError(f"{sel} is not a table in backup {backup_id} (a view or another kind): only tables "
                                "are restored")
        names = [sel.table] if sel.table is not None else sorted(t for d, t in base if d == sel.database)
        if sel.table is None:
            skipped.extend(sorted(f"{d}.{t} ({k.lower()})" for d, t, k in listed
                                  if d == sel.database and (d, t) not in base))
        for table in names:
            dst = target_for((sel.database, table), sel, target_sel, suffix, replace, stamp)
            if target.folds_case:
                dst = (dst[0].lower(), dst[1].lower())
            if dst in seen:
                raise MobackupError(f"two selected tables would both go to {dst[0]}.{dst[1]}")
            seen.add(dst)
            exists = target.exists(*dst)
            if exists and not replace:
                raise MobackupError(f"{dst[0]}.{dst[1]} exists on the live server: choose another name (--as, "
                                    "--suffix) or pass --replace")
            with source.cursor() as cursor:
                cursor.execute(f"show create table {quote(sel.database)}.{quote(table)}")
                row = cursor.fetchone()
            if not row or len(row) < 2 or not isinstance(row[1], str):
                raise MobackupError(f"SHOW CREATE TABLE of {sel.database}.{table} answered nothing usable")
            plans.append(_Plan((sel.database, table), dst, ddl_body(row[1], table), exists))
            if exists and target.exists(dst[0], _aside(dst[1], "mobackup", stamp)):
                raise MobackupError(f"{dst[0]}.{_aside(dst[1], 'mobackup', stamp)} exists on the live server")
    if not plans:
        raise MobackupError(f"the selection ({', '.join(map(str, selections))}) holds no table in backup {backup_id}")
    return plans


def _aside(table: str, word: str, stamp: str) -> str:
    return f"{table}_{word}_{stamp}"[:MAX_NAME]


def _copy_one(source: Any, target: LiveServer, plan: _Plan, stamp: str, export_dir: Path | None = None,
              index: int = 0) -> TableCopy:
    database, table = plan.target
    copy = TableCopy(f"{plan.source[0]}.{plan.source[1]}", f"{database}.{table}")
    started = time.monotonic()
    into = (database, _aside(table, "mobackup", stamp)) if plan.exists else plan.target
    conn = target.connection
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"create database if not exists {quote(database)}")
            cursor.execute(create_statement(into, plan.body))
    except pymysql.MySQLError as error:
        raise MobackupError(f"the live MatrixOne refused to create {into[0]}.{into[1]}: {error.args[-1]}") from None
    try:
        clock = time.monotonic()
        expressions = (export_expressions(source, *plan.source)
                       if target.method == "load" and export_dir is not None else None)
        if expressions is not None:
            expected = _export_and_load(source, target, plan.source, into, expressions, export_dir, index, copy)
        else:
            expected = table_checksum(source, *plan.source)
            copy_rows(source, conn, plan.source, into, copy,
                      LOAD_BATCH_BYTES if target.method == "load" else target.batch_bytes, target.more, target.method)
        copy.checksum = expected[1]
        copy.rows_seconds = round(time.monotonic() - clock, 3)
        clock = time.monotonic()
        rows, checksum = table_checksum(target.raw, *into)
        copy.check_seconds = round(time.monotonic() - clock, 3)
    except BaseException as error:  # an interrupted copy too: no partial table stays behind
        _drop(target, into)
        if isinstance(error, pymysql.MySQLError):
            raise MobackupError(f"copying {copy.source} into {into[0]}.{into[1]} failed after {copy.rows} rows: "
                                f"{error.args[-1]} (the partial copy is dropped)") from None
        raise
    if (rows, checksum) != expected:
        _drop(target, into)
        raise MobackupError(f"the copy of {copy.source} in {into[0]}.{into[1]} does not match the backup: {rows} rows "
                            f"checksum {checksum[:16]}..., the backup {expected[0]} rows checksum "
                            f"{expected[1][:16]}... (the copy is dropped; nothing was replaced)")
    if plan.exists:
        copy.replaced = f"{database}.{_aside(table, 'replaced', stamp)}"
        _swap(conn, database, table, into[1], _aside(table, "replaced", stamp))
    copy.seconds = round(time.monotonic() - started, 3)
    return copy


def _export_and_load(source: Any, target: LiveServer, src: tuple[str, str], dst: tuple[str, str],
                     expressions: Sequence[str], export_dir: Path, index: int, copy: TableCopy) -> tuple[int, str]:
    """Method `load` by export (engine/scoped_export.py): the scratch server writes the table into
    `export_dir`, its bytes go to the live server by LOAD DATA LOCAL while the scratch server computes
    the checksum; returns that (rows, checksum). The file is removed whatever happens."""
    name = f"table-{index}.csv"
    directory = os.open(export_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        clock = time.monotonic()
        with source.cursor() as cursor:
            cursor.execute(UTC_SESSION)
            cursor.execute(export_statement(*src, expressions, str(Path(export_dir) / name)))
        copy.export_seconds = round(time.monotonic() - clock, 3)
        fd = open_export(directory, name)
        expected: list[tuple[int, str]] = []
        failed: list[BaseException] = []

        def check() -> None:
            try:
                expected.append(table_checksum(source, *src))
            except BaseException as error:
                failed.append(error)

        checker = threading.Thread(target=check, name="scoped-source-checksum", daemon=True)
        checker.start()
        counting = threading.Lock()

        def counted(rows: int, sent: int) -> None:
            with counting:
                copy.rows += rows
                copy.bytes_sent += sent

        try:
            connections = [target.connection, *target.more]
            for connection in connections:
                with connection.cursor() as cursor:
                    cursor.execute(UTC_SESSION)
            load_batches(row_batches(fd, LOAD_BATCH_BYTES), connections, dst, STREAM_NAME, counted)
        finally:
            os.close(fd)
            checker.join()
        if failed:
            raise failed[0]
        return expected[0]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=directory)
        os.close(directory)


def _drop(target: LiveServer, name: tuple[str, str]) -> None:
    """Drop our own copy; over the second connection when the first broke off mid-statement. The
    error that brought us here is the one to report."""
    for conn in (target.connection, target.raw):
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"drop table if exists {quote(name[0])}.{quote(name[1])}")
            return
        except (pymysql.MySQLError, OSError):
            continue


def _swap(conn: Any, database: str, table: str, new: str, aside: str) -> None:
    """Old `table` to `aside`, `new` to `table` (module docstring: two RENAMEs on MatrixOne 1.3)."""
    db = quote(database)
    with conn.cursor() as cursor:
        try:
            cursor.execute(f"rename table {db}.{quote(table)} to {db}.{quote(aside)}")
        except pymysql.MySQLError as error:
            raise MobackupError(f"cannot move {database}.{table} aside to {aside}: {error.args[-1]} (the checked copy "
                                f"is kept as {database}.{new})") from None
        try:
            cursor.execute(f"rename table {db}.{quote(new)} to {db}.{quote(table)}")
        except pymysql.MySQLError as error:
            with contextlib.suppress(pymysql.MySQLError):
                cursor.execute(f"rename table {db}.{quote(aside)} to {db}.{quote(table)}")
            raise MobackupError(f"cannot rename the checked copy {database}.{new} to {table}: {error.args[-1]} (the "
                                "old table is back under its name)") from None
