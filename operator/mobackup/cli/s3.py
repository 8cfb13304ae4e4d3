"""The command line of MatrixOne clusters whose table data lives in S3 (engine/online_s3.py):
`backup --online --staging s3://...` (one process, or `--stage-only`, `--run ID --shard I/N` and
`commit ID --shards N` scaled out), and `restore ID --target-s3 s3://...` (their flags: parser.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..engine.errors import MobackupError
from .common import emit, repository_options, target_places, warn_backup_retries


def check_backup_flags(args: argparse.Namespace) -> None:
    """The S3-resident flags only with --online --staging, so that none is silently ignored."""
    given = [flag for flag, value in (("--staging", args.staging), ("--staging-endpoint", args.staging_endpoint),
                                      ("--staging-server-endpoint", args.staging_server_endpoint),
                                      ("--stage-only", args.stage_only), ("--run", args.run), ("--shard", args.shard),
                                      ("--shared-s3", args.shared_s3),
                                      ("--shared-s3-endpoint", args.shared_s3_endpoint)) if value]
    if given and not (args.online and args.staging):
        raise MobackupError(f"{', '.join(given)} go(es) with --online --staging s3://BUCKET/PREFIX "
                            "(a MatrixOne whose data lives in S3)")


def _staging_place(args: argparse.Namespace) -> Any:
    from ..engine.online_s3 import S3Place

    if not args.staging:
        raise MobackupError("--staging s3://BUCKET/PREFIX is needed (where the run was staged)")
    return S3Place.from_env(args.staging, "MOBACKUP_STAGING_", endpoint=args.staging_endpoint or args.s3_endpoint,
                            region=args.s3_region, path_style=args.s3_path_style, ca_bundle=args.s3_ca_bundle)


def _summary_line(summary: Any) -> str:
    from ..table import decimal_size

    return (f"Backup ID {summary.id} (online {summary.type} of S3-resident data, {decimal_size(summary.size_bytes)} "
            f"in {summary.file_count} files, {decimal_size(summary.new_bytes)} new, "
            f"{decimal_size(summary.extra.get('staged_bytes', 0))} staged, BACKUPTS {summary.backup_ts}, "
            f"{summary.duration_seconds:.3f}s)")


def online_s3_backup(args: argparse.Namespace) -> int:
    from ..engine.online_s3 import S3Place, run_online_s3_backup
    from ..engine.online_s3_sharded import ingest_shard, stage_run
    from ..engine.progress import for_terminal
    from ..engine.repository import open_repository
    from . import pitr

    if args.server_data_dir or args.exclude:
        raise MobackupError("--staging backs up S3-resident data: --server-data-dir and --exclude do "
                            "not apply")
    place = _staging_place(args)
    progress = for_terminal("backup", args.quiet or args.json)
    if (args.pitr_window is not None or args.shared_s3) and (args.run or args.shard or args.stage_only):
        raise MobackupError("--pitr-window and --shared-s3 go with a backup in one process: a run staged for shards "
                            "(--stage-only, --run) does not take the PITR history, and cannot be restored to a time")
    if args.run or args.shard:
        if not (args.run and args.shard) or args.stage_only:
            raise MobackupError("--run RUN_ID and --shard I/N go together (and without --stage-only)")
        repo = open_repository(repository_options(args))
        shard, shards = args.shard
        totals = ingest_shard(repo, args.run, place, shard, shards, progress)
        emit(args, {"run": args.run, "shard": shard, "shards": shards, **totals.__dict__},
              f"run {args.run} shard {shard}/{shards}: {totals.files} files, {totals.size} bytes, "
              f"{totals.new_bytes} new")
        return 0
    if not args.sql_host:
        raise MobackupError("--online needs --sql-host (MatrixOne runs the backup; password in MOBACKUP_SQL_PASSWORD)")
    from ..engine.mosql import MatrixOneSession, SqlEndpoint

    endpoint = SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, args.sql_database)
    with MatrixOneSession(endpoint) as mo:
        repo = open_repository(repository_options(args, compression=args.compression), create=True)
        if args.stage_only:
            run = stage_run(repo, mo, place, source=args.source, backup_type=args.type, base_id=args.base,
                            server_endpoint=args.staging_server_endpoint)
            warn_backup_retries(run.backup_retries)
            emit(args, run.to_dict() | {"inherit": run.inherited_files or len(run.inherit)},
                  f"staged run {run.run_id} ({run.staged_files} files, {run.staged_bytes} bytes) in {run.staging_url}")
            return 0
        shared = None
        if args.shared_s3:
            shared = S3Place.from_env(args.shared_s3, "MOBACKUP_SHARED_",
                                      endpoint=args.shared_s3_endpoint or place.endpoint, region=args.s3_region,
                                      path_style=args.s3_path_style or place.path_style, ca_bundle=args.s3_ca_bundle)
            if not (shared.access_key_id and shared.secret_access_key):  # the staging's keys, as for MatrixOne
                shared = dataclasses.replace(shared, access_key_id=place.access_key_id,
                                             secret_access_key=place.secret_access_key)
        extra = {"pitr": pitr.backup_record(args, mo.connection, history=False, source=args.source or place.url)}
        summary = run_online_s3_backup(repo, mo, place, source=args.source, backup_type=args.type, base_id=args.base,
                                       server_endpoint=args.staging_server_endpoint, progress=progress, extra=extra,
                                       shared=shared, pitr_history=False if args.without_pitr_history else None)
    warn_backup_retries(summary.extra.get("backup_retries", []))
    emit(args, pitr.with_interval(summary), _summary_line(summary))
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from ..engine.online_s3_sharded import commit_run
    from ..engine.repository import open_repository

    if not 1 <= args.shards <= 1024:
        raise MobackupError("--shards must be 1-1024")
    repo = open_repository(repository_options(args))
    summary = commit_run(repo, args.run, _staging_place(args), args.shards)
    emit(args, summary.to_dict(), _summary_line(summary))
    return 0


def restore_s3(args: argparse.Namespace) -> int:
    from ..engine.guards import refuse_if_listening
    from ..engine.progress import for_terminal
    from ..engine.repository import open_repository
    from ..engine.s3_restore import check_restore_options, restore_to_s3
    from ..table import decimal_size

    if args.target or args.force or args.hostname:
        raise MobackupError("--target-s3 restores into a bucket: --target, --force and --hostname do not apply "
                            "(--overwrite replaces a non-empty prefix)")
    for where in args.check_stopped:
        refuse_if_listening(where)
    if args.shard and args.finalize:
        raise MobackupError("--shard uploads one part; --finalize completes the restore after all of them: not both")
    step = "shard" if args.shard else "finalize" if args.finalize else "all"
    check_restore_options(step, local_fs_dir=args.local_fs_dir, reset_local_fs=args.reset_local_fs,
                          hk_data_s3=args.hk_data_s3)
    target, hk_data_s3 = target_places(args)
    repo = open_repository(repository_options(args))
    result = restore_to_s3(repo, args.id, target, overwrite=args.overwrite,
                           local_fs_dir=Path(args.local_fs_dir) if args.local_fs_dir else None,
                           reset_local_fs=args.reset_local_fs, hk_data_s3=hk_data_s3,
                           step=step, shard=args.shard or (0, 1),
                           progress=for_terminal("restore", args.quiet or args.json))
    if args.shard:
        emit(args, result.to_dict(), f"restored shard {args.shard[0]}/{args.shard[1]} of backup {result.backup_id} "
              f"into {result.target}: {result.file_count} objects, {decimal_size(result.size_bytes)}, "
              f"{result.duration_seconds:.3f}s; `--finalize` after every shard")
        return 0
    hk = f"; ID allocator state in {result.hk_data}" if result.hk_data else \
        "; no --local-fs-dir: put the ID allocator state (hk_data) in place before MatrixOne's first start"
    emit(args, result.to_dict(), f"restored backup {result.backup_id} into {result.target}: {result.file_count} "
          f"objects, {decimal_size(result.size_bytes)}, {result.removed_objects} removed, "
          f"{result.duration_seconds:.3f}s{hk}")
    return 0
