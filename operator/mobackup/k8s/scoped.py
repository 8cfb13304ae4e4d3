"""Scoped MORestore (`spec.scope` with `spec.target.sql`): tables of a backup copied into the RUNNING
MatrixOne, which is never stopped (engine/scoped.py does the copy; `mobackup restore --only` is the CLI).

One pass (controller-style, state in status) does:
- Pending: resolve the backup, then every refusal before anything is made or written: the names
  asked for are in the backup (its recorded catalog, read from an S3 repository), the scratch volume
  is big enough for the backup (its size plus room for the server), target.sql's Secret is usable,
  the live server answers and is MatrixOne, no target table exists (unless replace). Then a scratch
  PVC and one Job shaped like a drill's (k8s/drill.py scratch_job): the restore into the PVC as an
  init container, the scratch MatrixOne, and the loader (k8s/scopedload.py) beside it, which checks
  it all again against the restored server before its first write to the live one;
- Running: reads the restore's and the loader's outcome from the pod (termination messages, as the
  drill's checker); the Job's activeDeadlineSeconds bounds a server that never answers;
- Completed/Failed: each table's rows, checksum and duration in status, Events and the restores'
  metrics, and every scratch object (Job, pod, PVC) deleted (again on the next pass after a crash).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import controller, drill, jobs, models, status, storage
from .controller import Ctx, Fail, meta, owner_of, transition
from .kube import Conflict
from .pointintime import rfc3339
from .storage import pvc_made_for

log = logging.getLogger("mobackup.scoped")

KIND = "MORestore"
ACTION = "scoped"
LOADER = "loader"
DEFAULT_SIZE = "10Gi"
DEFAULT_TIMEOUT = 900
LIVE_CONNECT_SECONDS = 10.0  # the operator's own check of the live server: bounded, it holds a pass


@dataclass(frozen=True)
class ScopedSpec:
    backup_name: str | None
    backup_id: str | None
    storage: str | None
    only: tuple[str, ...]  # DB or DB.TABLE, as `mobackup restore --only`
    as_name: str | None
    suffix: str | None
    replace: bool
    sql: models.SqlEndpoint  # the live MatrixOne
    size: str
    storage_class: str | None
    timeout: int
    job: models.JobOverrides
    copy_method: str = "insert"  # or "load" (engine/scoped.py copy_rows)
    point_in_time: datetime | None = None  # spec.pointInTime: the tables as they were then


EXPORT_VOLUME = "export"
EXPORT_PATH = "/mobackup-export"  # the pod's own emptyDir: the scratch MatrixOne's exports (method load)


def is_scoped(spec: dict[str, Any] | None) -> bool:
    return isinstance(spec, dict) and spec.get("scope") is not None


def parse_scoped(spec: dict[str, Any]) -> ScopedSpec:
    from mobackup.engine.errors import MobackupError
    from mobackup.engine.scoped import scoped_options

    name, bid = spec.get("backupName"), spec.get("backupID")
    at = models.point_in_time(spec)
    if at is not None:
        if bid:
            raise models.SpecError("spec.pointInTime takes backupName or no backup (the operator picks one among "
                                   "the backups of target.sql's MatrixOne), not backupID")
    elif bool(name) == bool(bid):
        raise models.SpecError("spec: set exactly one of backupName or backupID")
    storage_name = (spec.get("storageRef") or {}).get("name")
    if bid and not storage_name:
        raise models.SpecError("spec.backupID needs spec.storageRef")
    scope = spec.get("scope")
    if not isinstance(scope, dict):
        raise models.SpecError("spec.scope must be an object")
    target = spec.get("target") or {}
    others = sorted(k for k in target if k != "sql")
    if not target.get("sql") or others:
        raise models.SpecError("spec.scope copies tables into a running MatrixOne: spec.target takes sql only (its "
                               f"endpoint){f', not {others}' if others else ''}")
    for key in ("overwrite", "sqlCheck", "parallelism"):
        if spec.get(key):
            raise models.SpecError(f"spec.{key} does not apply to a scoped restore (spec.scope)")
    if int(spec.get("parallelPods") or 1) != 1:
        raise models.SpecError("spec.parallelPods does not apply to a scoped restore (spec.scope)")
    only = tuple([str(d) for d in scope.get("databases") or []] + [str(t) for t in scope.get("tables") or []])
    for table in scope.get("tables") or []:
        if "." not in str(table):
            raise models.SpecError(f"spec.scope.tables: {table!r} is not <database>.<table>")
    as_name, suffix = scope.get("as") or None, scope.get("suffix")
    try:
        scoped_options(only, as_name, suffix, bool(scope.get("replace")))
    except MobackupError as e:
        raise models.SpecError("spec.scope: " + str(e).replace("--only", "databases/tables")
                               .replace("--as", "as").replace("--suffix", "suffix").replace("--replace", "replace")
                               ) from None
    sql = models._sql(target["sql"], "spec.target.sql")
    assert sql is not None
    scratch = scope.get("scratch") or {}
    size = str(scratch.get("size") or DEFAULT_SIZE)
    if not models.QUANTITY.match(size):
        raise models.SpecError(f"spec.scope.scratch.size {size!r} is not a quantity like 10Gi")
    timeout = int(scope.get("timeoutSeconds") or DEFAULT_TIMEOUT)
    if timeout < 30:
        raise models.SpecError("spec.scope.timeoutSeconds must be at least 30")
    copy_method = str(scope.get("copyMethod") or "insert")
    if copy_method not in ("insert", "load"):
        raise models.SpecError(f"spec.scope.copyMethod {copy_method!r}: insert or load")
    return ScopedSpec(
        copy_method=copy_method, point_in_time=at,
        backup_name=models._name(name, "spec.backupName") if name else None, backup_id=bid,
        storage=models._name(storage_name, "spec.storageRef.name") if storage_name else None, only=only,
        as_name=as_name, suffix=suffix, replace=bool(scope.get("replace")), sql=sql, size=size,
        storage_class=scratch.get("storageClassName") or None, timeout=timeout,
        job=models.JobOverrides(dict(spec.get("job") or {})))


def scoped_job(owner: jobs.Owner, spec: ScopedSpec, storage_spec: models.StorageSpec, backup_id: str,
               hostname: str | None, defaults: jobs.OperatorDefaults, mo: drill.MatrixOneSettings) -> dict[str, Any]:
    """The drill's scratch Job with the loader beside the scratch MatrixOne."""
    job, restore = drill.scratch_job(owner, spec.job, storage_spec, backup_id, hostname, defaults, mo, ACTION,
                                     spec.timeout + drill.RESTORE_ALLOWANCE_SECONDS)
    loader = drill.sidecar_container(restore, LOADER, storage_spec)
    loader["command"] = ["python", "-m", "mobackup.k8s.scopedload"]
    repo = restore["args"][restore["args"].index("--repo") + 1]
    args = ["--repo", repo, "--backup-id", backup_id, "--into-sql-host", spec.sql.host,
            "--into-sql-port", str(spec.sql.port), "--into-sql-user", spec.sql.user,
            "--timeout", str(spec.timeout), "--termination-log", jobs.TERMINATION_LOG]
    for only in spec.only:
        args += ["--only", only]
    if spec.as_name:
        args += ["--as", spec.as_name]
    if spec.suffix is not None:
        args += ["--suffix", spec.suffix]
    if spec.replace:
        args.append("--replace")
    if spec.copy_method != "insert":
        args += ["--copy-method", spec.copy_method, "--export-dir", EXPORT_PATH]
        # The scratch MatrixOne writes each table there and the loader streams the file (engine/scoped_export.py).
        job["spec"]["template"]["spec"].setdefault("volumes", []).append({"name": EXPORT_VOLUME, "emptyDir": {}})
        job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
            {"name": EXPORT_VOLUME, "mountPath": EXPORT_PATH})
        loader["volumeMounts"] = [*loader["volumeMounts"], {"name": EXPORT_VOLUME, "mountPath": EXPORT_PATH}]
    if spec.point_in_time is not None:
        args += ["--to-time", rfc3339(spec.point_in_time)]
    if mo.sql_socket:
        args += ["--scratch-socket", mo.sql_socket]
    loader["args"] = args
    password = spec.sql.password
    loader["env"] = [*loader["env"], jobs.secret_env("MOBACKUP_INTO_SQL_PASSWORD", password.name, password.key),
                     jobs.secret_env("MOBACKUP_SQL_PASSWORD", password.name, password.key)]
    job["spec"]["template"]["spec"]["containers"].append(loader)
    return job


