"""`mobackup agent backup|restore|delete|copy`: what a Job pod runs.

Settings come from the args (nothing secret) and the environment (S3 keys, encryption key: env from
Secrets). The result JSON goes to the termination message file (read back by the operator) and to
stdout. The operator's Jobs have no API token and pass no --kind/--name: they patch nothing. Given
those (by hand), progress is patched into that resource's `.status.progress` every few seconds.
Exit codes: 0 ok, 1 expected failure (reason in the result), 2 unexpected error.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from mobackup.engine.errors import MobackupError

from .status import progress_fields

log = logging.getLogger("mobackup.agent")

# Summary keys the operator needs (the termination message is capped at 4096 bytes).
SUMMARY_KEYS = ("id", "type", "base_id", "source", "backup_ts", "started_at", "completed_at",
                "duration_seconds", "size_bytes", "new_bytes", "stored_bytes", "file_count", "location",
                "layout", "mobackup_version", "mo_version")
MAX_MESSAGE = 4000


class StatusReporter:
    """The engine's Progress protocol; a thread patches `.status.progress` every `interval` seconds."""

    def __init__(self, kind: str | None, name: str | None, namespace: str | None, interval: float) -> None:
        self.kind, self.name, self.namespace, self.interval = kind, name, namespace, interval
        self.lock = threading.Lock()
        self.total_bytes = self.total_files = self.done_bytes = self.done_files = 0
        self._stop = threading.Event()
        self._dirty = False
        self._kube: Any = None
        self._thread: threading.Thread | None = None
        if kind and name and namespace and interval > 0:
            # The kubernetes client takes ~1 s to import: connect in the reporter thread, so the copy
            # (and with Stop consistency, MatrixOne's downtime) does not wait for it.
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    def start(self, total_bytes: int, total_files: int) -> None:
        with self.lock:
            self.total_bytes, self.total_files = total_bytes, total_files
            self._dirty = True

    def advance(self, nbytes: int, nfiles: int) -> None:
        with self.lock:
            self.done_bytes += nbytes
            self.done_files += nfiles
            self._dirty = True

    def finish(self) -> None:
        self._push()

    def fields(self) -> dict[str, Any]:
        with self.lock:
            return progress_fields(self.done_bytes, self.total_bytes, self.done_files, self.total_files)

    def _push(self) -> None:
        if self._kube is None:
            return
        with self.lock:
            if not self._dirty:
                return
            self._dirty = False
        try:
            self._kube.patch_status(self.kind, self.namespace, self.name, {"progress": self.fields()})
        except Exception as e:
            log.warning("progress patch failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)

    def _connect(self) -> None:
        try:
            from .kube import Kube, load_config
            load_config()
            self._kube = Kube()
        except Exception as e:  # no API access: the copy still runs, the status shows no progress
            log.warning("progress reports disabled: %s", str(e).splitlines()[0] if str(e) else e)

    def _loop(self) -> None:
        self._connect()
        if self._kube is None:
            return
        self._push()
        while not self._stop.wait(self.interval):
            self._push()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._push()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobackup agent", description="Run by the operator's Jobs.")
    sub = p.add_subparsers(dest="action", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--repo", required=True, help="repository URL (path, file://, s3://bucket/prefix)")
        sp.add_argument("--kind", help="kind of the resource to report progress to (MOBackup/MORestore)")
        sp.add_argument("--name", help="name of that resource")
        sp.add_argument("--namespace", help="its namespace")
        sp.add_argument("--termination-log", default="/dev/termination-log",
                        help="where the result JSON is written for the operator")
        sp.add_argument("--progress-interval", type=float, default=3.0, help="seconds between progress patches")
        sp.add_argument("--parallelism", type=int, default=None,
                        help="concurrent transfers (default: the engine's, 4 on a directory, 8 on S3)")
        sp.add_argument("--bandwidth-limit", type=int, default=None, help="bytes per second")
        sp.add_argument("--compression", choices=["none", "zstd"], default="none",
                        help="compression of a repository created by this run")
        sp.add_argument("--lock-days", type=float, default=None,
                        help="S3 Object Lock of a repository created by this run; an existing one must have it")
        sp.add_argument("--lock-mode", choices=["COMPLIANCE", "GOVERNANCE"], default="COMPLIANCE")

    def s3_place(sp: argparse.ArgumentParser, flag: str, what: str) -> None:
        sp.add_argument(f"--{flag}", metavar="S3_URL", help=what)
        sp.add_argument(f"--{flag}-endpoint")
        sp.add_argument(f"--{flag}-region")
        sp.add_argument(f"--{flag}-path-style", action="store_true")

    def staging(sp: argparse.ArgumentParser) -> None:
        s3_place(sp, "staging", "table data in S3: where MatrixOne's BACKUP stages (keys in MOBACKUP_STAGING_*)")
        sp.add_argument("--staging-server-endpoint", help="the staging endpoint as MatrixOne reaches it")
        sp.add_argument("--run", help="a staged run (--stage-only) to ingest a shard of, or to commit")
        sp.add_argument("--shards", type=int, default=None,
                        help="with --run: the number of shards; this pod's is JOB_COMPLETION_INDEX")

    b = sub.add_parser("backup")
    common(b)
    staging(b)
    b.add_argument("--stage-only", action="store_true", help="with --staging: only BACKUP and the run record")
    b.add_argument("--data-dir", type=Path, help="the data directory (not with --staging)")
    b.add_argument("--source")
    b.add_argument("--type", choices=["full", "incremental"], default="full")
    b.add_argument("--base", default=None)
    b.add_argument("--mo-version", default=None, help="MatrixOne version (from the operator's SQL check)")
    b.add_argument("--online", action="store_true",
                   help="MatrixOne's BACKUP stages the copy under --data-dir (password in MOBACKUP_SQL_PASSWORD)")
    b.add_argument("--sql-host")
    b.add_argument("--sql-port", type=int, default=6001)
    b.add_argument("--sql-user", default="dump")
    b.add_argument("--server-data-dir", help="--data-dir's path inside the MatrixOne container")
    b.add_argument("--pitr-record", metavar="JSON", help="the PITR windows the operator read before the copy "
                   "(recorded as the backup's extra.pitr, engine/pitr.py)")
    s3_place(b, "shared-s3", "with --staging: the cluster's SHARED key prefix, whose objects the PITR history "
             "needs are stored too (keys in MOBACKUP_SHARED_*)")
    c = sub.add_parser("commit")
    common(c)
    staging(c)
    r = sub.add_parser("restore")
    common(r)
    r.add_argument("--backup-id", required=True)
    r.add_argument("--target", type=Path, help="the data directory (not with --target-s3)")
    s3_place(r, "target-s3", "table data in S3: the SHARED key prefix to restore into (keys in MOBACKUP_TARGET_*)")
    r.add_argument("--hk-data-s3", metavar="S3_URL", help="also write the ID allocator state (plain) to this object")
    r.add_argument("--local-fs-dir", type=Path, help="the log service's LOCAL root: hk_data goes there")
    r.add_argument("--reset-local-fs", action="store_true", help="--local-fs-dir is the log service's whole data "
                   "directory: empty (or with --overwrite, emptied) before hk_data is written")
    r.add_argument("--check-stopped", action="append", default=[], metavar="HOST:PORT",
                   help="refuse while MatrixOne answers there")
    r.add_argument("--shards", type=int, default=None,
                   help="with --target-s3: upload this pod's shard (JOB_COMPLETION_INDEX) of N, nothing else")
    r.add_argument("--finalize", action="store_true", help="with --target-s3: complete a restore made by shards")
    r.add_argument("--overwrite", action="store_true")
    r.add_argument("--hostname", default=None,
                   help="pod hostname of the MatrixOne on the target (a backup of another host is refused)")
    r.add_argument("--to-time", metavar="RFC3339", help="refuse unless the backup can be brought to this time "
                   "(the PITR step follows in a Job of its own)")
    pt = sub.add_parser("pitr", help="bring the MatrixOne just restored in place to a time (RESTORE CLUSTER FROM "
                        "PITR); password in MOBACKUP_SQL_PASSWORD")
    pt.add_argument("--termination-log", default="/dev/termination-log")
    pt.add_argument("--sql-host", required=True)
    pt.add_argument("--sql-port", type=int, default=6001)
    pt.add_argument("--sql-user", default="root")
    pt.add_argument("--to-time", required=True, metavar="RFC3339")
    pt.add_argument("--backup-id", default="")
    pt.add_argument("--timeout", type=float, default=300.0, help="seconds MatrixOne has to answer SQL")
    pt.set_defaults(kind=None, name=None, namespace=None, progress_interval=0.0)
    d = sub.add_parser("delete")
    common(d)
    d.add_argument("--backup-id", required=True)
    d.add_argument("--source", help="refuse unless the backup is of this source (the operator's delete Job)")
    d.add_argument("--not-before", metavar="TIME", help="refuse unless the backup started after this ISO time")
    cp = sub.add_parser("copy")
    common(cp)
    cp.add_argument("--to", required=True, help="the target repository (its settings in MOBACKUP_TO_*)")
    cp.add_argument("--backup-id", required=True)
    cp.add_argument("--to-lock-days", type=float, default=None, help="the target's Object Lock (as --lock-days)")
    cp.add_argument("--to-lock-mode", choices=["COMPLIANCE", "GOVERNANCE"], default="COMPLIANCE")
    return p


def target_options(args: argparse.Namespace) -> Any:
    """The copy target's settings: only MOBACKUP_TO_* (jobs.TARGET_ENV), never the source's AWS_* ones."""
    from dataclasses import replace

    from mobackup.engine.repository import RepositoryOptions

    env = os.environ
    opts = RepositoryOptions.from_env(args.to, key_env="MOBACKUP_TO_ENCRYPTION_KEY", compression=args.compression,
                                      parallelism=args.parallelism, bandwidth_limit=args.bandwidth_limit,
                                      lock_days=args.to_lock_days, lock_mode=args.to_lock_mode)
    return replace(opts, s3_endpoint=env.get("MOBACKUP_TO_ENDPOINT") or None,
                   s3_region=env.get("MOBACKUP_TO_REGION") or None,
                   s3_path_style=env.get("MOBACKUP_TO_PATH_STYLE", "").lower() in ("1", "true", "yes"),
                   s3_ca_bundle=env.get("MOBACKUP_TO_CA_BUNDLE") or None,
                   s3_access_key_id=env.get("MOBACKUP_TO_ACCESS_KEY_ID") or None,
                   s3_secret_access_key=env.get("MOBACKUP_TO_SECRET_ACCESS_KEY") or None)


def run_copy(args: argparse.Namespace, opts: Any, reporter: StatusReporter) -> dict[str, Any]:
    """Copy one backup; the result names it and says whether it was transferred or already there."""
    from mobackup.engine.copy import copy_backups
    from mobackup.engine.objectlock import require_setting
    from mobackup.engine.repository import open_repository

    source = open_repository(opts, create=False)
    target_opts = target_options(args)
    if source.codec.keys is not None and not target_opts.encryption_key:
        raise MobackupError(f"{source.location} is encrypted and the target has no encryption key")
    target = open_repository(target_opts, create=True)
    require_setting(target, args.to_lock_days, args.to_lock_mode)
    res = copy_backups(source, target, [args.backup_id], progress=reporter)
    return {"ok": True, "action": "copy",
            "result": {"backup_id": args.backup_id, "target": res.target, "copied": res.copied,
                       "present": res.present, "bytes_copied": res.bytes_copied, "stored_bytes": res.stored_bytes,
                       "duration_seconds": res.duration_seconds}}


def open_for_backup(opts: Any) -> Any:
    """The repository a backup writes, created when absent (with the Object Lock asked); an existing
    one must have been created with that setting (objectlock.setting_mismatch)."""
    from mobackup.engine.objectlock import require_setting
    from mobackup.engine.repository import open_repository

    repo = open_repository(opts, create=True)
    require_setting(repo, opts.lock_days, opts.lock_mode)
    return repo


def _write_result(path: str, result: dict[str, Any]) -> None:
    text = json.dumps(result, separators=(",", ":"), default=str)
    if len(text) > MAX_MESSAGE:  # keep it parseable: drop the bulky parts first
        result = {k: v for k, v in result.items() if k in ("ok", "action", "error", "reason")}
        text = json.dumps(result, separators=(",", ":"), default=str)[:MAX_MESSAGE]
    print(text, flush=True)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        log.warning("cannot write the termination message to %s: %s", path, e.strerror)


def _place(args: argparse.Namespace, flag: str, env_prefix: str, url: str | None = None) -> Any:
    from mobackup.engine.online_s3 import S3Place

    get = lambda name: getattr(args, f"{flag}_{name}")  # noqa: E731
    return S3Place.from_env(url or getattr(args, flag), env_prefix, endpoint=get("endpoint"), region=get("region"),
                            path_style=get("path_style") or None)


def _backup_result(summary: dict[str, Any]) -> dict[str, Any]:
    from mobackup.engine.model import BackupSummary
    from mobackup.engine.pitr import interval_fields

    result = {k: summary.get(k) for k in SUMMARY_KEYS}
    result.update({k: summary["extra"][k] for k in ("kind", "staged_bytes", "locked_until", "lock_mode")
                   if k in summary["extra"]})
    result.update(interval_fields(BackupSummary.from_dict(summary)))
    retries = summary["extra"].get("backup_retries") or []
    if retries:  # the operator posts a Warning Event; the reasons stay in the summary
        result.update(backup_retries=len(retries), backup_retry_reason=str(retries[-1])[:200])
    return {"ok": True, "action": "backup", "result": result}


def run_pitr(args: argparse.Namespace) -> dict[str, Any]:
    from mobackup.engine.mosql import SqlEndpoint
    from mobackup.engine.pitr_restore import parse_time, restore_in_place

    endpoint = SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user)
    res = restore_in_place(endpoint, parse_time(args.to_time), timeout=args.timeout, backup_id=args.backup_id)
    return {"ok": True, "action": "pitr", "result": {k: v for k, v in res.to_dict().items() if k != "checks"}}


def _pitr_extra(args: argparse.Namespace) -> dict[str, Any]:
    if not args.pitr_record:
        return {}
    from mobackup.engine.pitr import checked_record

    try:
        return {"pitr": checked_record(json.loads(args.pitr_record))}
    except ValueError as e:
        raise MobackupError(f"--pitr-record is not JSON: {e}") from None


def check_to_time(repo: Any, backup_id: str, to_time: str | None) -> None:
    """The operator chose the backup from its MOBackups' status: before a file is written, the
    repository's own record must agree that it can be brought to the time."""
    if not to_time:
        return
    from mobackup.engine.model import utc_now
    from mobackup.engine.pitr_restore import choose_backup, parse_time

    choose_backup([repo.load_summary(backup_id)], parse_time(to_time), utc_now(), backup_id)


def _shard_index(shards: int) -> int:
    """This pod's shard: its completion index in an Indexed Job."""
    text = os.environ.get("JOB_COMPLETION_INDEX", "")
    if not text.isdigit() or not 0 <= int(text) < shards:
        raise MobackupError(f"JOB_COMPLETION_INDEX {text!r} is not a shard index 0..{shards - 1} "
                            "(the ingest step runs as an Indexed Job)")
    return int(text)


def run_s3(args: argparse.Namespace, opts: Any, reporter: StatusReporter) -> dict[str, Any]:
    """Table data in S3: backup (one pod), --stage-only, a shard (--run --shards), commit; restore."""
    from mobackup.engine import online_s3, online_s3_sharded, s3_restore
    from mobackup.engine.repository import open_repository

    if args.action == "restore":
        from mobackup.engine.guards import refuse_if_listening

        for where in args.check_stopped:
            refuse_if_listening(where)
        target = _place(args, "target_s3", "MOBACKUP_TARGET_")
        hk_s3 = _place(args, "target_s3", "MOBACKUP_TARGET_", args.hk_data_s3) if args.hk_data_s3 else None
        repo = open_repository(opts, create=False)
        check_to_time(repo, args.backup_id, args.to_time)
        step = "shard" if args.shards else "finalize" if args.finalize else "all"
        shard = (_shard_index(args.shards), args.shards) if args.shards else (0, 1)
        res = s3_restore.restore_to_s3(repo, args.backup_id, target, overwrite=args.overwrite,
                                       local_fs_dir=args.local_fs_dir, reset_local_fs=args.reset_local_fs,
                                       hk_data_s3=hk_s3, step=step, shard=shard, progress=reporter).to_dict()
        summary = repo.load_summary(res["backup_id"]).to_dict()
        res.update({"backup_ts": summary.get("backup_ts"), "type": summary.get("type")})
        return {"ok": True, "action": "restore", "result": res}
    staging = _place(args, "staging", "MOBACKUP_STAGING_")
    if args.action == "commit":
        repo = open_repository(opts, create=False)
        return _backup_result(online_s3_sharded.commit_run(repo, args.run, staging, args.shards).to_dict())
    if args.run:
        repo = open_repository(opts, create=False)
        shard = _shard_index(args.shards or 0)
        totals = online_s3_sharded.ingest_shard(repo, args.run, staging, shard, args.shards, reporter)
        return {"ok": True, "action": "ingest", "result": {"run": args.run, "shard": shard, **totals.__dict__}}
    from mobackup.engine.mosql import MatrixOneSession, SqlEndpoint

    repo = open_for_backup(opts)
    with MatrixOneSession(SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user)) as mo:
        if args.stage_only:
            info = online_s3_sharded.stage_run(repo, mo, staging, source=args.source, backup_type=args.type,
                                               base_id=args.base, server_endpoint=args.staging_server_endpoint)
            return {"ok": True, "action": "stage",
                    "result": {"run_id": info.run_id, "backup_ts": info.backup_ts, "base_id": info.base_id,
                               "staged_files": info.staged_files, "staged_bytes": info.staged_bytes,
                               "mo_version": info.mo_version}}
        shared = _place(args, "shared_s3", "MOBACKUP_SHARED_") if args.shared_s3 else None
        summary = online_s3.run_online_s3_backup(repo, mo, staging, source=args.source, backup_type=args.type,
                                                 base_id=args.base, server_endpoint=args.staging_server_endpoint,
                                                 progress=reporter, extra=_pitr_extra(args), shared=shared)
    return _backup_result(summary.to_dict())


def run(args: argparse.Namespace, reporter: StatusReporter) -> dict[str, Any]:
    from mobackup.engine.repository import RepositoryOptions, open_repository

    if args.action == "pitr":
        return run_pitr(args)
    opts = RepositoryOptions.from_env(args.repo, compression=args.compression, parallelism=args.parallelism,
                                      bandwidth_limit=args.bandwidth_limit, lock_days=args.lock_days,
                                      lock_mode=args.lock_mode)
    if args.action == "copy":
        return run_copy(args, opts, reporter)
    if getattr(args, "staging", None) or getattr(args, "target_s3", None):
        return run_s3(args, opts, reporter)
    if args.action == "commit":
        raise MobackupError("commit needs --staging")
    if args.action == "backup" and (args.data_dir is None or args.source is None):
        raise MobackupError("backup needs --data-dir and --source (or --staging for table data in S3)")
    if args.action == "restore" and args.target is None:
        raise MobackupError("restore needs --target (or --target-s3 for table data in S3)")
    if args.action == "backup":
        repo = open_for_backup(opts)
        if args.online:
            from mobackup.engine.mosql import MatrixOneSession, SqlEndpoint
            from mobackup.engine.online import run_online_backup
            with MatrixOneSession(SqlEndpoint.from_env(args.sql_host, args.sql_port, args.sql_user)) as mo:
                summary = run_online_backup(repo, args.data_dir, mo, server_data_dir=args.server_data_dir,
                                            source=args.source, backup_type=args.type, base_id=args.base,
                                            progress=reporter, extra=_pitr_extra(args)).to_dict()
        else:
            from mobackup.engine.backup import run_backup
            summary = run_backup(repo, args.data_dir, source=args.source, backup_type=args.type,
                                 base_id=args.base, progress=reporter, mo_version=args.mo_version,
                                 extra=_pitr_extra(args)).to_dict()
        return _backup_result(summary)
    repo = open_repository(opts, create=False)
    if args.action == "restore":
        from mobackup.engine.restore import run_restore
        check_to_time(repo, args.backup_id, args.to_time)
        res = run_restore(repo, args.backup_id, args.target, force=args.overwrite, progress=reporter,
                          hostname=args.hostname).to_dict()
        summary = repo.load_summary(res.get("backup_id") or args.backup_id).to_dict()
        res.update({"backup_ts": summary.get("backup_ts"), "type": summary.get("type")})
        return {"ok": True, "action": "restore", "result": res}
    from mobackup.engine.errors import BackupNotFound
    from mobackup.engine.prune import delete_backup
    try:
        check_deletable(repo, args.backup_id, args.source, args.not_before)
        return {"ok": True, "action": "delete", "result": delete_backup(repo, args.backup_id).to_dict()}
    except BackupNotFound as e:  # deleted earlier (e.g. by `mobackup delete`): the goal is reached
        return {"ok": True, "action": "delete", "result": {"deleted": [], "note": str(e)}}


class DeleteRefused(MobackupError):
    """The backup to delete is not the run's (another source, or older than the run)."""


# A pod's clock may lag the API server's, which stamped the MOBackup's creation.
CLOCK_SKEW_SECONDS = 300


def check_deletable(repo: Any, backup_id: str, source: str | None, not_before: str | None) -> None:
    """The backup ID came from a Job's report (and a status): before deleting, the repository must
    say it is exactly this ID (no prefix), of `source`, and started after `not_before`."""
    if source is None and not_before is None:
        return
    from datetime import timedelta

    from .status import parse_iso

    summary = repo.load_summary(backup_id)  # exact: BackupNotFound when absent
    if source is not None and summary.source != source:
        raise DeleteRefused(f"backup {backup_id} is of source {summary.source!r}, not {source!r}")
    earliest, started = parse_iso(not_before), parse_iso(summary.started_at)
    if earliest and started and started < earliest - timedelta(seconds=CLOCK_SKEW_SECONDS):
        raise DeleteRefused(f"backup {backup_id} started at {summary.started_at}, before the MOBackup "
                            f"existed ({not_before})")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    reporter = StatusReporter(args.kind, args.name, args.namespace, args.progress_interval)
    code = 0
    try:
        result = run(args, reporter)
    except MobackupError as e:
        result = {"ok": False, "action": args.action, "reason": type(e).__name__, "error": str(e)}
        code = 1
    except Exception as e:  # report, never hide: the operator shows this in status
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full volume is for the user to fix (a bigger PVC, a larger /tmp), not a bug.
            result = {"ok": False, "action": args.action, "reason": "VolumeFull",
                      "error": f"no space left on device{f' writing {e.filename}' if e.filename else ''}: "
                               "give the volume more room"}
            code = 1
        else:
            traceback.print_exc()
            result = {"ok": False, "action": args.action, "reason": "InternalError",
                      "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            code = 2
    finally:
        reporter.close()
    _write_result(args.termination_log, result)
    time.sleep(0)  # let the log handler flush before the pod exits
    return code


if __name__ == "__main__":
    sys.exit(main())
