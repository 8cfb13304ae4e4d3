"""`mobackup`: the command line (backup, list, show, restore, verify, delete, prune, demo), and the
entry points of the Kubernetes operator and of its Job agent."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import __version__, cli_s3
from .engine.errors import MobackupError
from .engine.progress import for_terminal
from .engine.repository import MAX_PARALLELISM, Repository, RepositoryOptions, open_repository
from .engine.text import printable, printable_lines
from .table import backup_table, decimal_size

DURATION_PART = re.compile(r"(\d+)([smhdw])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?(?:/s)?$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """'7d', '12h', '1w2d', '90m' -> timedelta."""
    parts = DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 7d, 12h, 1w2d)")
    return timedelta(seconds=sum(int(n) * DURATION_UNITS[u] for n, u in parts))


def parse_rate(text: str) -> int:
    """'50M' / '50MB/s' (10^6) or '50Mi' (2^20) -> bytes per second."""
    match = SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r} (e.g. 50M, 100Mi, 1G)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    power = "KMGT".index(unit[0]) + 1 if unit else 0
    base = 1024 if unit.endswith("I") else 1000
    value = int(number * base**power)
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return value


def int_range(low: int, high: int | None = None) -> Any:
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low}-{high if high is not None else ''})")
        return value
    return parse


# ----- argument parsing ----------------------------------------------------------------------------

def _repo_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("repository")
    group.add_argument("--repo", default=os.environ.get("MOBACKUP_REPO"),
                       help="PATH, file://PATH or s3://BUCKET/PREFIX (env MOBACKUP_REPO)")
    group.add_argument("--s3-endpoint", help="S3 endpoint URL, e.g. http://minio:9000 (env AWS_ENDPOINT_URL)")
    group.add_argument("--s3-region", help="S3 region (env AWS_REGION)")
    group.add_argument("--s3-path-style", action="store_true", default=None,
                       help="path-style bucket addressing, as MinIO needs (env MOBACKUP_S3_PATH_STYLE=true)")
    group.add_argument("--s3-ca-bundle", help="PEM file of CAs to trust for the endpoint (env AWS_CA_BUNDLE)")
    group.add_argument("--encryption-key-file", help="file holding the encryption key "
                       "(or env MOBACKUP_ENCRYPTION_KEY; keys are never accepted on the command line)")
    group.add_argument("--parallelism", type=int_range(1, MAX_PARALLELISM),
                       help=f"concurrent transfers, 1-{MAX_PARALLELISM} (default 4 on a directory, 8 on S3)")
    group.add_argument("--bandwidth-limit", type=parse_rate, help="cap on transfer rate, e.g. 50M or 100Mi")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobackup", description="Physical full and incremental backups of MatrixOne's data directory.")
    parser.add_argument("--version", action="version", version=f"mobackup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create an empty repository")
    _repo_args(init)
    init.add_argument("--compression", choices=("none", "zstd"), default="none",
                      help="compress blobs (MatrixOne objects are already compressed; default none)")

    backup = commands.add_parser("backup", help="back up a MatrixOne data directory")
    _repo_args(backup)
    backup.add_argument("--data-dir", default="mo-data", help="the mo-data directory (default ./mo-data)")
    backup.add_argument("--source", help="name of what is backed up (default: the data directory's path)")
    backup.add_argument("--type", choices=("full", "incremental"),
                        help="default: full for the first backup of a source, incremental after")
    backup.add_argument("--base", help="base backup ID of an incremental (default: latest of the source)")
    backup.add_argument("--compression", choices=("none", "zstd"), default="none",
                        help="compression of a repository this backup creates")
    backup.add_argument("--check-existing", action="store_true",
                        help="read back every blob the repository already has before reusing it, and store a "
                        "damaged one again (by default only its size is checked)")
    backup.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="also leave out paths matching GLOB (relative to the data directory)")
    backup.add_argument("--sql-host", help="MatrixOne SQL host: force a checkpoint and read the version first")
    backup.add_argument("--sql-port", type=int, default=6001)
    backup.add_argument("--sql-user", default="dump", help="SQL user (password in env MOBACKUP_SQL_PASSWORD)")
    backup.add_argument("--sql-database", help="database to connect to (default: none)")
    backup.add_argument("--online", action="store_true",
                        help="back up the RUNNING MatrixOne at --sql-host with its own BACKUP statement (no "
                        "downtime); it stages the copy under --data-dir, which must be the volume it runs on")
    backup.add_argument("--server-data-dir", help="with --online: --data-dir's absolute path as the MatrixOne "
                        "server sees it (default: the same path)")
    cli_s3.add_backup_arguments(backup)

    listing = commands.add_parser("list", help="list completed backups")
    _repo_args(listing)
    listing.add_argument("--source", help="only backups of this source")

    show = commands.add_parser("show", help="show one backup's record")
    _repo_args(show)
    show.add_argument("id")

    restore = commands.add_parser("restore", help="restore a backup into a directory")
    _repo_args(restore)
    restore.add_argument("id")
    restore.add_argument("--target", help="directory to restore into (empty, or --force)")
    restore.add_argument("--force", action="store_true", help="replace the contents of a non-empty target")
    restore.add_argument("--hostname", help="hostname of the MatrixOne that will use the data: refuse a backup "
                         "whose log service data belongs to another host")
    cli_s3.add_restore_arguments(restore)

    verify = commands.add_parser("verify", help="check that a backup is complete and intact")
    _repo_args(verify)
    verify.add_argument("id")
    verify.add_argument("--quick", action="store_true", help="check existence and sizes only")
    verify.add_argument("--repair", action="store_true",
                        help="store damaged or missing blobs again from --data-dir (the backed-up source), "
                        "then check again")
    verify.add_argument("--data-dir", help="the data directory to repair from (with --repair)")

    delete = commands.add_parser("delete", help="delete a backup and the data only it used")
    _repo_args(delete)
    delete.add_argument("id")
    delete.add_argument("--force", action="store_true",
                        help="delete even a backup whose summary is damaged (what it referenced is unknown)")

    prune = commands.add_parser("prune", help="apply retention and remove unreferenced data")
    _repo_args(prune)
    prune.add_argument("--keep-last", type=int_range(0), metavar="N")
    prune.add_argument("--keep-daily", type=int_range(0), metavar="N")
    prune.add_argument("--keep-weekly", type=int_range(0), metavar="N")
    prune.add_argument("--keep-monthly", type=int_range(0), metavar="N")
    prune.add_argument("--keep-within", type=parse_duration, metavar="DURATION", help="e.g. 7d, 12h")
    prune.add_argument("--source", help="only this source's backups")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")

    drill = commands.add_parser("drill", help="restore a backup into a scratch MatrixOne and check what it serves")
    _repo_args(drill)
    drill.add_argument("id")
    drill.add_argument("--mo-service", required=True, help="the mo-service binary (its etc/launch next to it)")
    drill.add_argument("--check-sql", action="append", default=[], metavar="QUERY",
                       help="a query whose first value must equal the next --expect (repeatable)")
    drill.add_argument("--expect", action="append", default=[], metavar="VALUE")
    drill.add_argument("--timeout", type=int_range(1), default=600, metavar="SECONDS",
                       help="time for the scratch MatrixOne to answer SQL and the checks to run (default 600)")
    drill.add_argument("--scratch-dir", help="where the scratch directory is made (default: the temp directory)")
    drill.add_argument("--sql-user", default="root",
                       help="SQL user of the restored data (password in env MOBACKUP_SQL_PASSWORD, default 111)")

    cli_s3.add_commands(commands, _repo_args)

    demo = commands.add_parser("demo", help="a tour on sample data: full, incremental, list, restore, verify")
    demo.add_argument("--dir", default="mobackup-demo", help="working directory (default ./mobackup-demo)")
    demo.add_argument("--json", action="store_true")

    commands.add_parser("operator", help="run the Kubernetes operator (see `mobackup operator --help`)",
                        add_help=False)
    commands.add_parser("agent", help="run a Job's work inside Kubernetes (used by the operator)",
                        add_help=False)
    return parser


# ----- commands ------------------------------------------------------------------------------------

def repository_options(args: argparse.Namespace, **extra: Any) -> RepositoryOptions:
    if not args.repo:
        raise MobackupError("no repository: give --repo or set MOBACKUP_REPO")
    return RepositoryOptions.from_env(
        args.repo, s3_endpoint=args.s3_endpoint, s3_region=args.s3_region, s3_path_style=args.s3_path_style,
        s3_ca_bundle=args.s3_ca_bundle, encryption_key_file=args.encryption_key_file,
        parallelism=args.parallelism, bandwidth_limit=args.bandwidth_limit, **extra,
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """The result: JSON (which escapes control characters itself) or text made printable (values
    from a repository or a data directory are escaped where they are put into several-line text)."""
    print(json.dumps(data, indent=2) if args.json else printable_lines(text))


def _warn(text: str) -> None:
    print(printable(f"mobackup: {text}"), file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> int:
    repo = Repository.create(repository_options(args, compression=args.compression))
    _emit(args, {"location": repo.location, **repo.config}, f"created repository {repo.location}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from .engine.backup import run_backup
    from .engine.layout import PathRules

    cli_s3.check_backup_flags(args)
    if args.online:
        return _online_backup(args)
    if args.server_data_dir:
        raise MobackupError("--server-data-dir is for --online backups")
    mo_version, extra = None, {}
    if args.sql_host:
        from .engine.catalog import read_catalog_from
        from .engine.mosql import SqlEndpoint, prepare_backup

        endpoint = SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, args.sql_database)
        mo_version = prepare_backup(endpoint)
        extra["catalog"] = read_catalog_from(endpoint)  # what a restore drill checks
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
        _warn(f"warning: skipped {summary.skipped_count} special file(s), not data: {shown}{more}")
    _emit(args, summary.to_dict(),
          f"Backup ID {summary.id} ({summary.type}, {decimal_size(summary.size_bytes)} in {summary.file_count} "
          f"files, {decimal_size(summary.new_bytes)} new, BACKUPTS {summary.backup_ts}, "
          f"{summary.duration_seconds:.3f}s)")
    return 0


def _online_backup(args: argparse.Namespace) -> int:
    from .engine.mosql import MatrixOneSession, SqlEndpoint
    from .engine.online import run_online_backup

    if args.staging:  # S3-resident data: MatrixOne stages into a bucket, no data directory
        return cli_s3.online_s3_backup(args)
    if not args.sql_host:
        raise MobackupError("--online needs --sql-host (MatrixOne runs the backup; password in MOBACKUP_SQL_PASSWORD)")
    if args.exclude:
        raise MobackupError("--exclude does not apply to --online backups (MatrixOne chooses the files)")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise MobackupError(f"{data_dir}: not a directory (the data volume MatrixOne runs on)")
    with MatrixOneSession(SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user, args.sql_database)) as mo:
        repo = open_repository(repository_options(args, compression=args.compression), create=True)
        summary = run_online_backup(
            repo, data_dir, mo, server_data_dir=args.server_data_dir, source=args.source, backup_type=args.type,
            base_id=args.base, progress=for_terminal("backup", args.quiet or args.json))
    _emit(args, summary.to_dict(),
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
        _warn(f"warning: {problem}")
    # A damaged backup is listed as such (its source is unknown, so whatever --source says), after
    # the good ones, which it never hides.
    rows = [{"id": backup_id, "damaged": True, "problem": problem} for backup_id, problem in sorted(damaged.items())]
    text = "\n".join([backup_table(summaries), *(printable(f"{r['id']} | DAMAGED: {r['problem']}") for r in rows)])
    _emit(args, [*(s.to_dict() for s in summaries), *rows], text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    repo = open_repository(repository_options(args))
    summary = repo.load_summary(repo.resolve_id(args.id))
    data = summary.to_dict()
    dependents = [s.id for s in repo.list_backups() if s.base_id == summary.id]
    data["dependents"] = dependents
    text = "\n".join(printable(f"{k:<18} {v}") for k, v in data.items() if k != "extra")
    _emit(args, data, text)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .engine.restore import run_restore

    if args.target_s3:
        return cli_s3.restore_s3(args)
    if not args.target:
        raise MobackupError("restore needs --target DIR (or --target-s3 s3://BUCKET/PREFIX for S3-resident data)")
    if (args.overwrite or args.local_fs_dir or args.check_stopped or args.shard or args.finalize
            or args.reset_local_fs or args.hk_data_s3):
        raise MobackupError("--overwrite, --local-fs-dir, --reset-local-fs, --hk-data-s3, --check-stopped, --shard and "
                            "--finalize go with --target-s3 (use --force with --target)")
    repo = open_repository(repository_options(args))
    result = run_restore(repo, args.id, Path(args.target), force=args.force, hostname=args.hostname,
                         progress=for_terminal("restore", args.quiet or args.json))
    _emit(args, result.to_dict(),
          f"restored backup {result.backup_id} into {result.target}: {result.file_count} files, "
          f"{decimal_size(result.size_bytes)}, {result.duration_seconds:.3f}s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .engine.verify import verify_backup

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
    from .engine.prune import delete_backup

    repo = open_repository(repository_options(args))
    result = delete_backup(repo, args.id, force=args.force)
    text = (f"deleted backup {result.deleted[0]}; removed {result.blobs_removed} blobs "
            f"({decimal_size(result.bytes_freed)})")
    if result.dependents:  # named it as base; each still restores from its own complete file list
        text += f"\nbackups based on it, still restorable: {printable(', '.join(result.dependents))}"
    _emit(args, result.to_dict(), text)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .engine.prune import RetentionPolicy, prune

    repo = open_repository(repository_options(args))
    policy = RetentionPolicy(keep_last=args.keep_last, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                             keep_monthly=args.keep_monthly, keep_within=args.keep_within)
    result = prune(repo, policy, source=args.source, dry_run=args.dry_run)
    verb = "would delete" if result.dry_run else "deleted"
    lines = [printable(f"{verb} {len(result.deleted)} backup(s): {', '.join(result.deleted) or '-'}")]
    if not result.dry_run:
        lines.append(f"removed {result.blobs_removed} blobs ({decimal_size(result.bytes_freed)}), "
                     f"{result.partial_backups_removed} partial backup(s)")
    _emit(args, result.to_dict(), "\n".join(lines))
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    from .engine.drill import UserCheck, run_drill

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
    _emit(args, result.to_dict(), "\n".join(lines))
    if not result.ok:
        raise MobackupError(f"drill of backup {result.backup_id} failed: {result.reason}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.dir), as_json=args.json)


COMMANDS = {
    "init": cmd_init, "backup": cmd_backup, "list": cmd_list, "show": cmd_show, "restore": cmd_restore,
    "verify": cmd_verify, "delete": cmd_delete, "prune": cmd_prune, "demo": cmd_demo,
    "drill": cmd_drill, "commit": cli_s3.cmd_commit,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "operator":
        from .k8s.operator_main import main as operator_main

        return operator_main(argv[1:])
    if argv and argv[0] == "agent":
        from .k8s.agent import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MobackupError as error:
        _warn(f"error: {error}")
        return 1
    except OSError as error:  # a file system refusal: say which file and why, in one line
        where = f": {error.filename}" if error.filename else ""
        _warn(f"error: {error.strerror or error}{where}")
        return 1
    except KeyboardInterrupt:
        print("mobackup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