# ------------------------------------------------------------------------------------------ passes

def reconcile_scoped(ctx: Ctx, obj: dict[str, Any], mo: drill.MatrixOneSettings | None = None) -> None:
    def start_run(spec: ScopedSpec) -> None:
        controller.check_job_overrides(ctx, spec.job)
        start(ctx, obj, spec, mo or drill.MatrixOneSettings.from_env())

    drill.reconcile_scratch_run(
        ctx, obj, parse=parse_scoped, start=start_run, follow=lambda spec: follow(ctx, obj, spec),
        finish=lambda ok, reason, message: _finish(ctx, obj, ok, reason, message),
        clean=lambda: drill.cleanup(ctx, obj, action=ACTION), made=lambda st: bool(st.get("jobName")))


def _resolve(ctx: Ctx, obj: dict[str, Any], ns: str, spec: ScopedSpec) -> tuple[str, str, dict[str, Any] | None]:
    """(backup id, storage name, the MOBackup if named or chosen). With pointInTime: the backup whose
    recoverable interval holds it (k8s/pointintime.py choose): backupName's, or among the Completed
    MOBackups of target.sql's MatrixOne (their source.sql has its host and port; in storageRef when
    set); Fail PointInTimeNotRecoverable before anything is made."""
    if spec.point_in_time is not None:
        from .pointintime import choose

        if spec.backup_name:
            backups = [controller.completed_backup(ctx, ns, spec.backup_name, controller.RESTORE_REASONS,
                                                   "MOBackup")]
            where = f"MOBackup {spec.backup_name}"
        else:
            backups = [b for b in ctx.kube.list_cr("MOBackup", ns) if _backs_up(b, spec)]
            where = (f"the Completed MOBackups of the MatrixOne at {spec.sql.host}:{spec.sql.port}"
                     f"{f' in {spec.storage}' if spec.storage else ''}")
        backup_id, storage_name, _ = choose(ctx, obj, spec.point_in_time, backups, where)
        chosen = next(b for b in backups if str((b.get("status") or {}).get("backupID")) == backup_id)
        return backup_id, storage_name, chosen
    if spec.backup_id:
        assert spec.storage
        return spec.backup_id, spec.storage, None
    assert spec.backup_name
    backup = controller.completed_backup(ctx, ns, spec.backup_name, controller.RESTORE_REASONS, "MOBackup")
    bst = backup["status"]
    storage_name = ((backup.get("spec") or {}).get("storageRef") or {}).get("name") or bst.get("storage")
    return str(bst["backupID"]), str(storage_name), backup


