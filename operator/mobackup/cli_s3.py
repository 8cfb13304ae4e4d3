"""The command line of MatrixOne clusters whose table data lives in S3 (engine/online_s3.py):
`backup --online --staging s3://...` (one process, or `--stage-only`, `--run ID --shard I/N` and
`commit ID --shards N` scaled out), and `restore ID --target-s3 s3://...`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .engine.errors import MobackupError

SHARD = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N."""
    match = SHARD.match(text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)) <= 1024:
        raise argparse.ArgumentTypeError(f"invalid shard {text!r} (I/N with 0 <= I < N <= 1024, e.g. 0/3)")
    return int(match.group(1)), int(match.group(2))


def _staging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--staging", metavar="S3_URL",
                        help="with --online, for a MatrixOne whose data lives in S3: s3://BUCKET/PREFIX where "
                        "MatrixOne's BACKUP stages its copy (no --data-dir); keys in MOBACKUP_STAGING_ACCESS_KEY_ID/"
                        "MOBACKUP_STAGING_SECRET_ACCESS_KEY or AWS_*")
    parser.add_argument("--staging-endpoint", help="S3 endpoint of the staging bucket (env MOBACKUP_STAGING_ENDPOINT, "
                        "else AWS_ENDPOINT_URL)")
    parser.add_argument("--staging-server-endpoint", help="the same endpoint as MatrixOne reaches it "
                        "(default: --staging-endpoint)")


def add_backup_arguments(backup: argparse.ArgumentParser) -> None:
    _staging_args(backup)
    backup.add_argument("--stage-only", action="store_true",
                        help="with --staging: only run MatrixOne's BACKUP and record the run; then ingest it with "
                        "--run ID --shard I/N (any hosts) and `mobackup commit ID --shards N`")
    backup.add_argument("--run", metavar="RUN_ID", help="ingest one shard of a run made with --stage-only")
    backup.add_argument("--shard", type=parse_shard, metavar="I/N", help="with --run: this shard (0-based) of N")


def check_backup_flags(args: argparse.Namespace) -> None:
    """The S3-resident flags only with --online --staging, so that none is silently ignored."""
    given = [flag for flag, value in (("--staging", args.staging), ("--staging-endpoint", args.staging_endpoint),
                                      ("--staging-server-endpoint", args.staging_server_endpoint),
                                      ("--stage-only", args.stage_only), ("--run", args.run), ("--shard", args.shard))
             if value]
    if given and not (args.online and args.staging):
        raise MobackupError(f"{', '.join(given)} go(es) with --online --staging s3://BUCKET/PREFIX "
                            "(a MatrixOne whose data lives in S3)")


def add_restore_arguments(restore: argparse.ArgumentParser) -> None:
    restore.add_argument("--target-s3", metavar="S3_URL",
                         help="restore an S3-resident backup into s3://BUCKET/PREFIX (MatrixOne's SHARED key-prefix; "
                         "the cluster stopped); keys in MOBACKUP_TARGET_ACCESS_KEY_ID/..SECRET_ACCESS_KEY or AWS_*")
    restore.add_argument("--target-s3-endpoint", help="its S3 endpoint (env MOBACKUP_TARGET_ENDPOINT, else "
                         "AWS_ENDPOINT_URL)")
    restore.add_argument("--local-fs-dir", help="with --target-s3: the directory of the log service's LOCAL file "
                         "service (its data-dir; by default <data-dir>/local): the ID allocator state goes to its "
                         "hk_data")
    restore.add_argument("--check-stopped", metavar="HOST[:PORT]", action="append", default=[],
                         help="with --target-s3: refuse when something answers on MatrixOne's SQL port there "
                         "(default port 6001; repeatable: every CN of the cluster)")
    restore.add_argument("--reset-local-fs", action="store_true",
                         help="with --local-fs-dir: it is the whole data directory of the stopped log service; its old "
                         "log is removed (refused while non-empty unless --overwrite)")
    restore.add_argument("--hk-data-s3", metavar="S3_URL",
                         help="with --target-s3: also write the ID allocator state to this object (plain), where a new "
                         "cluster bootstrapped with restoreFrom reads it (BACKUP://hk_data: <bucket>/<folder>/hk_data)")
    restore.add_argument("--overwrite", action="store_true",
                         help="with --target-s3: restore into a non-empty prefix, leaving exactly the backup's objects")
    restore.add_argument("--shard", type=parse_shard, metavar="I/N",
                         help="with --target-s3: upload only this shard (0-based) of N of the objects (any hosts, any "
                         "order); then `--finalize` once")
    restore.add_argument("--finalize", action="store_true",
                         help="with --target-s3, after every --shard: check every object is there, remove the others "
                         "(--overwrite) and write the ID allocator state")


