"""Point-in-time recovery in the CLI: `backup --pitr-window` (and the PITR windows every backup with
SQL records), the recoverable intervals `list`/`show` print, and `restore --to-time`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..engine.errors import MobackupError
from ..engine.model import BackupSummary
from ..engine.text import printable
from .common import emit, repository_options, target_places


def backup_record(args: argparse.Namespace, connection: Any, *, history: bool,
                  source: str | None = None) -> dict[str, Any]:
    """`extra["pitr"]` of a backup that talks to MatrixOne: with --pitr-window, first a cluster PITR
    of at least that range (engine/pitr.py prepare); then the windows present. `source`: the name
    the PITR is made after (default --source, else the data directory's)."""
    from ..engine.backup import default_source
    from ..engine.pitr import prepare

    window = args.pitr_window.total_seconds() if args.pitr_window is not None else None
    source = (source or args.source or default_source(Path(args.data_dir))) if window is not None else ""
    return prepare(connection, source=source, window_seconds=window, history=history)


def cold_record(args: argparse.Namespace, endpoint: Any) -> dict[str, Any]:
    """backup_record over a session of its own; a server without PITR (or SHOW PITR) is recorded as
    such and fails the backup only when --pitr-window asked for a window."""
    from ..engine.mosql import connect

    connection = connect(endpoint)
    try:
        return backup_record(args, connection, history=True)
    finally:
        connection.close()


def check_backup_flags(args: argparse.Namespace) -> None:
    if args.pitr_window is None:
        return
    if args.pitr_window.total_seconds() <= 0:
        raise MobackupError("--pitr-window must be positive")
    if args.staging and not args.shared_s3:
        raise MobackupError("--pitr-window with --staging (table data in S3) needs --shared-s3 (the cluster's SHARED "
                            "key prefix, where the PITR history is): MatrixOne's BACKUP output alone carries none")
    if not args.sql_host:
        raise MobackupError("--pitr-window needs --sql-host (the PITR is made over SQL before the backup)")


def with_interval(summary: BackupSummary) -> dict[str, Any]:
    from ..engine.pitr import interval_fields

    return {**summary.to_dict(), **interval_fields(summary)}


def interval_lines(summaries: list[BackupSummary]) -> list[str]:
    """Below the list table (its columns stay mo_br's): each backup's recoverable interval."""
    from ..engine.pitr import interval

    lines = []
    for summary in summaries:
        span = interval(summary)
        if span is not None:
            lines.append(printable(f"{summary.id}: recoverable to any instant of [{span[0].isoformat()}, "
                                   f"{span[1].isoformat()}]"))
    return lines


def restore_to_time(args: argparse.Namespace) -> int:
    from ..engine.drill import UserCheck
    from ..engine.pitr_restore import parse_time, run_restore_to_time
    from ..engine.progress import for_terminal
    from ..engine.repository import open_repository

    if args.target_s3:
        return _restore_s3_to_time(args)
    if args.sql_host:
        raise MobackupError("--sql-host goes with --to-time --target-s3 (a cluster whose table data is in S3)")
    if not args.target or not args.mo_service:
        raise MobackupError("restore --to-time needs --target DIR and --mo-service PATH (MatrixOne is started on "
                            "the restored data to run the PITR restore), or --target-s3 and --sql-host")
    if len(args.check_sql) != len(args.expect):
        raise MobackupError("each --check-sql needs one --expect (the value its first column must have)")
    t = parse_time(args.to_time)  # before the repository is opened
    repo = open_repository(repository_options(args))
    result = run_restore_to_time(
        repo, t, Path(args.target), Path(args.mo_service), backup_id=args.id, force=args.force,
        checks=[UserCheck(q, e) for q, e in zip(args.check_sql, args.expect, strict=True)], timeout=args.timeout,
        sql_user=args.sql_user, progress=for_terminal("restore", args.quiet or args.json), hostname=args.hostname)
    emit(args, result.to_dict(),
         f"restored backup {result.backup_id} into {result.target} and brought it to {result.to_time} with PITR "
         f"{result.pitr} (server time after: {result.server_time}; restore {result.restore_seconds}s, start "
         f"{result.start_seconds}s, PITR {result.pitr_seconds}s, total {result.total_seconds}s)")
    return 0



def _restore_s3_to_time(args: argparse.Namespace) -> int:
    """`restore --to-time T --target-s3 URL --sql-host H`: the covering S3-resident backup's objects
    (its PITR history with them) into the prefix, then, once the cluster started on them answers at
    H, RESTORE CLUSTER FROM PITR there (engine/pitr_restore.py run_restore_to_time_s3)."""
    import sys

    from ..engine.mosql import SqlEndpoint
    from ..engine.pitr_restore import parse_time, run_restore_to_time_s3
    from ..engine.progress import for_terminal
    from ..engine.repository import open_repository
    from ..engine.s3_restore import check_restore_options

    if not args.sql_host:
        raise MobackupError("restore --to-time --target-s3 needs --sql-host: the cluster is started on the restored "
                            "objects, and the PITR restore runs there")
    if args.target or args.force or args.hostname or args.mo_service or args.shard or args.finalize:
        raise MobackupError("--to-time --target-s3 restores in one step into a bucket prefix: --target, --force, "
                            "--hostname, --mo-service, --shard and --finalize do not apply")
    if args.check_sql or args.expect:
        raise MobackupError("--check-sql and --expect go with --to-time --target DIR")
    check_restore_options("all", local_fs_dir=args.local_fs_dir, reset_local_fs=args.reset_local_fs,
                          hk_data_s3=args.hk_data_s3)
    t = parse_time(args.to_time)  # before the repository is opened
    target, hk_data_s3 = target_places(args)
    endpoint = SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, None)
    repo = open_repository(repository_options(args))

    def restored(objects: Any) -> None:  # the cue to start the cluster (a script may wait for this line)
        print(f"restored backup {objects.backup_id} into {objects.target} ({objects.file_count} objects); waiting "
              f"up to {args.timeout} s for MatrixOne at {args.sql_host}:{args.sql_port}", file=sys.stderr, flush=True)

    result = run_restore_to_time_s3(
        repo, t, target, endpoint, backup_id=args.id, overwrite=args.overwrite,
        local_fs_dir=Path(args.local_fs_dir) if args.local_fs_dir else None, reset_local_fs=args.reset_local_fs,
        hk_data_s3=hk_data_s3, timeout=args.timeout, progress=for_terminal("restore", args.quiet or args.json),
        restored=restored)
    emit(args, result.to_dict(),
         f"restored backup {result.backup_id} into {result.target} and brought the cluster to {result.to_time} with "
         f"PITR {result.pitr} (server time after: {result.server_time}; restore {result.restore_seconds}s, PITR "
         f"{result.pitr_seconds}s, total {result.total_seconds}s)")
    return 0