def _backs_up(backup: dict[str, Any], spec: ScopedSpec) -> bool:
    """A Completed MOBackup of the live MatrixOne (its source.sql is target.sql's host and port)."""
    try:
        if not controller.recorded_backup_id(backup):  # Completed, with the ID the operator recorded
            return False
    except Fail:
        return False
    sql = ((backup.get("spec") or {}).get("source") or {}).get("sql") or {}
    storage_name = ((backup.get("spec") or {}).get("storageRef") or {}).get("name")
    return (str(sql.get("host")), int(sql.get("port") or 6001)) == (spec.sql.host, spec.sql.port) and \
        (spec.storage is None or storage_name == spec.storage)


def precheck(ctx: Ctx, ns: str, spec: ScopedSpec, storage_spec: models.StorageSpec, backup_id: str,
             backup: dict[str, Any] | None) -> str:
    """Every refusal the operator can tell before making anything (Fail); returns the live server's
    version. The loader checks again against the restored server before it writes."""
    from mobackup.engine import scoped as engine
    from mobackup.engine.errors import MobackupError
    from mobackup.engine.mosql import SqlEndpoint

    options = engine.scoped_options(spec.only, spec.as_name, spec.suffix, spec.replace)
    summary = None
    try:
        repo = storage.open_repo(ctx.kube, ns, storage_spec, ctx.defaults.ambient_credential_buckets)
        if repo is not None:
            summary = repo.load_summary(repo.resolve_id(backup_id))
    except storage.MissingInput as e:
        raise Fail(e.reason, str(e)) from None
    except MobackupError as e:
        raise Fail("BackupNotFound", f"backup {backup_id}: {e}") from None
    if summary is not None:
        if summary.extra.get("resident") == "s3":
            raise Fail("ScopeUnsupported", f"backup {backup_id} is of a MatrixOne whose table data lives in S3: a "
                                           "scoped restore starts MatrixOne on a scratch volume, which cannot hold it")
        try:
            if spec.point_in_time is None:  # the catalog describes backupTS; with a time the loader checks
                options = engine.check_backup(summary, options)
        except MobackupError as e:
            raise Fail("NotInBackup", str(e)) from None
        needed = engine.scratch_needed(summary)
    else:  # a PVC repository (only Jobs mount it): the MOBackup's recorded size, when there is one
        size = ((backup or {}).get("status") or {}).get("sizeBytes")
        needed = int(size) + engine.SCRATCH_MARGIN if isinstance(size, int) else 0
    have = models.parse_quantity(spec.size) or 0
    if needed > have:
        raise Fail("ScratchTooSmall", f"the scratch volume of {spec.size} cannot hold backup {backup_id}: it needs "
                                      f"about {needed} bytes (the backup's size and {engine.SCRATCH_MARGIN} for the "
                                      "server); set spec.scope.scratch.size")
    try:
        password = storage.secret_value(ctx.kube, ns, spec.sql.password)
    except storage.MissingInput as e:
        raise Fail(e.reason, f"target.sql: {e}") from None
    try:
        live = engine.LiveServer(SqlEndpoint(spec.sql.host, spec.sql.port, spec.sql.user, password,
                                      timeout=LIVE_CONNECT_SECONDS))
    except MobackupError as e:
        raise Fail("LiveServerUnusable", str(e)) from None
    try:
        if summary is not None and spec.point_in_time is None:
            engine.check_targets(live, summary, options)
        return live.version
    except MobackupError as e:
        raise Fail("TargetExists", str(e)) from None
    finally:
        live.close()