def add_commands(commands: Any, repo_args: Any) -> None:
    commit = commands.add_parser("commit", help="list a sharded online backup once every shard has stored its part")
    repo_args(commit)
    commit.add_argument("run", metavar="RUN_ID")
    commit.add_argument("--shards", type=int, required=True, metavar="N")
    _staging_args(commit)


def _staging_place(args: argparse.Namespace) -> Any:
    from .engine.online_s3 import S3Place

    if not args.staging:
        raise MobackupError("--staging s3://BUCKET/PREFIX is needed (where the run was staged)")
    return S3Place.from_env(args.staging, "MOBACKUP_STAGING_", endpoint=args.staging_endpoint or args.s3_endpoint,
                            region=args.s3_region, path_style=args.s3_path_style, ca_bundle=args.s3_ca_bundle)


def _summary_line(summary: Any) -> str:
    from .table import decimal_size

    return (f"Backup ID {summary.id} (online {summary.type} of S3-resident data, {decimal_size(summary.size_bytes)} "
            f"in {summary.file_count} files, {decimal_size(summary.new_bytes)} new, "
            f"{decimal_size(summary.extra.get('staged_bytes', 0))} staged, BACKUPTS {summary.backup_ts}, "
            f"{summary.duration_seconds:.3f}s)")


def online_s3_backup(args: argparse.Namespace) -> int:
    from .cli import _emit, repository_options
    from .engine.online_s3 import ingest_shard, run_online_s3_backup, stage_run
    from .engine.progress import for_terminal
    from .engine.repository import open_repository

    if args.server_data_dir or args.exclude:
        raise MobackupError("--staging backs up S3-resident data: --server-data-dir and --exclude do "
                            "not apply")
    place = _staging_place(args)
    progress = for_terminal("backup", args.quiet or args.json)
    if args.run or args.shard:
        if not (args.run and args.shard) or args.stage_only:
            raise MobackupError("--run RUN_ID and --shard I/N go together (and without --stage-only)")
        repo = open_repository(repository_options(args))
        shard, shards = args.shard
        totals = ingest_shard(repo, args.run, place, shard, shards, progress)
        _emit(args, {"run": args.run, "shard": shard, "shards": shards, **totals.__dict__},
              f"run {args.run} shard {shard}/{shards}: {totals.files} files, {totals.size} bytes, "
              f"{totals.new_bytes} new")
        return 0
    if not args.sql_host:
        raise MobackupError("--online needs --sql-host (MatrixOne runs the backup; password in MOBACKUP_SQL_PASSWORD)")
    from .engine.mosql import MatrixOneSession, SqlEndpoint

    endpoint = SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, args.sql_database)
    with MatrixOneSession(endpoint) as mo:
        repo = open_repository(repository_options(args, compression=args.compression), create=True)
        if args.stage_only:
            run = stage_run(repo, mo, place, source=args.source, backup_type=args.type, base_id=args.base,
                            server_endpoint=args.staging_server_endpoint)
            _emit(args, run.to_dict() | {"inherit": len(run.inherit)},
                  f"staged run {run.run_id} ({run.staged_files} files, {run.staged_bytes} bytes) in {run.staging_url}")
            return 0
        summary = run_online_s3_backup(repo, mo, place, source=args.source, backup_type=args.type, base_id=args.base,
                                       server_endpoint=args.staging_server_endpoint, progress=progress)
    _emit(args, summary.to_dict(), _summary_line(summary))
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from .cli import _emit, repository_options
    from .engine.online_s3 import commit_run
    from .engine.repository import open_repository

    if not 1 <= args.shards <= 1024:
        raise MobackupError("--shards must be 1-1024")
    repo = open_repository(repository_options(args))
    summary = commit_run(repo, args.run, _staging_place(args), args.shards)
    _emit(args, summary.to_dict(), _summary_line(summary))
    return 0


