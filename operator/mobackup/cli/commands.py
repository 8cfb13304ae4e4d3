"""The `mobackup` commands (backup, list, show, restore, verify, delete, prune, drill, demo; those of
S3-resident clusters in s3.py), each taking the parsed arguments and returning the exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..engine.errors import MobackupError
from ..engine.progress import for_terminal
from ..engine.repository import Repository, open_repository
from ..engine.text import printable
from ..table import backup_table, decimal_size
from . import pitr, repos, s3
from .common import emit, repository_options, retention_policy, warn, warn_backup_retries


def cmd_init(args: argparse.Namespace) -> int:
    repo = Repository.create(repository_options(args, compression=args.compression, lock_days=args.lock_days,
                                                 lock_mode=args.lock_mode))
    emit(args, {"location": repo.location, **repo.config}, f"created repository {repo.location}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from ..engine.backup import run_backup
    from ..engine.layout import PathRules

    s3.check_backup_flags(args)
    pitr.check_backup_flags(args)
    if args.online:
        return _online_backup(args)
    if args.server_data_dir:
        raise MobackupError("--server-data-dir is for --online backups")
    mo_version, extra = None, {}
    if args.sql_host:
        from ..engine.catalog import read_catalog_from
        from ..engine.mosql import SqlEndpoint, prepare_backup

        endpoint = SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, args.sql_database)
        mo_version = prepare_backup(endpoint)
        extra["catalog"] = read_catalog_from(endpoint)  # what a restore drill checks
        extra["pitr"] = pitr.cold_record(args, endpoint)  # a copy of the whole directory holds the history
    if not Path(args.data_dir).is_dir():  # before the repository is created
        raise MobackupError(f"{args.data_dir}: not a directory (nothing was created)")
    repo = open_repository(repository_options(args, compression=args.compression), create=True)
    summary = run_backup(
        repo, Path(args.data_dir), source=args.source, backup_type=args.type, base_id=args.base,
        progress=for_terminal("backup", args.quiet or args.json), rules=PathRules(extra_excludes=tuple(args.exclude)),
        mo_version=mo_version, check_existing=args.check_existing, extra=extra,
    )
    if summary.skipped_count:  # never silent: FIFOs, sockets and devices are not copied
        shown = ", ".join(f"{s['path']} ({s['type']})" for s in summary.skipped[:5])
        more = f" and {summary.skipped_count - 5} more" if summary.skipped_count > 5 else ""
        warn(f"warning: skipped {summary.skipped_count} special file(s), not data: {shown}{more}")
    emit(args, pitr.with_interval(summary),
          f"Backup ID {summary.id} ({summary.type}, {decimal_size(summary.size_bytes)} in {summary.file_count} "
          f"files, {decimal_size(summary.new_bytes)} new, BACKUPTS {summary.backup_ts}, "
          f"{summary.duration_seconds:.3f}s)")
    return 0


def _online_backup(args: argparse.Namespace) -> int:
    if args.staging:  # S3-resident data: MatrixOne stages into a bucket, no data directory
        return s3.online_s3_backup(args)  # (an ingest shard needs no SQL: pymysql is not imported)
    from ..engine.mosql import MatrixOneSession, SqlEndpoint
    from ..engine.online import run_online_backup
    if not args.sql_host:
        raise MobackupError("--online needs --sql-host (MatrixOne runs the backup; password in MOBACKUP_SQL_PASSWORD)")
    if args.exclude:
        raise MobackupError("--exclude does not apply to --online backups (MatrixOne chooses the files)")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise MobackupError(f"{data_dir}: not a directory (the data volume MatrixOne runs on)")
    with MatrixOneSession(SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, args.sql_database)) as mo:
        extra = {"pitr": pitr.backup_record(args, mo.connection, history=False)}
        repo = open_repository(repository_options(args, compression=args.compression), create=True)
        summary = run_online_backup(
            repo, data_dir, mo, server_data_dir=args.server_data_dir, source=args.source, backup_type=args.type,
            base_id=args.base, progress=for_terminal("backup", args.quiet or args.json), extra=extra,
            pitr_history=False if args.without_pitr_history else None)
    warn_backup_retries(summary.extra.get("backup_retries", []))
    emit(args, pitr.with_interval(summary),
          f"Backup ID {summary.id} (online {summary.type}, {decimal_size(summary.size_bytes)} in "
          f"{summary.file_count} files, {decimal_size(summary.new_bytes)} new, "
          f"{decimal_size(summary.extra.get('staged_bytes', 0))} staged, BACKUPTS {summary.backup_ts}, "
          f"{summary.duration_seconds:.3f}s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    repo = open_repository(repository_options(args))
    damaged: dict[str, str] = {}
    summaries = [s for s in repo.list_backups(damaged=damaged) if not args.source or s.source == args.source]
    for problem in damaged.values():
        warn(f"warning: {problem}")
    # A damaged backup is listed as such (its source is unknown, so whatever --source says), after
    # the good ones, which it never hides.
    rows = [{"id": backup_id, "damaged": True, "problem": problem} for backup_id, problem in sorted(damaged.items())]
    text = "\n".join([backup_table(summaries), *(printable(f"{r['id']} | DAMAGED: {r['problem']}") for r in rows),
                      *pitr.interval_lines(summaries)])
    emit(args, [*(pitr.with_interval(s) for s in summaries), *rows], text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    repo = open_repository(repository_options(args))
    summary = repo.load_summary(repo.resolve_id(args.id))
    data = pitr.with_interval(summary)
    dependents = [s.id for s in repo.list_backups() if s.base_id == summary.id]
    data["dependents"] = dependents
    text = "\n".join(printable(f"{k:<18} {v}") for k, v in data.items() if k != "extra")
    emit(args, data, text)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ..engine.restore import run_restore

    if args.only or args.into_sql_host:
        if not args.id and not args.to_time:
            raise MobackupError("restore --only needs a backup ID or --to-time")
        return cmd_scoped_restore(args)
    if args.to_time:
        return pitr.restore_to_time(args)
    if args.mo_service or args.check_sql or args.expect:
        raise MobackupError("--mo-service, --check-sql and --expect go with --to-time (or --only)")
    if not args.id:
        raise MobackupError("restore needs a backup ID (or --to-time T)")
    if args.target_s3:
        return s3.restore_s3(args)
    if not args.target:
        raise MobackupError("restore needs --target DIR (or --target-s3 s3://BUCKET/PREFIX for S3-resident data)")
    if (args.overwrite or args.local_fs_dir or args.check_stopped or args.shard or args.finalize
            or args.reset_local_fs or args.hk_data_s3):
        raise MobackupError("--overwrite, --local-fs-dir, --reset-local-fs, --hk-data-s3, --check-stopped, --shard and "
                            "--finalize go with --target-s3 (use --force with --target)")
    repo = open_repository(repository_options(args))
    result = run_restore(repo, args.id, Path(args.target), force=args.force, hostname=args.hostname,
                         progress=for_terminal("restore", args.quiet or args.json))
    emit(args, result.to_dict(),
          f"restored backup {result.backup_id} into {result.target}: {result.file_count} files, "
          f"{decimal_size(result.size_bytes)}, {result.duration_seconds:.3f}s")
    return 0


def cmd_scoped_restore(args: argparse.Namespace) -> int:
    from ..engine.mosql import SqlEndpoint
    from ..engine.scoped import run_scoped_restore

    if not (args.only and args.into_sql_host and args.mo_service):
        raise MobackupError("a scoped restore needs --only DB[.TABLE], --into-sql-host and --mo-service")
    if args.target or args.target_s3 or args.force or args.hostname:
        raise MobackupError("--only copies tables into a running MatrixOne: --target, --target-s3, --force and "
                            "--hostname do not apply")
    to_time = None
    if args.to_time:
        from ..engine.pitr_restore import parse_time

        to_time = parse_time(args.to_time)  # before the repository is opened
    repo = open_repository(repository_options(args))
    live = SqlEndpoint(args.into_sql_host, args.into_sql_port, args.into_sql_user,
                       os.environ.get("MOBACKUP_INTO_SQL_PASSWORD", ""))
    result = run_scoped_restore(repo, args.id, args.only, live, Path(args.mo_service), as_name=args.as_name,
                                suffix=args.suffix, replace=args.replace,
                                scratch_parent=Path(args.scratch_dir) if args.scratch_dir else None,
                                scratch_user=args.sql_user, timeout=args.timeout,
                                parallel=args.insert_connections, method=args.copy_method,
                                progress=for_terminal("restore", args.quiet or args.json), to_time=to_time)
    lines = [f"{t.source} -> {t.target}: {t.rows} rows, {decimal_size(t.bytes_sent)} in {t.rows_seconds}s "
             f"({t.rows_per_second:.0f} rows/s, {t.mb_per_second} MB/s), count and checksum {t.checksum[:16]} match "
             f"({t.check_seconds}s), {t.seconds}s in all"
             + (f"; the old table is kept as {t.replaced}" if t.replaced else "") for t in result.tables]
    if result.skipped:
        lines.append(f"not restored (only tables are): {', '.join(result.skipped)}")
    lines.append(f"restored {len(result.tables)} table(s) of backup {result.backup_id} into {args.into_sql_host}: "
                 f"scratch restore {result.restore_seconds}s, start {result.start_seconds}s, copy "
                 f"{result.copy_seconds}s, total {result.total_seconds}s")
    emit(args, result.to_dict(), "\n".join(printable(line) for line in lines))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..engine.verify import verify_backup

    if args.repair != bool(args.data_dir):
        raise MobackupError("--repair and --data-dir go together: the data directory is where blobs are repaired from")
    repo = open_repository(repository_options(args))
    result = verify_backup(repo, args.id, quick=args.quick, progress=for_terminal("verify", args.quiet or args.json),
                           repair_from=Path(args.data_dir) if args.repair else None)
    if result.repaired_blobs and not args.json:
        print(printable(f"repaired {result.repaired_blobs} blob(s) from {args.data_dir}"), file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    if not result.ok:
        for problem in result.problems if not args.json else []:
            print(printable(f"  {problem}"), file=sys.stderr)
        raise MobackupError(f"backup {result.backup_id} is damaged: {result.problem_count} problem(s), "
                            f"first: {result.problems[0]}")
    if not args.json:
        mode = "quick check" if args.quick else "every digest checked"
        print(printable(f"backup {result.backup_id} is intact: {result.file_count} files, {result.blob_count} blobs "
                        f"({mode})"))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from ..engine.prune import delete_backup

    repo = open_repository(repository_options(args))
    result = delete_backup(repo, args.id, force=args.force)
    text = (f"deleted backup {result.deleted[0]}; removed {result.blobs_removed} blobs "
            f"({decimal_size(result.bytes_freed)})")
    if result.dependents:  # named it as base; each still restores from its own complete file list
        text += f"\nbackups based on it, still restorable: {printable(', '.join(result.dependents))}"
    emit(args, result.to_dict(), text)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ..engine.prune import prune

    repo = open_repository(repository_options(args))
    policy = retention_policy(args)
    result = prune(repo, policy, source=args.source, dry_run=args.dry_run)
    verb = "would delete" if result.dry_run else "deleted"
    lines = [printable(f"{verb} {len(result.deleted)} backup(s): {', '.join(result.deleted) or '-'}")]
    if not result.dry_run:
        lines.append(f"removed {result.blobs_removed} blobs ({decimal_size(result.bytes_freed)}), "
                     f"{result.partial_backups_removed} partial backup(s)")
    if result.objects_held:  # S3 Object Lock: removed by a prune after that date
        lines.append(f"{result.objects_held} unreferenced object(s) held by Object Lock until {result.held_until}")
    emit(args, result.to_dict(), "\n".join(lines))
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    from ..engine.drill import UserCheck, run_drill

    if len(args.check_sql) != len(args.expect):
        raise MobackupError("each --check-sql needs one --expect (the value its first column must have)")
    repo = open_repository(repository_options(args))
    result = run_drill(repo, args.id, Path(args.mo_service),
                       checks=[UserCheck(q, e) for q, e in zip(args.check_sql, args.expect, strict=True)],
                       timeout=args.timeout, scratch_parent=Path(args.scratch_dir) if args.scratch_dir else None,
                       sql_user=args.sql_user, progress=for_terminal("restore", args.quiet or args.json))
    lines = [printable(f"{'ok  ' if c.ok else 'FAIL'} {c.name}{': ' + c.detail if c.detail else ''}")
             for c in result.checks]
    lines.append(f"drill of backup {result.backup_id}: {'passed' if result.ok else 'FAILED'} (restore "
                 f"{result.restore_seconds}s, start {result.start_seconds}s, checks {result.check_seconds}s, "
                 f"total {result.total_seconds}s, scratch {decimal_size(result.scratch_bytes)}, "
                 f"MatrixOne {result.mo_version})")
    emit(args, result.to_dict(), "\n".join(lines))
    if not result.ok:
        raise MobackupError(f"drill of backup {result.backup_id} failed: {result.reason}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.dir), as_json=args.json)


COMMANDS = {
    "init": cmd_init, "backup": cmd_backup, "list": cmd_list, "show": cmd_show, "restore": cmd_restore,
    "verify": cmd_verify, "delete": cmd_delete, "prune": cmd_prune, "demo": cmd_demo,
    "drill": cmd_drill, "commit": s3.cmd_commit, "copy": repos.cmd_copy, "stats": repos.cmd_stats,
}
