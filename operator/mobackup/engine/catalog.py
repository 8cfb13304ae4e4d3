"""What a restore drill checks, recorded at backup time: the databases and tables of the account the
backup talked to, and their row counts where counting is cheap enough.

Stored in the summary's `extra["catalog"]` (docs/repository-format.md, section 5.2), never pushed
through a Job's termination message. Reading it never fails a backup: a refusal is recorded as
`{"error": ...}` and the drill then checks only that the server answers.

Row counts are exact for an online backup: they are read at the backup's own timestamp with
MatrixOne's snapshot read (`{MO_TS = <physical>}`), so writes after BACKUP do not change them. For a
cold copy they are read when the backup talks to the server (before the copy), so writes between
that moment and the copy (or the stop) can make them differ: `rows_exact` says which.

A snapshot read is trusted only once it sees the server's own catalog (`mo_catalog.mo_database` is
never empty). MatrixOne's 1.3 line answers a read at exactly the BACKUPTS of the checkpoint that
BACKUP forced with no rows at all, in every table, and one nanosecond later with all of them: the
read then moves to that nanosecond (`rows_at` says so; no transaction commits between the two). When
no such read sees the catalog, the counts are left out rather than recorded wrong.
"""

from __future__ import annotations

import time
from typing import Any

from . import sqlconn
from .model import iso, utc_now
from .sqlconn import pymysql

SYSTEM_DATABASES = frozenset({
    "mo_catalog", "mo_task", "mo_debug", "information_schema", "mysql", "system_metrics", "system",
    "performance_schema", "sys"})  # the last two: MySQL-protocol servers other than MatrixOne
MAX_TABLES = 2000  # a catalog beyond this is truncated (and says so): the summary stays small
COUNT_BUDGET_SECONDS = 60.0  # counting stops here; later tables are recorded without rows
TABLE_TYPES = {"BASE TABLE": "table", "VIEW": "view", "EXTERNAL TABLE": "external", "CLUSTER TABLE": "cluster"}


def quote(name: str) -> str:
    """A MySQL identifier in backticks (a name may hold anything, backticks included)."""
    return "`" + name.replace("`", "``") + "`"


def read_catalog(connection: Any, at_ts: str | None = None, *,
                 count_budget: float = COUNT_BUDGET_SECONDS, max_tables: int = MAX_TABLES) -> dict[str, Any]:
    """{"databases": {db: {table: {"type", "rows"}}}, "rows_exact", "truncated", "taken_at", ...} of
    the connection's account, system databases left out. `at_ts` ("physical-logical"): count rows as
    of that timestamp (an online backup's BACKUPTS)."""
    taken_at = iso(utc_now())
    try:
        with connection.cursor() as cursor:
            cursor.execute("select schema_name from information_schema.schemata")
            databases: dict[str, dict[str, dict[str, Any]]] = {
                str(name): {} for (name,) in cursor.fetchall() if str(name) not in SYSTEM_DATABASES}
            cursor.execute("select table_schema, table_name, table_type from information_schema.tables "
                           "order by table_schema, table_name")
            rows = [r for r in cursor.fetchall() if str(r[0]) in databases and not str(r[1]).startswith("__mo_")]
    except pymysql.MySQLError as error:
        return {"error": str(error.args[-1]), "taken_at": taken_at}
    truncated = len(rows) > max_tables
    snapshot, rows_at, snapshot_error = "", at_ts, None
    if at_ts is not None:
        snapshot, rows_at, snapshot_error = _snapshot_clause(connection, at_ts)
    deadline = time.monotonic() + count_budget
    counted = 0
    for schema, table, kind in rows[:max_tables]:
        entry: dict[str, Any] = {"type": TABLE_TYPES.get(str(kind), str(kind).lower()), "rows": None}
        databases[str(schema)][str(table)] = entry
        if entry["type"] != "table" or snapshot_error or time.monotonic() > deadline:
            continue
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"select count(*) from {quote(str(schema))}.{quote(str(table))}{snapshot}")
                entry["rows"] = int(cursor.fetchone()[0])
                counted += 1
        except pymysql.MySQLError as error:
            entry["error"] = str(error.args[-1])[:200]
    result = {"taken_at": taken_at, "rows_at": rows_at, "rows_exact": bool(snapshot), "truncated": truncated,
              "counted_tables": counted, "databases": databases}
    if snapshot_error:
        result["rows_error"] = snapshot_error
    return result


def _snapshot_clause(connection: Any, at_ts: str) -> tuple[str, str | None, str | None]:
    """(clause, rows_at, error): the snapshot read at `at_ts` ("physical-logical") that sees the
    catalog, trying the physical time and then one nanosecond later (see the module's docstring)."""
    physical = at_ts.partition("-")[0]
    if not physical.isdigit():
        return "", None, f"BACKUPTS {at_ts!r} is not a MatrixOne timestamp"
    for at in (int(physical), int(physical) + 1):
        clause = f" {{MO_TS = {at}}}"
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"select count(*) from mo_catalog.mo_database{clause}")
                if int(cursor.fetchone()[0]) > 0:
                    return clause, at_ts if at == int(physical) else f"{at}-0", None
        except pymysql.MySQLError as error:
            return "", None, f"snapshot read refused: {str(error.args[-1])[:200]}"
    return "", None, "the server's snapshot read at BACKUPTS sees no catalog: row counts not recorded"


def read_catalog_from(endpoint: Any, at_ts: str | None = None) -> dict[str, Any]:
    """read_catalog over a connection of its own to `endpoint` (a mosql.SqlEndpoint)."""
    try:
        connection = sqlconn.connect(
            endpoint.host, endpoint.port, endpoint.user, endpoint.password,
            connect_timeout=endpoint.timeout, read_timeout=max(endpoint.timeout, 120), autocommit=True)
    except pymysql.MySQLError as error:
        return {"error": f"cannot connect: {error.args[-1]}", "taken_at": iso(utc_now())}
    try:
        return read_catalog(connection, at_ts)
    finally:
        connection.close()