def refuse_if_listening(where: str) -> None:
    """A restore into a running cluster's prefix would mix objects under a live TN: refuse while its
    SQL port accepts connections (no credentials needed for that)."""
    import socket

    host, _, port = where.rpartition(":") if where.count(":") == 1 else (where, "", "6001")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except ValueError:
        raise MobackupError(f"--check-stopped {where!r}: not HOST[:PORT]") from None
    except OSError:
        return  # nothing answers: stopped (or unreachable from here)
    from .engine.errors import ClusterRunningError

    raise ClusterRunningError(f"MatrixOne answers at {host}:{port}: stop the cluster (every CN, TN and log service) "
                        "before restoring into its bucket prefix")


def restore_s3(args: argparse.Namespace) -> int:
    from .cli import _emit, repository_options
    from .engine.online_s3 import S3Place, restore_to_s3
    from .engine.progress import for_terminal
    from .engine.repository import open_repository
    from .table import decimal_size

    if args.target or args.force or args.hostname:
        raise MobackupError("--target-s3 restores into a bucket: --target, --force and --hostname do not apply "
                            "(--overwrite replaces a non-empty prefix)")
    for where in args.check_stopped:
        refuse_if_listening(where)
    target = S3Place.from_env(args.target_s3, "MOBACKUP_TARGET_", endpoint=args.target_s3_endpoint or args.s3_endpoint,
                              region=args.s3_region, path_style=args.s3_path_style, ca_bundle=args.s3_ca_bundle)
    if args.shard and args.finalize:
        raise MobackupError("--shard uploads one part; --finalize completes the restore after all of them: not both")
    if args.shard and (args.local_fs_dir or args.hk_data_s3):
        raise MobackupError("--local-fs-dir and --hk-data-s3 go with --finalize (or a restore without --shard)")
    if args.reset_local_fs and not args.local_fs_dir:
        raise MobackupError("--reset-local-fs needs --local-fs-dir (the log service's data directory)")
    hk_data_s3 = None
    if args.hk_data_s3:
        hk_data_s3 = S3Place.from_env(args.hk_data_s3, "MOBACKUP_TARGET_", endpoint=target.endpoint,
                                      region=target.region, path_style=target.path_style, ca_bundle=target.ca_bundle)
    repo = open_repository(repository_options(args))
    result = restore_to_s3(repo, args.id, target, overwrite=args.overwrite,
                           local_fs_dir=Path(args.local_fs_dir) if args.local_fs_dir else None,
                           reset_local_fs=args.reset_local_fs, hk_data_s3=hk_data_s3,
                           step="shard" if args.shard else "finalize" if args.finalize else "all",
                           shard=args.shard or (0, 1), progress=for_terminal("restore", args.quiet or args.json))
    if args.shard:
        _emit(args, result.to_dict(), f"restored shard {args.shard[0]}/{args.shard[1]} of backup {result.backup_id} "
              f"into {result.target}: {result.file_count} objects, {decimal_size(result.size_bytes)}, "
              f"{result.duration_seconds:.3f}s; `--finalize` after every shard")
        return 0
    hk = f"; ID allocator state in {result.hk_data}" if result.hk_data else \
        "; no --local-fs-dir: put the ID allocator state (hk_data) in place before MatrixOne's first start"
    _emit(args, result.to_dict(), f"restored backup {result.backup_id} into {result.target}: {result.file_count} "
          f"objects, {decimal_size(result.size_bytes)}, {result.removed_objects} removed, "
          f"{result.duration_seconds:.3f}s{hk}")
    return 0
