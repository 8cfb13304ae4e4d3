"""The `mobackup` argument parser: every command's flags, those of S3-resident clusters (`--staging`,
`--target-s3`, `commit`) included, and the argument types. Imports nothing of the CLI."""

from __future__ import annotations

import argparse
import os
import re
from datetime import timedelta
from typing import Any

from .. import __version__
from ..engine.repository import MAX_PARALLELISM

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


def _s3_args(group: Any, flag: str, env: tuple[str, str, str, str]) -> None:
    """--<flag>s3-endpoint, -region, -path-style, -ca-bundle; `env`: the variables each falls back to."""
    group.add_argument(f"--{flag}s3-endpoint", help=f"S3 endpoint URL, e.g. http://minio:9000 (env {env[0]})")
    group.add_argument(f"--{flag}s3-region", help=f"S3 region (env {env[1]})")
    group.add_argument(f"--{flag}s3-path-style", action="store_true", default=None,
                       help=f"path-style bucket addressing, as MinIO needs (env {env[2]}=true)")
    group.add_argument(f"--{flag}s3-ca-bundle", help=f"PEM file of CAs to trust for the endpoint (env {env[3]})")


def _repo_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("repository")
    group.add_argument("--repo", default=os.environ.get("MOBACKUP_REPO"),
                       help="PATH, file://PATH or s3://BUCKET/PREFIX (env MOBACKUP_REPO)")
    _s3_args(group, "", ("AWS_ENDPOINT_URL", "AWS_REGION", "MOBACKUP_S3_PATH_STYLE", "AWS_CA_BUNDLE"))
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
    add_lock_arguments(init)

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
    add_backup_arguments(backup)

    listing = commands.add_parser("list", help="list completed backups")
    _repo_args(listing)
    listing.add_argument("--source", help="only backups of this source")

    show = commands.add_parser("show", help="show one backup's record")
    _repo_args(show)
    show.add_argument("id")

    restore = commands.add_parser("restore", help="restore a backup into a directory")
    _repo_args(restore)
    restore.add_argument("id", nargs="?", help="the backup (with --to-time: optional, chosen by its interval)")
    restore.add_argument("--target", help="directory to restore into (empty, or --force)")
    restore.add_argument("--force", action="store_true", help="replace the contents of a non-empty target")
    restore.add_argument("--hostname", help="hostname of the MatrixOne that will use the data: refuse a backup "
                         "whose log service data belongs to another host")
    add_restore_arguments(restore)
    add_scoped_restore_arguments(restore)

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
    add_keep_arguments(prune)
    prune.add_argument("--source", help="only this source's backups")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")

    drill = commands.add_parser("drill", help="restore a backup into a scratch MatrixOne and check what it serves")
    _repo_args(drill)
    drill.add_argument("id")
    server_check_args(drill, "", required=True)
    drill.add_argument("--scratch-dir", help="where the scratch directory is made (default: the temp directory)")

    add_commit_command(commands)
    add_copy_stats_commands(commands)
    add_pitr_arguments(backup, restore)

    demo = commands.add_parser("demo", help="a tour on sample data: full, incremental, list, restore, verify")
    demo.add_argument("--dir", default="mobackup-demo", help="working directory (default ./mobackup-demo)")
    demo.add_argument("--json", action="store_true")

    commands.add_parser("operator", help="run the Kubernetes operator (see `mobackup operator --help`)",
                        add_help=False)
    commands.add_parser("agent", help="run a Job's work inside Kubernetes (used by the operator)",
                        add_help=False)
    return parser


# ----- S3-resident clusters (engine/online_s3.py) ----------------------------------------------------

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
    backup.add_argument("--shared-s3", metavar="S3_URL",
                        help="with --staging: s3://BUCKET/PREFIX, the cluster's SHARED key-prefix (its table data); "
                        "the objects there a restore to an earlier instant needs are stored too (taken when the "
                        "server has a cluster PITR); keys in MOBACKUP_SHARED_ACCESS_KEY_ID/..SECRET_ACCESS_KEY or "
                        "AWS_*")
    backup.add_argument("--shared-s3-endpoint", help="its S3 endpoint (env MOBACKUP_SHARED_ENDPOINT, else "
                        "--staging-endpoint)")


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


