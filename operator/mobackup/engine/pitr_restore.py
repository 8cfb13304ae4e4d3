"""Restore to a point in time: choose the backup whose recoverable interval holds T (engine/pitr.py),
restore it into the target, start MatrixOne on it (as a restore drill does: the backup's host name,
the stock ports), run `RESTORE CLUSTER FROM PITR` to T, check, flush and stop it cleanly. The target
then holds the state at T.

Every refusal that the repository can decide (T in the future, after the newest BACKUPTS, before
every window, a backup without history or without a PITR) comes before anything is touched, and
names the covered intervals. MatrixOne parses the PITR timestamp in its process's local time zone:
the server is started with TZ=UTC and given T in UTC. MatrixOne measures the PITR's range from its
own clock at the restore, not from BACKUPTS: when T is older than that, the restored server's PITR
(a scratch copy's, never the source's) is lengthened first.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import MobackupError
from .model import BackupSummary, iso, parse_iso, utc_now
from .pitr import PitrWindow, hlc_time, holds_history, interval, range_clause, read_windows, windows_of
from .progress import Progress
from .repository import Repository
from .sqlconn import pymysql

STOP_GRACE_SECONDS = 120.0  # the restored state must be shut down cleanly, unlike a drill's scratch
RANGE_MARGIN_SECONDS = 3600  # added when the restored server's PITR must be lengthened to reach T


@dataclass
class PitrRestoreResult:
    backup_id: str
    target: str
    to_time: str  # T, UTC
    backup_ts: str
    recoverable_from: str | None
    recoverable_to: str
    pitr: str = ""
    pitr_lengthened: bool = False
    server_time: str | None = None  # the restored server's current_timestamp(6) after the restore
    zone_offset_minutes: int = 0  # the server process's UTC offset, which T was given in
    mo_version: str | None = None
    hostname: str | None = None
    restore_seconds: float = 0.0
    start_seconds: float = 0.0
    pitr_seconds: float = 0.0
    stop_seconds: float = 0.0
    total_seconds: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _span(summary: BackupSummary, span: tuple[datetime, datetime]) -> str:
    return f"{summary.id} [{iso(span[0])}, {iso(span[1])}]"


@dataclass(frozen=True)
class Candidate:
    """A backup as the choice of one to restore T from sees it: its recoverable interval, or why it
    has none (the operator builds these from its MOBackups' status, the CLI from the manifests)."""

    id: str
    span: tuple[datetime, datetime] | None
    why_not: str = ""  # when span is None


def _covered(candidates: Sequence[Candidate]) -> str:
    spans = sorted((c for c in candidates if c.span is not None), key=lambda c: c.span[1])  # type: ignore[index]
    return "; ".join(f"{c.id} [{iso(c.span[0])}, {iso(c.span[1])}]" for c in spans if c.span) or "none"


def refuse_future(candidates: Sequence[Candidate], t: datetime, now: datetime) -> None:
    if t.tzinfo is None:
        raise MobackupError("the time has no zone: give it in RFC 3339 (e.g. 2026-12-01T10:00:00Z)")
    if t > now:
        raise MobackupError(f"{iso(t)} is in the future (now {iso(now)}); recoverable intervals: "
                            f"{_covered(candidates)}")


def choose_among(candidates: Sequence[Candidate], t: datetime, now: datetime) -> Candidate:
    """Among the candidates whose interval holds T, the one with the earliest BACKUPTS (the least
    history to replay). MobackupError naming the covered intervals otherwise."""
    refuse_future(candidates, t, now)
    spans = sorted((c for c in candidates if c.span is not None), key=lambda c: c.span[1])  # type: ignore[index]
    covered = _covered(candidates)
    if not spans:
        kinds = "; ".join(f"{c.id}: {c.why_not}" for c in candidates) or "there is no backup"
        raise MobackupError(f"no backup can be restored to a point in time ({kinds})")
    newest = spans[-1]
    assert newest.span is not None
    if t > newest.span[1]:
        raise MobackupError(f"{iso(t)} is later than every backup's BACKUPTS: the newest recoverable point is "
                            f"{iso(newest.span[1])} (backup {newest.id}); recoverable intervals: {covered}")
    for candidate in spans:
        assert candidate.span is not None
        if candidate.span[0] <= t <= candidate.span[1]:
            return candidate
    earliest = min(c.span[0] for c in spans if c.span is not None)
    where = "earlier than every window" if t < earliest else "in no backup's interval"
    raise MobackupError(f"{iso(t)} is {where}; recoverable intervals: {covered}")


def candidate_of(summary: BackupSummary) -> Candidate:
    span = interval(summary)
    if span is not None:
        return Candidate(summary.id, span)
    return Candidate(summary.id, None, "no PITR history" if not holds_history(summary) else "no PITR windows recorded")


def choose_backup(summaries: Sequence[BackupSummary], t: datetime, now: datetime,
                  backup_id: str | None = None) -> tuple[BackupSummary, tuple[datetime, datetime]]:
    """The backup to restore T from, with its interval: `backup_id`'s, or among those whose interval
    holds T the one with the earliest BACKUPTS (choose_among). MobackupError naming the covered
    intervals otherwise."""
    candidates = [candidate_of(s) for s in summaries]
    refuse_future(candidates, t, now)
    covered = _covered(candidates)
    if backup_id is not None:
        chosen = [s for s in summaries if s.id == backup_id]
        if not chosen:
            raise MobackupError(f"no backup {backup_id}")
        summary = chosen[0]
        if not holds_history(summary):
            raise MobackupError(f"backup {summary.id} holds no PITR history (MatrixOne's BACKUP output alone): only "
                                f"a cold copy of the whole data directory, or an online backup taken while a cluster "
                                f"PITR existed (of table data in S3: with --shared-s3, in one process), does; "
                                f"recoverable intervals: {covered}")
        rec = summary.extra.get("pitr")
        if isinstance(rec, dict) and rec.get("error"):
            raise MobackupError(f"backup {summary.id}: its MatrixOne did not list PITRs at backup time (a MatrixOne "
                                f"without PITR?): {rec['error']}; recoverable intervals: {covered}")
        windows = windows_of(summary)
        if windows is not None and not windows:
            raise MobackupError(f"backup {summary.id}: its MatrixOne had no cluster PITR at backup time; "
                                f"recoverable intervals: {covered}")
        span = interval(summary)
        if span is None:  # a cold copy made without SQL: the restored server's own PITRs decide
            end = hlc_time(summary.backup_ts)
            if t > end:
                raise MobackupError(f"{iso(t)} is later than backup {summary.id}'s BACKUPTS {iso(end)}")
            return summary, (t, end)
        if not span[0] <= t <= span[1]:
            raise MobackupError(f"{iso(t)} is outside backup {_span(summary, span)}; recoverable intervals: "
                                f"{covered}")
        return summary, span
    if not summaries:
        raise MobackupError("no backup can be restored to a point in time (the repository holds no backup)")
    best = choose_among(candidates, t, now)
    summary = next(s for s in summaries if s.id == best.id)
    assert best.span is not None
    return summary, best.span


def _check_server_binary(mo_service: Path) -> Path:
    from .drill import busy_ports, launch_config

    if not os.access(mo_service, os.X_OK):
        raise MobackupError(f"{mo_service}: not an executable mo-service")
    busy = busy_ports()
    if busy:
        raise MobackupError(f"port(s) {', '.join(map(str, busy))} in use: a MatrixOne already runs on this machine "
                            "(its stock configuration uses fixed ports); the restore starts one on the target")
    return launch_config(mo_service)


def _zone_offset(local_minus_utc: timedelta) -> timedelta:
    """The server process's UTC offset, from its current_timestamp() - utc_timestamp() read together:
    zones are whole quarter hours, within 14 h of UTC."""
    quarters = round(local_minus_utc.total_seconds() / 900)
    if abs(local_minus_utc.total_seconds() - quarters * 900) > 60 or abs(quarters) > 14 * 4:
        raise MobackupError(f"MatrixOne's local time is {local_minus_utc} off UTC: not a time zone")
    return timedelta(seconds=quarters * 900)


def _pitr_time(t: datetime, offset: timedelta = timedelta(0)) -> str:
    """T as RESTORE ... FROM PITR reads it: the server process's local time (UTC plus `offset`, its
    offset now: a zone whose offset changed since T, daylight saving time, would shift it; the CLI's
    server runs with TZ=UTC), microseconds."""
    return (t.astimezone(UTC) + offset).strftime("%Y-%m-%d %H:%M:%S.%f")


def _usable_window(windows: list[PitrWindow], t: datetime) -> PitrWindow:
    usable = [w for w in windows if parse_iso(w.created) < t]
    if not usable:
        names = ", ".join(f"{w.name} (created {w.created})" for w in windows) or "none"
        raise MobackupError(f"the restored MatrixOne has no cluster PITR created before {iso(t)}: {names}")
    return max(usable, key=lambda w: w.range_seconds)


def run_restore_to_time(
    repo: Repository,
    t: datetime,
    target: Path,
    mo_service: Path,
    *,
    backup_id: str | None = None,
    force: bool = False,
    checks: Sequence[Any] = (),  # drill.UserCheck
    timeout: float = 600.0,
    sql_user: str = "root",
    sql_password: str | None = None,
    progress: Progress | None = None,
    hostname: str | None = None,
) -> PitrRestoreResult:
    """Restore the backup covering `t` into `target` and bring it to `t` (see the module's text).
    `hostname`: the host that will serve the data. The log service data MatrixOne writes at its first
    start is bound to the host name it ran under: a backup whose log data belongs to another host is
    refused (as `restore --hostname`), and one without (an online backup) is brought to `t` under
    `hostname`, else under the backup's own host name, else this machine's.
    MobackupError on any refusal or failure; after the files were restored, its message says that
    the target holds the backup as of BACKUPTS, not T."""
    from .drill import (
        DEFAULT_PASSWORD,
        CheckResult,
        DrillResult,
        ScratchServer,
        foreign_hostname,
        run_user_checks,
        wait_for_sql,
    )
    from .restore import run_restore

    clock = time.monotonic()
    mo_service = Path(mo_service).absolute()
    target = Path(target).absolute()
    resolved = repo.resolve_id(backup_id) if backup_id else None
    summary, span = choose_backup(of_placement(repo.list_backups(), resolved, s3=False), t, utc_now(), resolved)
    etc = _check_server_binary(mo_service)
    known = interval(summary)  # None for a cold copy made without SQL: its restored server decides
    result = PitrRestoreResult(summary.id, str(target), iso(t), summary.backup_ts,
                               iso(known[0]) if known else None, iso(span[1]))
    password = sql_password if sql_password is not None else os.environ.get("MOBACKUP_SQL_PASSWORD", DEFAULT_PASSWORD)
    started = time.monotonic()
    restored = run_restore(repo, summary.id, target, force=force, progress=progress, hostname=hostname)
    result.restore_seconds = round(time.monotonic() - started, 3)
    # The server's working directory: its configuration and a link to the target as ./mo-data.
    workdir = Path(tempfile.mkdtemp(prefix=".mobackup-pitr-", dir=target.parent))
    server: ScratchServer | None = None
    try:
        shutil.copytree(etc, workdir / "etc")
        (workdir / "mo-data").symlink_to(target, target_is_directory=True)
        result.hostname = foreign_hostname(target) or (hostname if hostname != socket.gethostname() else None)
        _check_server_binary(mo_service)  # again: the restore took a while, and SQL must reach OUR server
        server = ScratchServer(mo_service, workdir, result.hostname, env={"TZ": "UTC"})
        started = time.monotonic()
        server.start()

        def gone() -> str | None:
            if server is not None and server.alive():
                return None
            return f"mo-service exited before it answered SQL; its log: {server.log_tail() if server else ''}"

        connection = wait_for_sql(6001, sql_user, password, time.monotonic() + timeout, gone)
        result.start_seconds = round(time.monotonic() - started, 3)
        with connection:
            bring_to_time(connection, t, result)
            report = DrillResult(summary.id)
            run_user_checks(connection, checks, report)
            result.checks = [c.to_dict() for c in report.checks]
            if report.reason:
                raise MobackupError(f"check after the restore to {iso(t)} failed: {report.reason}")
            result.checks.insert(0, CheckResult("server answers", True, result.mo_version or "").to_dict())
            _flush(connection)
        started = time.monotonic()
        clean = server.stop(STOP_GRACE_SECONDS)
        result.stop_seconds = round(time.monotonic() - started, 3)
        if not clean:
            raise MobackupError(f"the restored MatrixOne did not stop within {STOP_GRACE_SECONDS:.0f} s and was "
                                f"killed; the target holds the state at {iso(t)} if it starts, check it")
    except (MobackupError, OSError, pymysql.MySQLError) as error:
        reason = error.args[-1] if isinstance(error, pymysql.MySQLError) else error
        if result.server_time is None:
            state = f"the target holds backup {summary.id} as of its BACKUPTS, not the state at {iso(t)}"
        else:
            state = f"MatrixOne restored the target to {iso(t)} before this"
        raise MobackupError(f"restore to {iso(t)} failed: {reason}; {state} ({restored.file_count} files)") from None
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        result.total_seconds = round(time.monotonic() - clock, 3)
    return result


def is_s3_resident(summary: BackupSummary) -> bool:
    return summary.extra.get("resident") == "s3"


def of_placement(summaries: Sequence[BackupSummary], backup_id: str | None, *, s3: bool) -> list[BackupSummary]:
    """The backups a restore to a time can use: of a data directory for --target, of S3-resident
    data for --target-s3 (the other kind's objects are framed otherwise). A backup named by ID that
    is of the other kind is refused, naming where it goes."""
    if backup_id is not None:
        named = [b for b in summaries if b.id == backup_id]
        if named and is_s3_resident(named[0]) != s3:
            raise MobackupError(f"backup {backup_id} is of " + (
                "a data directory: restore it to a time with --target DIR" if s3 else
                "S3-resident table data: restore it to a time with --target-s3 (and --sql-host)"))
    fitting = [b for b in summaries if is_s3_resident(b) == s3]
    if summaries and not fitting:
        raise MobackupError(f"the repository's {len(summaries)} backups are all of " + (
            "data directories: restore them to a time with --target DIR" if s3 else
            "S3-resident table data: restore them to a time with --target-s3 (and --sql-host)"))
    return fitting


def run_restore_to_time_s3(
    repo: Repository,
    t: datetime,
    target: Any,  # online_s3.S3Place: the cluster's SHARED key prefix
    endpoint: Any,  # mosql.SqlEndpoint of the restored cluster (a sys-account user)
    *,
    backup_id: str | None = None,
    overwrite: bool = False,
    local_fs_dir: Path | None = None,
    reset_local_fs: bool = False,
    hk_data_s3: Any = None,
    timeout: float = 600.0,
    progress: Progress | None = None,
    restored: Any = None,  # called with the S3RestoreResult once the objects are back
) -> PitrRestoreResult:
    """Restore to `t` a cluster whose table data is in S3: choose the S3-resident backup whose
    interval holds `t` (refusals before anything is touched), restore its objects (BACKUP's and the
    PITR history's) into `target` and the ID allocator state (restore_to_s3), then wait up to
    `timeout` seconds for the cluster, started on them meanwhile, to answer SQL at `endpoint`, and
    bring it to `t` there (restore_in_place)."""
    from .s3_restore import restore_to_s3

    clock = time.monotonic()
    resolved = repo.resolve_id(backup_id) if backup_id else None
    summary, span = choose_backup(of_placement(repo.list_backups(), resolved, s3=True), t, utc_now(), resolved)
    objects = restore_to_s3(repo, summary.id, target, overwrite=overwrite, local_fs_dir=local_fs_dir,
                            reset_local_fs=reset_local_fs, hk_data_s3=hk_data_s3, progress=progress)
    if restored is not None:
        restored(objects)
    try:
        result = restore_in_place(endpoint, t, timeout=timeout, backup_id=summary.id, recoverable=span)
    except MobackupError as error:
        raise MobackupError(f"restore to {iso(t)} failed: {error}; {target.url} holds backup {summary.id} as of its "
                            f"BACKUPTS, not the state at {iso(t)}") from None
    result.target = target.url
    result.backup_ts = summary.backup_ts
    result.restore_seconds = objects.duration_seconds
    result.total_seconds = round(time.monotonic() - clock, 3)
    return result


RESTORE_READ_TIMEOUT = 6 * 3600.0  # RESTORE CLUSTER FROM PITR answers when it is done


def restore_in_place(endpoint: Any, t: datetime, *, timeout: float, backup_id: str = "",
                     recoverable: tuple[datetime, datetime] | None = None) -> PitrRestoreResult:
    """The PITR step of a restore in place (the operator's MORestore with pointInTime, run by a Job):
    the files of `backup_id` are back and its MatrixOne was started on them; wait until it answers
    SQL (`timeout` seconds), bring it to `t` (RESTORE CLUSTER FROM PITR, in the server's own zone),
    checkpoint. `endpoint`: mosql.SqlEndpoint of a sys-account user."""
    from . import sqlconn
    from .drill import wait_for_sql

    clock = time.monotonic()
    result = PitrRestoreResult(backup_id, f"{endpoint.host}:{endpoint.port}", iso(t), "",
                               iso(recoverable[0]) if recoverable else None,
                               iso(recoverable[1]) if recoverable else "")
    probe = wait_for_sql(endpoint.port, endpoint.user, endpoint.password, time.monotonic() + timeout,
                         host=endpoint.host)
    probe.close()
    result.start_seconds = round(time.monotonic() - clock, 3)
    try:
        connection = sqlconn.connect(endpoint.host, endpoint.port, endpoint.user, endpoint.password,
                                     autocommit=True, connect_timeout=10, read_timeout=RESTORE_READ_TIMEOUT)
    except pymysql.MySQLError as error:
        raise MobackupError(f"cannot connect to MatrixOne at {endpoint.host}:{endpoint.port}: "
                            f"{error.args[-1]}") from None
    with connection:
        try:
            bring_to_time(connection, t, result)
            _flush(connection)
        except pymysql.MySQLError as error:
            raise MobackupError(f"MatrixOne at {endpoint.host}:{endpoint.port}: {error.args[-1]}") from None
    result.total_seconds = round(time.monotonic() - clock, 3)
    return result


def bring_to_time(connection: Any, t: datetime, result: PitrRestoreResult) -> None:
    with connection.cursor() as cursor:
        # RESTORE ... FROM PITR reads T in the server process's local zone (not the session's, which
        # the restored data may set otherwise): SYSTEM shows it, and it must be UTC (TZ=UTC).
        cursor.execute("set time_zone = 'SYSTEM'")
        cursor.execute("select version(), current_timestamp(), utc_timestamp()")
        version, local, utc = cursor.fetchone()
        result.mo_version = str(version)
        if not isinstance(local, datetime) or not isinstance(utc, datetime):
            raise MobackupError(f"the restored MatrixOne answered times {local!r}, {utc!r}")
        offset = _zone_offset(local - utc)
        result.zone_offset_minutes = int(offset.total_seconds() // 60)
        windows = read_windows(connection)
        if not windows:
            raise MobackupError("the restored MatrixOne has no cluster PITR")
        window = _usable_window(windows, t)
        result.pitr = window.name
        # MatrixOne refuses T older than its own now minus the range: lengthen this copy's PITR.
        needed = (utc_now() - t).total_seconds() + RANGE_MARGIN_SECONDS
        if window.range_seconds < needed:
            value, unit = range_clause(needed)
            cursor.execute(f"alter pitr `{window.name}` range {value} '{unit}'")
            result.pitr_lengthened = True
        started = time.monotonic()
        try:
            cursor.execute(f"restore cluster from pitr `{window.name}` '{_pitr_time(t, offset)}'")
        except pymysql.MySQLError as error:
            reason = str(error.args[-1])
            if "does not exist" in reason:  # MatrixOne 1.3, seen for an instant just after the PITR was made
                reason += (f" (PITR {window.name} was created {window.created}: MatrixOne 1.3 refused instants in "
                           "the first seconds of a PITR, before a checkpoint)")
            raise MobackupError(f"MatrixOne refused RESTORE CLUSTER FROM PITR: {reason}") from None
        result.pitr_seconds = round(time.monotonic() - started, 3)
        cursor.execute("select current_timestamp(6)")
        now = cursor.fetchone()[0]
        result.server_time = str(now)


def _flush(connection: Any) -> None:
    """A checkpoint, so the restored state is in objects and checkpoints before the stop."""
    from .mosql import _mo_ctl_ok

    with connection.cursor() as cursor:
        cursor.execute("select mo_ctl('dn', 'checkpoint', '')")
        answer = cursor.fetchone()[0]
    if not _mo_ctl_ok(answer):
        raise MobackupError(f"MatrixOne refused the checkpoint after the restore: {answer}")


def parse_time(text: str) -> datetime:
    """RFC 3339 (a zone required: Z or ±hh:mm)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise MobackupError(f"invalid time {text!r}: give RFC 3339, e.g. 2026-12-01T10:00:00Z") from None
    if value.tzinfo is None:
        raise MobackupError(f"time {text!r} has no zone: add Z or an offset such as +02:00")
    return value

