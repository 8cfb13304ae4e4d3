"""MOBackupStorage.spec.copyTo: every Completed MOBackup of a storage is copied to each target storage.

One pass over a source storage (handlers.py runs it from the resync thread, off the watch threads):
for each target, the Completed MOBackups of the storage not yet copied there are taken oldest first,
one copy Job at a time per target (`mobackup agent copy`, owned by the MOBackup). A finished Job's
result is its termination message: it must name exactly the backup asked for, and when the operator
can open the target itself (S3 without a custom CA) the backup must be listed there with the same
source and backupTS, before `status.copies` of the MOBackup records it. A failed copy is retried
after RETRY_SECONDS. The operator never deletes a copy: each target keeps its own retention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mobackup.engine.errors import MobackupError

from . import events, jobs, models, status, storage
from .controller import Ctx, Fail, create_job, job_outcome, meta, owner_of, patch_fields, recorded_backup_id
from .kube import NotFound

log = logging.getLogger("mobackup.copies")

RETRY_SECONDS = 300
L_COPY_SOURCE = "mobackup.io/copy-source"


@dataclass(frozen=True)
class Pending:
    obj: dict[str, Any]  # the MOBackup
    backup_id: str
    completed: float  # unix seconds


# The targets a backup was copied to, recorded by the operator in metadata (a status patch can
# write status.copies, not this): what decides whether a copy is still owed.
A_COPIED_TO = "mobackup.io/copied-to"


def copied_to(backup: dict[str, Any], target: str) -> bool:
    recorded = (backup["metadata"].get("annotations") or {}).get(A_COPIED_TO) or ""
    return target in recorded.split(",")


def record_copy(ctx: Ctx, backup: dict[str, Any], target: str) -> None:
    ns, name, _ = meta(backup)
    recorded = [t for t in ((backup["metadata"].get("annotations") or {}).get(A_COPIED_TO) or "").split(",") if t]
    value = ",".join(sorted({*recorded, target}))
    try:
        updated = ctx.kube.patch_cr("MOBackup", ns, name, {"metadata": {"annotations": {A_COPIED_TO: value}}})
    except NotFound:
        return
    backup["metadata"] = updated.get("metadata") or backup["metadata"]


def completed_backups(ctx: Ctx, ns: str, storage_name: str) -> list[Pending]:
    """The storage's Completed MOBackups (by spec.storageRef, which is immutable), oldest first; one
    whose status.backupID is not the recorded one is left out (status_trust)."""
    out = []
    for b in ctx.kube.list_cr("MOBackup", ns):
        b.setdefault("kind", "MOBackup")
        if ((b.get("spec") or {}).get("storageRef") or {}).get("name") != storage_name:
            continue
        if b["metadata"].get("deletionTimestamp"):
            continue
        try:
            backup_id = recorded_backup_id(b)
        except Fail:
            continue
        done = status.parse_iso((b.get("status") or {}).get("completionTime"))
        if backup_id and done is not None:
            out.append(Pending(b, backup_id, done.timestamp()))
    return sorted(out, key=lambda p: (p.completed, p.backup_id))


def target_problem(ctx: Ctx, ns: str, name: str, src: models.StorageSpec, target: str
                   ) -> tuple[tuple[str, str] | None, models.StorageSpec | None]:
    """((reason, message) why nothing is copied to `target` now, or None; the target's spec)."""
    if target == name:
        return ("StorageOverlap", f"copyTo {target} is this storage itself"), None
    try:
        tobj = ctx.kube.get_cr("MOBackupStorage", ns, target)
    except NotFound:
        return ("TargetNotFound", f"copyTo: MOBackupStorage {ns}/{target} not found"), None
    try:
        tst = models.parse_storage(tobj.get("spec") or {})
    except models.SpecError as e:
        return ("InvalidTarget", f"copyTo {target}: {e}"), None
    same_s3 = (src.s3 and tst.s3 and src.s3.bucket == tst.s3.bucket
               and models.s3_overlap(tst.s3.bucket, tst.s3.prefix, src.s3.bucket, src.s3.prefix))
    same_pvc = src.pvc and tst.pvc and src.pvc.claim == tst.pvc.claim and (
        src.pvc.path == tst.pvc.path or "." in (src.pvc.path, tst.pvc.path))
    if same_s3 or same_pvc:
        return ("StorageOverlap", f"copyTo {target} ({tst.location}) is, contains or lies inside this storage's "
                                  f"repository ({src.location}): a copy must go to another repository"), None
    if tst.s3 and not tst.s3.credentials_secret and src.s3 and src.s3.credentials_secret:
        # The copy Job holds the source's keys as AWS_* env: boto3 would send them to the target's endpoint.
        return ("InvalidTarget", f"copyTo {target} names no credentialsSecretRef: a copy target needs keys of its "
                                 "own (the Job holds this storage's, which must never reach another endpoint)"), None
    tstatus = tobj.get("status") or {}
    if tstatus.get("phase") != "Available":
        return ("TargetUnavailable", f"copyTo {target} is {tstatus.get('phase') or 'not checked yet'}: "
                                     f"{tstatus.get('message', '')}".rstrip(": ")), tst
    try:
        storage.read_credentials(ctx.kube, ns, tst, ctx.defaults.ambient_credential_buckets)
    except storage.MissingInput as e:
        return (e.reason, f"copyTo {target}: {e}"), tst
    return None, tst


def forget_targets(ctx: Ctx, obj: dict[str, Any], keep: tuple[str, ...] = ()) -> None:
    """Drop the copy series of the targets in the storage's status.copies but not in `keep` (no longer
    a target, or the storage deleted): no lag left to alert on."""
    ns, name, _ = meta(obj)
    for gone in {str(c.get("storage")) for c in (obj.get("status") or {}).get("copies") or []
                 if isinstance(c, dict)} - set(keep):
        for metric in ("mobackup_copy_lag_seconds", "mobackup_copy_pending_backups"):
            ctx.metrics.remove(metric, namespace=ns, storage=name, target=gone)


def reconcile_copies(ctx: Ctx, obj: dict[str, Any]) -> None:
    """One pass over a source storage (see the module docstring); records status.copies on it and
    the lag metric per target."""
    ns, name, _ = meta(obj)
    try:
        src = models.parse_storage(obj.get("spec") or {})
    except models.SpecError:
        return
    forget_targets(ctx, obj, keep=src.copy_to)
    if not src.copy_to:
        if (obj.get("status") or {}).get("copies"):
            patch_fields(ctx, obj, copies=None)
        return
    backups = completed_backups(ctx, ns, name)
    now = status.now().timestamp()
    entries = []
    for target in src.copy_to:
        pending = [p for p in backups if not copied_to(p.obj, target)]
        problem, tst = target_problem(ctx, ns, name, src, target)
        if problem is None and tst is not None and pending:
            problem = _advance(ctx, obj, src, target, tst, pending, now)
            pending = [p for p in pending if not copied_to(p.obj, target)]
        lag = int(now - pending[0].completed) if pending else 0
        entry: dict[str, Any] = {"storage": target, "copied": len(backups) - len(pending), "pending": len(pending)}
        if pending:  # a time, not an age: the status changes only when the copies do
            entry["oldestPending"] = status.iso(status.parse_iso((pending[0].obj.get("status") or {})
                                                                 .get("completionTime")))
        if problem and pending:
            entry.update(reason=problem[0], message=problem[1])
            old = next((c for c in (obj.get("status") or {}).get("copies") or []
                        if isinstance(c, dict) and c.get("storage") == target), {})
            if old.get("reason") != problem[0]:
                events.emit(ctx.kube, obj, "Warning", problem[0], problem[1])
        entries.append(entry)
        ctx.metrics.set("mobackup_copy_lag_seconds", max(lag, 0), namespace=ns, storage=name, target=target)
        ctx.metrics.set("mobackup_copy_pending_backups", len(pending), namespace=ns, storage=name, target=target)
    patch_fields(ctx, obj, copies=entries)


def _failure(backup: dict[str, Any], target: str) -> dict[str, Any]:
    return next((f for f in (backup.get("status") or {}).get("copyFailures") or []
                 if isinstance(f, dict) and f.get("storage") == target), {})


def _advance(ctx: Ctx, sobj: dict[str, Any], src: models.StorageSpec, target: str, tst: models.StorageSpec,
             pending: list[Pending], now: float) -> tuple[str, str] | None:
    """Follow the target's copy Job, or start the next one; (reason, message) when blocked."""
    ns, name, _ = meta(sobj)
    startable: Pending | None = None
    for p in pending:
        jname = jobs.copy_job_name(owner_of(p.obj), target)
        try:
            job = ctx.kube.get_job(ns, jname)
        except NotFound:
            last = status.parse_iso(_failure(p.obj, target).get("time"))
            if startable is None and (last is None or now - last.timestamp() >= RETRY_SECONDS):
                startable = p
            continue
        if not follow(ctx, p, target, tst, job):
            return None  # one copy at a time per target: this one still runs
    if startable is None:
        return None
    p = startable
    try:
        body = jobs.copy_job(owner_of(p.obj), src, tst, target, p.backup_id, models.JobOverrides(), ctx.defaults)
    except jobs.JobPolicyError as e:
        return "JobOverrideNotAllowed", str(e)
    body["metadata"]["labels"][L_COPY_SOURCE] = name
    try:
        jname = create_job(ctx, p.obj, body)
    except Fail as e:
        return e.reason, str(e)
    ctx.metrics.inc("mobackup_runs_total", kind="Copy", namespace=ns)
    events.emit(ctx.kube, p.obj, "Normal", "CopyStarted", f"Job {jname} copies backup {p.backup_id} to {target}")
    return None


def check_result(result: dict[str, Any] | None, backup_id: str) -> str | None:
    """Why a copy Job's report does not show `backup_id` copied, or None when it does."""
    if not result or result.get("ok") is not True or result.get("action") != "copy":
        return "the Job reported no successful copy"
    res = result.get("result")
    if not isinstance(res, dict) or res.get("backup_id") != backup_id:
        return f"the Job's report does not name backup {backup_id}"
    listed = [*(res.get("copied") or []), *(res.get("present") or [])]
    if backup_id not in listed:
        return f"the Job's report does not list backup {backup_id} as copied or present"
    return None


def confirm_in_target(ctx: Ctx, ns: str, tst: models.StorageSpec, p: Pending) -> str | None:
    """Where the operator can open the target itself, the backup must be listed there, of the same
    source and backupTS as the MOBackup: a Job's report alone is not proof. None when confirmed (or
    not checkable: a PVC or a custom CA), else why not."""
    try:
        repo = storage.open_repo(ctx.kube, ns, tst, ctx.defaults.ambient_credential_buckets)
        if repo is None:
            return None
        summary = repo.load_summary(p.backup_id)
    except (MobackupError, storage.MissingInput) as e:
        return f"backup {p.backup_id} not found in the target: {e}"
    bst = p.obj.get("status") or {}
    for field, want in (("source", bst.get("source")), ("backup_ts", bst.get("backupTS"))):
        if want and getattr(summary, field) != want:
            return f"backup {p.backup_id} in the target has {field} {getattr(summary, field)!r}, not {want!r}"
    return None


def follow(ctx: Ctx, p: Pending, target: str, tst: models.StorageSpec, job: dict[str, Any]) -> bool:
    """A copy Job: False while it runs; else record its outcome, delete it, True."""
    ns, _, _ = meta(p.obj)
    state, result, fallback = job_outcome(ctx, ns, job)
    if state.state == "Running":
        return False
    problem = check_result(result, p.backup_id) if state.state == "Succeeded" else None
    if state.state == "Succeeded" and problem is None:
        problem = confirm_in_target(ctx, ns, tst, p)
    ctx.kube.delete_job(ns, job["metadata"]["name"])
    bst = p.obj.get("status") or {}
    failures = [f for f in bst.get("copyFailures") or [] if isinstance(f, dict) and f.get("storage") != target]
    if state.state == "Succeeded" and problem is None:
        copies = [c for c in bst.get("copies") or [] if isinstance(c, dict) and c.get("storage") != target]
        copies.append({"storage": target, "location": tst.location, "backupID": p.backup_id,
                       "completionTime": status.iso()})
        record_copy(ctx, p.obj, target)
        patch_fields(ctx, p.obj, copies=copies, copyFailures=failures or None)
        ctx.metrics.inc("mobackup_successes_total", kind="Copy", namespace=ns)
        res = (result or {}).get("result") or {}
        how = "already there" if p.backup_id in (res.get("present") or []) else \
            f"{int(res.get('stored_bytes') or 0)} bytes stored"
        events.emit(ctx.kube, p.obj, "Normal", "Copied", f"backup {p.backup_id} copied to {target} "
                                                         f"({tst.location}; {how})")
        return True
    reason = str((result or {}).get("reason") or ("CopyNotConfirmed" if problem else "JobFailed"))
    message = problem or str((result or {}).get("error") or f"Job {job['metadata']['name']}: {fallback}")
    attempts = int(_failure(p.obj, target).get("attempts") or 0) + 1
    failures.append({"storage": target, "reason": reason, "message": message[:1000], "attempts": attempts,
                     "time": status.iso()})
    patch_fields(ctx, p.obj, copyFailures=failures)
    ctx.metrics.inc("mobackup_failures_total", kind="Copy", namespace=ns)
    events.emit(ctx.kube, p.obj, "Warning", "CopyFailed", f"copy of backup {p.backup_id} to {target}: {message} "
                                                          f"(retried in {RETRY_SECONDS}s)")
    return True