def add_scoped_restore_arguments(restore: argparse.ArgumentParser) -> None:
    """Scoped restores (engine/scoped.py): tables of a backup into the running MatrixOne."""
    scoped = restore.add_argument_group("scoped restore into a running MatrixOne (instead of --target)")
    scoped.add_argument("--only", action="append", default=[], metavar="DB[.TABLE]",
                        help="restore only this database or table (repeatable), copied into --into-sql-host")
    scoped.add_argument("--into-sql-host", metavar="HOST", help="the running MatrixOne the tables go into")
    scoped.add_argument("--into-sql-port", type=int_range(1, 65535), default=6001, metavar="PORT")
    scoped.add_argument("--into-sql-user", default="root", metavar="USER",
                        help="its user (password in env MOBACKUP_INTO_SQL_PASSWORD)")
    scoped.add_argument("--as", dest="as_name", metavar="NEW_DB[.NEW_TABLE]",
                        help="the target: a database for a database (tables keep their names), or DB.TABLE for "
                        "one table (default: the same database, table name + _restored_<UTC time>)")
    scoped.add_argument("--suffix", help="the target tables' names: the table's name plus this suffix")
    scoped.add_argument("--replace", action="store_true",
                        help="replace an existing target table once the copy is checked (the old one is kept as "
                        "<table>_replaced_<UTC time>)")
    scoped.add_argument("--scratch-dir", help="where the scratch directory is made (default: the temp directory)")
    scoped.add_argument("--copy-method", choices=("insert", "load"), default="insert",
                        help="how rows go into the live server: insert (multi-row INSERTs of ~1 MB, the default) "
                        "or load (the scratch server exports the table with SELECT INTO OUTFILE and its bytes go "
                        "by LOAD DATA LOCAL in 16 MB statements of whole rows; the live server gets only those "
                        "bytes, never a file of ours)")
    scoped.add_argument("--insert-connections", type=int_range(1, 8), default=None, metavar="N",
                        help="connections that INSERT (or, with --copy-method load, LOAD) into the live server at "
                        "once (default 1 for insert, 2 for load): more copy faster where it has idle capacity, and "
                        "take that capacity from its own users")
    # --mo-service, --timeout and --sql-user (of the restored data) are restore's, shared with
    # --to-time (server_check_args)


def add_commit_command(commands: Any) -> None:
    commit = commands.add_parser("commit", help="list a sharded online backup once every shard has stored its part")
    _repo_args(commit)
    commit.add_argument("run", metavar="RUN_ID")
    commit.add_argument("--shards", type=int, required=True, metavar="N")
    _staging_args(commit)


# ----- Several repositories, and what a repository costs (cli/repos.py) -------------------------------

def add_copy_stats_commands(commands: Any) -> None:
    copy = commands.add_parser("copy", help="copy backups into another repository (only the data it lacks)")
    _repo_args(copy)
    copy.add_argument("--from", dest="repo", default=argparse.SUPPRESS, metavar="REPO",
                      help="the repository to copy from (same as --repo)")
    copy.add_argument("ids", nargs="*", metavar="ID", help="backups to copy (ID or unambiguous prefix)")
    copy.add_argument("--all", action="store_true", help="copy every completed backup")
    group = copy.add_argument_group("target repository (its secrets in MOBACKUP_TO_* variables, never here)")
    group.add_argument("--to", required=True, metavar="REPO",
                       help="PATH, file://PATH or s3://BUCKET/PREFIX; created when absent")
    _s3_args(group, "to-", ("MOBACKUP_TO_ENDPOINT, else AWS_ENDPOINT_URL", "MOBACKUP_TO_REGION, else AWS_REGION",
                            "MOBACKUP_TO_PATH_STYLE", "AWS_CA_BUNDLE; default --s3-ca-bundle"))
    group.add_argument("--to-encryption-key-file", help="file holding its encryption key (or env "
                       "MOBACKUP_TO_ENCRYPTION_KEY / MOBACKUP_TO_ENCRYPTION_KEY_FILE)")
    group.add_argument("--to-compression", choices=("none", "zstd"), default="none",
                       help="compression of a target repository this copy creates")
    group.add_argument("--to-lock-days", type=float, metavar="N",
                       help="S3 Object Lock of a target repository this copy creates (as init --lock-days)")
    group.add_argument("--to-lock-mode", choices=("compliance", "governance"), default="compliance")

    stats = commands.add_parser("stats", help="what each backup and the repository take, and cost")
    _repo_args(stats)
    stats.add_argument("--source", help="only backups of this source (the repository totals stay whole)")
    stats.add_argument("--price", type=float, metavar="PER_GB_MONTH",
                       help="price of a GB (10^9 bytes) stored for a month: adds monthly costs")
    add_keep_arguments(stats.add_argument_group(
        "retention policy (as prune's): gives each backup its retention class, and with --price the cost of each"))


