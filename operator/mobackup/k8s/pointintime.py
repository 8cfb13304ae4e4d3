"""Point-in-time recovery in the operator (issue 19): thin over engine/pitr.py and engine/pitr_restore.py.

MOBackup (and MOBackupSchedule) `spec.pointInTime.window`: before the copy (before MatrixOne is
stopped or snapshotted), the operator makes sure a cluster PITR of at least that range exists and
reads the PITR windows over source.sql (engine pitr.prepare); the record is kept in
status.pointInTime and handed to the backup Job, which stores it in the manifest (extra.pitr) and
reports the recoverable interval (status.recoverableFrom/To, condition PointInTimeRecoverable).

MORestore `spec.pointInTime`: the backup is chosen from the MOBackups' recorded intervals (engine
choose_among) before anything is touched; the restore Job re-checks the choice against the
repository's own record before it writes a file; after the files are back and the workload is
scaled back, a second Job (`agent pitr`) waits for SQL and runs RESTORE CLUSTER FROM PITR; then the
usual sqlCheck. Why a Job and not the operator (which runs sqlCheck itself): the statement takes as
long as MatrixOne needs to replay the history, and the operator's resync is one thread for every
resource; in a Job it has its own deadline (spec.job), and its password reaches only that pod, as
an Online backup's does (env from the opted-in Secret).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mobackup.engine.errors import MobackupError
from mobackup.engine.model import utc_now

from . import events, jobs, models, status, storage
from .controller import (
    RESTORE_REASONS,
    Ctx,
    Fail,
    completed_backup,
    finish,
    job_outcome,
    meta,
    owner_of,
    patch_fields,
    recorded_backup_id,
    run_key,
    take_lease,
    transition,
)
from .kube import NotFound

CONDITION = "PointInTimeRecoverable"

# ------------------------------------------------------------------------------------------- backup


def _record_from_status(saved: dict[str, Any]) -> dict[str, Any]:
    rec = {k: v for k, v in saved.items() if k in ("history", "ensured", "windows", "reason", "error")}
    if saved.get("readAt"):
        rec["read_at"] = saved["readAt"]
    return rec


def backup_record(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec,
                  sql: models.SqlEndpoint | None = None) -> dict[str, Any] | None:
    """extra.pitr for the backup Job, made once per run before MatrixOne is stopped or snapshotted
    (a Stop backup's Job cannot reach SQL). None without an SQL endpoint (`sql`: a MatrixOneCluster's,
    else source.sql). Fail when spec.pointInTime asks for a window that cannot be made: before
    anything was stopped. Table data in S3: the Job takes the history from the cluster's prefix."""
    from mobackup.engine.mosql import SqlEndpoint, connect
    from mobackup.engine.pitr import checked_record, prepare, record

    saved = (obj.get("status") or {}).get("pointInTime")
    if isinstance(saved, dict) and "history" in saved:
        try:
            return checked_record(_record_from_status(saved))
        except MobackupError as e:
            raise Fail("InvalidStatus", f"status.pointInTime: {e}") from None
    sql = sql or spec.sql
    if sql is None:
        return None
    ns, _, _ = meta(obj)
    history = spec.consistency != "Online"  # a cold copy of the whole directory holds the history
    try:
        password = storage.secret_value(ctx.kube, ns, sql.password)
    except storage.MissingInput as e:
        raise Fail(e.reason, f"source.sql: {e}") from None
    try:
        connection = connect(SqlEndpoint(sql.host, sql.port, sql.user, password, sql.database, timeout=10))
    except MobackupError as e:
        if spec.pitr_window is not None:
            raise Fail("PointInTimeFailed", f"spec.pointInTime.window: {e}") from None
        rec = {"history": history, "windows": [], "error": str(e), "read_at": status.iso()}
    else:
        try:
            rec = prepare(connection, source=spec.source_name, window_seconds=spec.pitr_window, history=history) \
                if spec.pitr_window is not None else record(connection, history=history)
        except MobackupError as e:
            raise Fail("PointInTimeFailed", f"spec.pointInTime.window: {e}") from None
        finally:
            connection.close()
    saved = {k: v for k, v in rec.items() if k != "read_at"}
    patch_fields(ctx, obj, pointInTime={**saved, "readAt": rec.get("read_at")})
    if rec.get("ensured"):
        events.emit(ctx.kube, obj, "Normal", "PointInTimeWindow", f"cluster PITR {rec['ensured']}")
    return rec