def start(ctx: Ctx, obj: dict[str, Any], spec: ScopedSpec, mo: drill.MatrixOneSettings) -> None:
    ns, _, _ = meta(obj)
    where = f"{spec.sql.host}:{spec.sql.port}"
    if not (obj.get("status") or {}).get("phase"):
        transition(ctx, obj, "Pending", "Accepted", "validated; preparing the scoped restore", target=where)
    backup_id, storage_name, backup = _resolve(ctx, obj, ns, spec)
    if ((backup or {}).get("status") or {}).get("sharedStorage"):
        raise Fail("ScopeUnsupported", f"MOBackup {spec.backup_name} is of a MatrixOne whose table data lives in "
                                       "S3: a scoped restore starts MatrixOne on a scratch volume, which cannot "
                                       "hold it")
    _, storage_spec = controller.require_storage_ready(ctx, ns, storage_name)
    owner = owner_of(obj)
    claim = drill.scratch_claim_name(owner)
    controller.refuse_storage_overlap(storage_spec, storage_name, claims={"the scoped restore's scratch PVC": claim})
    hostname = drill.source_hostname(backup, ns)
    body = scoped_job(owner, spec, storage_spec, backup_id, hostname, ctx.defaults, mo)
    controller.require_job_secrets(ctx, ns, body)
    version = precheck(ctx, ns, spec, storage_spec, backup_id, backup)
    try:
        ctx.kube.create_pvc(ns, drill.scratch_claim(owner, spec.size, spec.storage_class))
    except Conflict:  # made by an earlier pass; never someone else's of that name
        if pvc_made_for(ctx.kube, ns, claim, owner.uid) is False:
            raise Fail("ScratchClaimTaken", f"PVC {claim} exists and was not made for this restore: refusing to "
                                            "restore into it (or to delete it afterwards)") from None
    job_name = controller.create_job(ctx, obj, body)
    ctx.metrics.inc("mobackup_runs_total", kind=KIND, namespace=ns)
    transition(ctx, obj, "Running", "JobCreated",
               f"Job {job_name} restores {backup_id} into a scratch volume, starts MatrixOne on it"
               f"{f', brings it to {rfc3339(spec.point_in_time)}' if spec.point_in_time else ''} and copies "
               f"{', '.join(spec.only)} into {where} (MatrixOne {version}), which keeps running",
               jobName=job_name, startTime=status.iso(), backupID=backup_id, storage=storage_name,
               scratchClaim=claim, location=storage_spec.location, target=where, liveVersion=version,
               **({"hostname": hostname} if hostname else {}))