def add_keep_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--keep-last", type=int_range(0), metavar="N")
    parser.add_argument("--keep-daily", type=int_range(0), metavar="N")
    parser.add_argument("--keep-weekly", type=int_range(0), metavar="N")
    parser.add_argument("--keep-monthly", type=int_range(0), metavar="N")
    parser.add_argument("--keep-within", type=parse_duration, metavar="DURATION", help="e.g. 7d, 12h")


def add_lock_arguments(init: argparse.ArgumentParser) -> None:
    init.add_argument("--lock-days", type=float, metavar="N",
                      help="S3 Object Lock: keep every blob, file list and summary for N days after its backup "
                      "(the bucket must have Object Lock enabled); recorded in mobackup.json for every later run")
    init.add_argument("--lock-mode", choices=("compliance", "governance"), default="compliance",
                      help="compliance: nobody can delete early; governance: only with the bypass permission")
# ----- point-in-time recovery (engine/pitr.py, engine/pitr_restore.py) ----------------------------------

def add_pitr_arguments(backup: argparse.ArgumentParser, restore: argparse.ArgumentParser) -> None:
    window_help = ("with --sql-host: first make sure a cluster PITR keeps at least this much history (e.g. 7d; "
                   "created, or an existing one lengthened, never shortened)")
    backup.add_argument("--pitr-window", type=parse_duration, metavar="DURATION", help=window_help)
    backup.add_argument("--without-pitr-history", action="store_true",
                        help="--online: leave out the live objects that a restore to an earlier instant needs (taken "
                             "by default when the server has a cluster PITR; they cost storage)")
    to_time_help = ("restore the backup whose recoverable interval holds this instant, start MatrixOne on --target "
                    "and bring it to the instant with its PITR (e.g. 2026-12-01T10:00:00Z); with --only, the tables "
                    "as they were at that instant")
    restore.add_argument("--to-time", metavar="RFC3339", help=to_time_help)
    restore.add_argument("--sql-host", help="with --to-time and --target-s3: the restored cluster's SQL host; once "
                         "its objects are back, wait (--timeout) until it answers (start the cluster then), and bring "
                         "it to the instant there")
    restore.add_argument("--sql-port", type=int_range(1, 65535), default=6001)
    server_check_args(restore, "with --to-time or --only: ", required=False)


def server_check_args(parser: argparse.ArgumentParser, when: str, *, required: bool) -> None:
    """The flags of a command that starts MatrixOne on restored data and checks it (drill, restore
    --to-time); `when` starts each help text."""
    parser.add_argument("--mo-service", required=required,
                        help=f"{when}the mo-service binary (its etc/launch next to it)")
    parser.add_argument("--check-sql", action="append", default=[], metavar="QUERY",
                        help=f"{when}a query whose first value must equal the next --expect (repeatable)")
    parser.add_argument("--expect", action="append", default=[], metavar="VALUE")
    parser.add_argument("--timeout", type=int_range(1), default=600, metavar="SECONDS",
                        help=f"{when}time for MatrixOne to answer SQL and the checks to run (default 600)")
    parser.add_argument("--sql-user", default="root", help=f"{when}SQL user of the restored data (password in env "
                        "MOBACKUP_SQL_PASSWORD, default 111)")