def recoverable_condition(st: dict[str, Any]) -> tuple[bool, str, str]:
    """(status, reason, message) of the PointInTimeRecoverable condition of a Completed MOBackup."""
    if st.get("recoverableTo"):
        return True, "Recoverable", (f"a MORestore with pointInTime can bring this backup to any instant of "
                                     f"[{st.get('recoverableFrom')}, {st['recoverableTo']}]")
    rec = st.get("pointInTime") or {}
    if not rec:
        return False, "NoPITRWindows", ("no PITR windows recorded: the backup had no source.sql to read them "
                                        "through (set source.sql and pointInTime.window)")
    if rec.get("history") is False:
        return False, "NoHistory", str(rec.get("reason") or "the backup holds no PITR history")
    if rec.get("error"):
        return False, "NoPITRWindows", f"MatrixOne did not list its PITRs before the copy: {rec['error']}"
    if not rec.get("windows"):
        return False, "NoPITR", ("MatrixOne had no cluster PITR before the copy: set spec.pointInTime.window "
                                 "(the history starts when the PITR is made)")
    return False, "NoInterval", "the recorded PITR windows cover no instant up to the backup's backupTS"


def backup_condition(obj: dict[str, Any], st: dict[str, Any]) -> dict[str, Any] | None:
    """The PointInTimeRecoverable condition (why not, when not) of a MOBackup completing with status
    `st`, set in the same patch as the phase (whoever sees Completed finds it): for a backup that asked
    for a window, recorded PITRs or is recoverable; None for others (a user who never set up
    point-in-time recovery gets no False condition on every backup)."""
    asked = bool(((obj.get("spec") or {}).get("pointInTime") or {}).get("window"))
    if not (asked or st.get("recoverableTo") or (st.get("pointInTime") or {}).get("windows")):
        return None
    ok, reason, message = recoverable_condition(st)
    return status.condition(CONDITION, ok, reason, message, obj["metadata"].get("generation"))


# ------------------------------------------------------------------------------------------ restore


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _span(st: dict[str, Any]) -> tuple[datetime, datetime] | None:
    try:
        start, end = status.parse_iso(st.get("recoverableFrom")), status.parse_iso(st.get("recoverableTo"))
    except ValueError:
        return None
    return (start, end) if start and end and start <= end else None