def follow(ctx: Ctx, obj: dict[str, Any], spec: ScopedSpec) -> None:
    def finish(loaded: dict[str, Any], fields: dict[str, Any]) -> None:
        outcome = jobs.parse_result(loaded.get("message"))
        if outcome is None or "ok" not in outcome:
            raise Fail("LoaderFailed", f"the loader ended without a result: "
                                       f"{(loaded.get('message') or '').strip()[-300:]}")
        _record(ctx, obj, outcome, fields)

    drill.follow_scratch_job(ctx, obj, ACTION, LOADER, spec.timeout, finish, run="the restore",
                             restore_failed="the restore into the scratch volume failed (nothing was written "
                                            "to the live server)",
                             late=f"the scoped restore did not finish within scope.timeoutSeconds={spec.timeout}: "
                                  "the scratch MatrixOne never answered SQL or the copy hung")


def table_status(table: dict[str, Any]) -> dict[str, Any]:
    out = {"source": table.get("source"), "target": table.get("target"), "rows": table.get("rows"),
           "checksum": table.get("checksum"), "seconds": table.get("seconds"),
           "replaced": table.get("replaced")}
    return {k: v for k, v in out.items() if v is not None}


def _record(ctx: Ctx, obj: dict[str, Any], outcome: dict[str, Any], fields: dict[str, Any]) -> None:
    ns, _, _ = meta(obj)
    result = outcome.get("result") if isinstance(outcome.get("result"), dict) else {}
    tables = [table_status(t) for t in result.get("tables") or [] if isinstance(t, dict)]
    fields.update({"tables": tables, "rowsCopied": sum(int(t.get("rows") or 0) for t in tables),
                   "startSeconds": result.get("start_seconds"), "copySeconds": result.get("copy_seconds"),
                   "skipped": result.get("skipped") or None, "tablesLeftOut": result.get("tables_left_out")})
    at = result.get("point_in_time") if isinstance(result.get("point_in_time"), dict) else None
    if at:  # the scratch server brought to the time: its PITR and own clock after
        saved = (obj.get("status") or {}).get("pointInTime") or {}
        fields["pointInTime"] = {**saved, **{k: v for k, v in (
            ("time", at.get("to_time")), ("pitr", at.get("pitr")), ("serverTime", at.get("server_time")),
            ("pitrSeconds", at.get("pitr_seconds"))) if v is not None}}
    fields = {k: v for k, v in fields.items() if v is not None}
    copied = sum(int(t.get("bytes_sent") or 0) for t in result.get("tables") or [] if isinstance(t, dict))
    if copied:
        ctx.metrics.inc("mobackup_transferred_bytes_total", float(copied), kind=KIND, namespace=ns)
    names = ", ".join(f"{t.get('source')} -> {t.get('target')} ({t.get('rows')} rows)" for t in tables[:10])
    if outcome.get("ok"):
        when = f" as of {at.get('to_time')} (scratch server time after: {at.get('server_time')})" if at else ""
        _finish(ctx, obj, True, "ScopedRestoreCompleted",
                f"restored and checked {len(tables)} table(s){when} into the running MatrixOne: {names}", **fields)
    else:
        done = f" (restored and checked before it: {names})" if tables else ""
        _finish(ctx, obj, False, str(outcome.get("reason") or "CopyFailed"),
                f"{outcome.get('error') or 'the loader failed'}{done}", **fields)


def _finish(ctx: Ctx, obj: dict[str, Any], ok: bool, reason: str, message: str, **fields: Any) -> None:
    """Scratch objects first (a crash in between leaves a terminal restore that the next pass cleans);
    the restores' metrics; then the terminal phase, with its Event."""
    ns, _, _ = meta(obj)
    cleaned = drill.cleanup(ctx, obj, record=False, action=ACTION)
    ctx.metrics.inc("mobackup_successes_total" if ok else "mobackup_failures_total", kind=KIND, namespace=ns)
    started = status.parse_iso((obj.get("status") or {}).get("startTime"))
    if started:
        ctx.metrics.observe("mobackup_run_duration_seconds", (status.now() - started).total_seconds(), kind=KIND)
    transition(ctx, obj, "Completed" if ok else "Failed", reason, message, cleanedUp=cleaned, **fields)
