"""The loader container of a scoped MORestore's pod: `python -m mobackup.k8s.scopedload ...`.

It runs beside the scratch MatrixOne (same pod: 127.0.0.1, or the Unix socket the operator's
settings name), which an init container restored the backup into. It checks the request against
the backup's catalog and the live server (reachable, MatrixOne, no target exists unless replace),
waits until the scratch server answers SQL, plans every table (each refusal before the first
write to the live server) and copies them (engine/scoped.py), then writes the outcome as JSON to
its termination message, which the operator reads: {"ok", "reason", "error", "result"}.

Passwords come from the environment, never from arguments: MOBACKUP_INTO_SQL_PASSWORD for the live
server; the scratch server holds the backup's accounts, signed into with the same user and
MOBACKUP_SQL_PASSWORD (the operator sets both from target.sql's Secret).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

MAX_MESSAGE = 3800  # the kubelet keeps 4096 bytes of a termination message
TABLE_KEYS = ("source", "target", "rows", "checksum", "seconds", "rows_seconds", "bytes_sent", "replaced")


def compact(outcome: dict[str, Any]) -> str:
    """The outcome JSON within MAX_MESSAGE: each table's essentials; tables past the limit are counted."""
    result = dict(outcome.get("result") or {})
    tables = [{k: t.get(k) for k in TABLE_KEYS if t.get(k) is not None} for t in result.get("tables") or []]
    result["tables"] = tables
    outcome = {**outcome, "result": result}
    text = json.dumps(outcome, separators=(",", ":"), default=str)
    while len(text) > MAX_MESSAGE and result["tables"]:
        result["tables"] = result["tables"][:-1]
        result["tables_left_out"] = len(tables) - len(result["tables"])
        text = json.dumps(outcome, separators=(",", ":"), default=str)
    if len(text) > MAX_MESSAGE:  # a very long error: cut it, keep the JSON whole
        outcome["error"] = str(outcome.get("error") or "")[:1500]
        result["skipped"] = (result.get("skipped") or [])[:5]
        text = json.dumps(outcome, separators=(",", ":"), default=str)
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scopedload")
    p.add_argument("--repo", required=True)
    p.add_argument("--backup-id", required=True)
    p.add_argument("--only", action="append", default=[], required=True)
    p.add_argument("--as", dest="as_name")
    p.add_argument("--suffix")
    p.add_argument("--replace", action="store_true")
    p.add_argument("--copy-method", choices=("insert", "load"), default="insert")
    p.add_argument("--into-sql-host", required=True)
    p.add_argument("--into-sql-port", type=int, default=6001)
    p.add_argument("--into-sql-user", default="root")
    p.add_argument("--scratch-sql-port", type=int, default=6001)
    p.add_argument("--scratch-socket", help="the scratch MatrixOne's Unix socket (instead of 127.0.0.1:port)")
    p.add_argument("--to-time", help="bring the scratch MatrixOne to this instant (RFC 3339) by its PITR first")
    p.add_argument("--export-dir", help="the pod's own directory the scratch MatrixOne writes its exports into "
                                        "(--copy-method load; engine/scoped_export.py)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--termination-log", default="/dev/termination-log")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from datetime import UTC, datetime
    from pathlib import Path

    import pymysql

    from mobackup.engine import scoped
    from mobackup.engine.drill import sql_connection, wait_for_sql
    from mobackup.engine.errors import MobackupError
    from mobackup.engine.mosql import SqlEndpoint
    from mobackup.engine.pitr_restore import choose_backup, parse_time
    from mobackup.engine.repository import RepositoryOptions, open_repository

    clock = time.monotonic()
    deadline = clock + args.timeout
    result = scoped.ScopedResult(args.backup_id)
    stage = "NotInBackup"
    target: scoped.LiveServer | None = None
    try:
        options = scoped.scoped_options(args.only, args.as_name, args.suffix, args.replace)
        repo = open_repository(RepositoryOptions.from_env(args.repo), create=False)
        summary = repo.load_summary(repo.resolve_id(args.backup_id))
        result.backup_id = summary.id
        to_time = None
        if args.to_time:
            stage = "PointInTimeNotRecoverable"  # the repository's own record must hold the time too
            to_time = parse_time(args.to_time)
            choose_backup([summary], to_time, datetime.now(UTC), summary.id)
            stage = "NotInBackup"
        else:  # the catalog describes backupTS: with a time, the names are checked on the scratch's tables
            options = scoped.check_backup(summary, options)
        stage = "LiveServerUnusable"
        live_password = os.environ.get("MOBACKUP_INTO_SQL_PASSWORD", "")
        target = scoped.LiveServer(SqlEndpoint(args.into_sql_host, args.into_sql_port, args.into_sql_user,
                                               live_password))
        target.method = args.copy_method
        target.open_more(scoped.DEFAULT_CONNECTIONS[args.copy_method] - 1)
        result.live_version = target.version
        stage = "TargetExists"
        if to_time is None:
            scoped.check_targets(target, summary, options)
        stage = "ScratchFailed"
        password = os.environ.get("MOBACKUP_SQL_PASSWORD", live_password)
        started = time.monotonic()
        source = wait_for_sql(args.scratch_sql_port, args.into_sql_user, password, deadline,
                              unix_socket=args.scratch_socket)
        result.start_seconds = round(time.monotonic() - started, 3)
        raw = sql_connection("127.0.0.1", args.scratch_sql_port, args.into_sql_user, password,
                             max(deadline - time.monotonic(), 1.0), args.scratch_socket, conv=scoped.RAW)
        with source, raw:
            if to_time is not None:
                stage = "PointInTimeFailed"
                result.point_in_time = scoped.bring_scratch_to_time(source, summary, to_time)
            stage = "Refused"
            plans = scoped.plan_copies(source, target, options, summary.id, result)
            stage = "CopyFailed"
            scoped.copy_plans(raw, target, plans, options, result,
                              Path(args.export_dir) if args.export_dir else None)
        outcome: dict[str, Any] = {"ok": True}
    except (MobackupError, pymysql.MySQLError, OSError, ValueError, KeyError) as error:
        text = str(error.args[-1]) if isinstance(error, pymysql.MySQLError) and error.args else str(error)
        outcome = {"ok": False, "reason": stage, "error": text}
    finally:
        if target is not None:
            target.close()
    result.total_seconds = round(time.monotonic() - clock, 3)
    return {**outcome, "result": result.to_dict()}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .drillcheck import report

    outcome = run(args)
    report(compact(outcome), args.termination_log)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