def _candidates(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> list[dict[str, Any]]:
    """spec.backupName's MOBackup, or the Completed MOBackups of the target's own volume (in place)."""
    ns, _, _ = meta(obj)
    if spec.backup_name:
        return [completed_backup(ctx, ns, spec.backup_name, RESTORE_REASONS, "MOBackup")]
    data_url = None
    if spec.volume is None:  # table data in S3: the MOBackups of the same SHARED prefix
        from .controller import s3_source
        data_url = s3_source(ctx, ns, spec.cluster, spec.shared, spec.sql_check).shared.data_url
    out = []
    for backup in ctx.kube.list_cr("MOBackup", ns):
        if (backup.get("status") or {}).get("phase") != "Completed":
            continue
        try:
            bspec = models.parse_backup(backup.get("spec") or {}, ns)
            if not recorded_backup_id(backup):
                continue
        except (models.SpecError, Fail):
            continue
        if bspec.volume != spec.volume or (spec.storage and bspec.storage != spec.storage):
            continue
        if data_url is not None and (backup.get("status") or {}).get("sharedStorage") != data_url:
            continue
        out.append(backup)
    return out


def resolve(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> tuple[str, str, str | None]:
    """(backup id, storage name, backupTS) of the backup to bring to spec.pointInTime; Fail with
    reason PointInTimeNotRecoverable, naming the recoverable intervals, before anything is touched."""
    assert spec.point_in_time is not None
    where = f"MOBackup {spec.backup_name}" if spec.backup_name else \
        f"the Completed MOBackups of {spec.target_label}{f' in {spec.storage}' if spec.storage else ''}"
    return choose(ctx, obj, spec.point_in_time, _candidates(ctx, obj, spec), where)


def choose(ctx: Ctx, obj: dict[str, Any], at: datetime, backups: list[dict[str, Any]],
           where: str) -> tuple[str, str, str | None]:
    """(backup id, storage name, backupTS) of the MOBackup among `backups` whose recoverable interval
    holds `at` (engine choose_among), recorded in status.pointInTime; Fail PointInTimeNotRecoverable,
    naming the intervals and `where` the operator looked, otherwise."""
    from mobackup.engine.pitr_restore import Candidate, choose_among

    by_name = {b["metadata"]["name"]: b for b in backups}
    candidates = []
    for name, backup in sorted(by_name.items()):
        st = backup.get("status") or {}
        span = _span(st)
        candidates.append(Candidate(name, span, "" if span else recoverable_condition(st)[2]))
    try:
        chosen = choose_among(candidates, at, utc_now())
    except MobackupError as e:
        raise Fail("PointInTimeNotRecoverable", f"{e} (looked at {where})") from None
    backup = by_name[chosen.id]
    bst = backup["status"]
    storage_name = (backup.get("spec") or {}).get("storageRef", {}).get("name") or bst.get("storage")
    assert chosen.span is not None
    patch_fields(ctx, obj, pointInTime={"time": rfc3339(at), "backupName": chosen.id,
                                        "recoverableFrom": bst.get("recoverableFrom"),
                                        "recoverableTo": bst.get("recoverableTo")})
    return str(bst["backupID"]), str(storage_name), bst.get("backupTS")


def pitr_job(owner: jobs.Owner, spec: models.RestoreSpec, backup_id: str,
             defaults: jobs.OperatorDefaults) -> dict[str, Any]:
    """`agent pitr`: waits for sqlCheck's endpoint, RESTORE CLUSTER FROM PITR to the time, checkpoint."""
    chk, at = spec.sql_check, spec.point_in_time
    assert chk is not None and at is not None
    args = ["--sql-host", chk.host, "--sql-port", str(chk.port), "--sql-user", chk.user, "--to-time", at.isoformat(),
            "--backup-id", backup_id, "--timeout", str(chk.timeout_seconds)]
    env = [jobs.secret_env("MOBACKUP_SQL_PASSWORD", chk.password.name, chk.password.key)]
    job = jobs.build_job(owner=owner, action="pitr", args=args, env=env, volumes=[], mounts=[], overrides=spec.job,
                         defaults=defaults)
    job["spec"]["backoffLimit"] = 0  # a restore statement is never repeated on its own
    return job


def start_job(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec, message: str, **fields: Any) -> None:
    """The files are back and the workload scaled back: the PITR Job (status reason RestoringToTime)."""
    from .controller import create_job

    backup_id = str(fields.get("backupID") or (obj.get("status") or {}).get("backupID") or "")
    try:
        body = pitr_job(owner_of(obj), spec, backup_id, ctx.defaults)
    except jobs.JobPolicyError as e:
        raise Fail("JobOverrideNotAllowed", str(e)) from None
    name = create_job(ctx, obj, body)
    at = rfc3339(spec.point_in_time) if spec.point_in_time else ""
    saved = (obj.get("status") or {}).get("pointInTime") or {}
    transition(ctx, obj, "Running", "RestoringToTime",
               f"{message}; Job {name} brings MatrixOne to {at} once it answers SQL", **fields,
               pointInTime={**saved, "jobName": name})


def follow_job(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> None:
    ns, _, _ = meta(obj)
    st = obj.get("status") or {}
    name = jobs.job_name(owner_of(obj), "pitr")
    key = run_key(obj, spec)
    at = rfc3339(spec.point_in_time) if spec.point_in_time else ""
    state_of = (f"the volume holds backup {st.get('backupID')} as of its backupTS {st.get('backupTS')}, not the "
                f"state at {at}")
    try:
        job = ctx.kube.get_job(ns, name)
    except NotFound:
        finish(ctx, obj, key, spec.workload, False, "JobVanished",
               f"Job {name} disappeared before reporting a result; {state_of} unless it ran")
        return
    state, result, fallback = job_outcome(ctx, ns, job)
    if state.state == "Running":
        take_lease(ctx, obj, key)
        return
    if not (result and result.get("ok")):
        error = (result or {}).get("error") or f"Job {name}: {state.reason}: {fallback}".strip()
        finish(ctx, obj, key, spec.workload, False, "PointInTimeFailed", f"{error}; {state_of}")
        return
    r = result.get("result") or {}
    saved = st.get("pointInTime") or {}
    done = {**saved, "pitr": r.get("pitr"), "pitrLengthened": bool(r.get("pitr_lengthened")),
            "serverTime": r.get("server_time"), "zoneOffsetMinutes": r.get("zone_offset_minutes"),
            "pitrSeconds": r.get("pitr_seconds")}
    message = (f"restored backup {st.get('backupID')} and brought it to {at} with PITR {r.get('pitr')} (server time "
               f"after: {r.get('server_time')})")
    events.emit(ctx.kube, obj, "Normal", "RestoredToTime", message)
    assert spec.sql_check is not None  # pointInTime requires it (models.parse_restore)
    transition(ctx, obj, "Running", "CheckingSQL", message + "; checking SQL", sqlCheckSince=status.iso(),
               pointInTime={k: v for k, v in done.items() if v is not None})
