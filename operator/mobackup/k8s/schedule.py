"""MOBackupSchedule: create MOBackups when a cron is due, apply retention and history limits.

Created MOBackups carry annotations that keep Argo CD from pruning them (they are not in Git), and
no ownerReference: deleting a schedule never deletes the backups it made.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import cron, events, jobs, models, retention, status
from .controller import Ctx, Fail, get_storage, meta, refuse_storage_overlap, s3_place
from .kube import Conflict, NotFound

log = logging.getLogger("mobackup.schedule")

L_SCHEDULE = "mobackup.io/schedule"
L_TYPE = "mobackup.io/scheduled-type"
A_SCHEDULED_AT = "mobackup.io/scheduled-at"
A_RUN_NOW = "mobackup.io/run-now"  # any new value: take a backup now ("Full" or "Incremental")
ARGO_ANNOTATIONS = {"argocd.argoproj.io/compare-options": "IgnoreExtraneous",
                    "argocd.argoproj.io/sync-options": "Prune=false"}


@dataclass(frozen=True)
class Due:
    kind: str | None  # "Full" | "Incremental" | None
    scheduled: datetime | None
    missed: bool  # due, but later than startingDeadlineSeconds
    next_full: datetime
    next_incremental: datetime | None


def decide(spec: models.ScheduleSpec, now: datetime, created: datetime, last_full: datetime | None,
           last_incr: datetime | None) -> Due:
    """Which run (if any) is due at `now`, given the scheduled times of the last runs."""
    tz = cron.zone(spec.tz_name)
    due_full = spec.full.previous_at_or_before(now, last_full or created, tz, anchor=created)
    due_incr = (spec.incremental.previous_at_or_before(now, last_incr or created, tz, anchor=created)
                if spec.incremental else None)
    kind, when = (None, None)
    if due_full:
        kind, when = "Full", due_full
    elif due_incr:
        kind, when = "Incremental", due_incr
    next_full = spec.full.next_after(max(now, due_full or now), tz, anchor=created)
    next_incr = (spec.incremental.next_after(max(now, due_incr or now), tz, anchor=created)
                 if spec.incremental else None)
    missed = bool(when and (now - when).total_seconds() > spec.starting_deadline)
    return Due(kind, when, missed, next_full, next_incr)


def backup_name(schedule: str, kind: str, when: datetime) -> str:
    stamp = when.strftime("%Y%m%d%H%M%S")
    short = "full" if kind == "Full" else "incr"
    base = f"{schedule[:200]}-{short}-{stamp}"
    return base if len(base) <= 253 else f"{base[:240]}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"


def backup_body(sched: dict[str, Any], spec: models.ScheduleSpec, kind: str, when: datetime,
                base_name: str | None, name: str | None = None) -> dict[str, Any]:
    ns, sname, uid = meta(sched)
    bspec = dict(spec.template_spec)
    bspec["type"] = kind
    if base_name:
        bspec["baseBackupName"] = base_name
    bspec.setdefault("deletionPolicy", "Delete")
    window = (sched.get("spec") or {}).get("pointInTime")
    if window:  # the schedule's window wins over the template's
        bspec["pointInTime"] = dict(window)
    return {
        "apiVersion": models.API_VERSION, "kind": "MOBackup",
        "metadata": {
            "name": name or backup_name(sname, kind, when), "namespace": ns,
            "labels": {**spec.template_labels, L_SCHEDULE: sname, L_TYPE: kind.lower(),
                       "app.kubernetes.io/managed-by": "mobackup-operator"},
            "annotations": {**spec.template_annotations, **ARGO_ANNOTATIONS,
                            A_SCHEDULED_AT: status.iso(when), "mobackup.io/schedule-uid": uid},
        },
        "spec": bspec,
    }


def storage_overlap(ctx: Ctx, ns: str, spec: models.ScheduleSpec) -> str | None:
    """Why every backup of the template would be refused for overlapping its storage (checked when
    one is due, so that a schedule does not make a Failed MOBackup at each tick); other problems
    (a storage not found...) are each run's to report. A cluster source is checked by each run."""
    bspec = models.parse_backup(spec.template_spec, ns, template=True)
    try:
        _, st = get_storage(ctx, ns, bspec.storage)
        refuse_storage_overlap(st, bspec.storage, claims={"spec.template.spec.source.pvc.claimName":
                                                          bspec.volume.claim if bspec.volume else None},
                               staging=s3_place(jobs.staging_url(bspec, bspec.shared)) if bspec.shared else None)
    except Fail as e:
        return str(e) if e.reason == "StorageOverlap" else None
    return None


def _completion(b: dict[str, Any]) -> datetime:
    st = b.get("status") or {}
    return (status.parse_iso(st.get("completionTime")) or status.parse_iso(b["metadata"]["creationTimestamp"])
            or status.now())


def reconcile_schedule(ctx: Ctx, sched: dict[str, Any]) -> None:
    ns, name, _ = meta(sched)
    old = sched.get("status") or {}
    try:
        spec = models.parse_schedule(sched.get("spec") or {}, ns)
    except models.SpecError as e:
        _patch(ctx, sched, {"reason": "InvalidSpec", "message": str(e), "conditions": status.merge_conditions(
            old.get("conditions"), [status.condition("Ready", False, "InvalidSpec", str(e))])}, event="Warning")
        return
    now = status.now()
    created = status.parse_iso(sched["metadata"]["creationTimestamp"]) or now
    backups = ctx.kube.list_cr("MOBackup", ns, f"{L_SCHEDULE}={name}")
    active = sorted(b["metadata"]["name"] for b in backups
                    if (b.get("status") or {}).get("phase") in (None, "", "Pending", "Running")
                    and not b["metadata"].get("deletionTimestamp"))
    completed = sorted((b for b in backups if (b.get("status") or {}).get("phase") == "Completed"
                        and not b["metadata"].get("deletionTimestamp")), key=_completion, reverse=True)
    failed = sorted((b for b in backups if (b.get("status") or {}).get("phase") == "Failed"
                     and not b["metadata"].get("deletionTimestamp")), key=_completion, reverse=True)
    due = decide(spec, now, created, status.parse_iso(old.get("lastFullScheduleTime")),
                 status.parse_iso(old.get("lastIncrementalScheduleTime")))
    patch: dict[str, Any] = {"nextFullScheduleTime": status.iso(due.next_full),
                             "nextScheduleTime": status.iso(min(t for t in (due.next_full, due.next_incremental)
                                                                if t is not None)),
                             "observedGeneration": sched["metadata"].get("generation")}
    if due.next_incremental:
        patch["nextIncrementalScheduleTime"] = status.iso(due.next_incremental)
    reason, message, event_type = old.get("reason") or "Scheduled", old.get("message") or "", None
    run_now = (sched["metadata"].get("annotations") or {}).get(A_RUN_NOW)
    run_kind, when = due.kind, due.scheduled
    manual = bool(run_now and run_now != old.get("lastRunNow"))
    if manual:
        run_kind, when = ("Incremental" if run_now.lower().startswith("incr") else "Full"), now
        patch["lastRunNow"] = run_now
    if run_kind and when:
        # The run is handled (created, skipped or missed): never fire the same time twice.
        if not manual:
            patch["lastFullScheduleTime" if run_kind == "Full" else "lastIncrementalScheduleTime"] = status.iso(when)
            if run_kind == "Full" and due.kind == "Full" and spec.incremental:
                patch["lastIncrementalScheduleTime"] = status.iso(when)  # a Full covers a due Incremental
        if spec.suspend and not manual:
            reason, message = "Suspended", f"{run_kind} run of {status.iso(when)} skipped: suspended"
        elif due.missed and not manual:
            reason, message, event_type = "MissedRun", (f"{run_kind} run of {status.iso(when)} missed by more "
                                                        f"than {spec.starting_deadline}s"), "Warning"
        elif active and spec.concurrency == "Forbid":
            reason, message, event_type = "SkippedConcurrent", (f"{run_kind} run of {status.iso(when)} skipped: "
                                                                f"{', '.join(active)} still active"), "Normal"
        elif (overlap := storage_overlap(ctx, ns, spec)) is not None:
            reason, event_type = "StorageOverlap", "Warning"
            message = f"{run_kind} run of {status.iso(when)} not started: {overlap}"
        else:
            base_name = None
            if run_kind == "Incremental":
                if completed:
                    base_name = completed[0]["metadata"]["name"]
                else:
                    run_kind = "Full"  # nothing to base an incremental on yet
            body = backup_body(sched, spec, run_kind, when, base_name,
                               name=backup_name(name, run_kind, when) if not manual else None)
            if manual:
                body["metadata"]["name"] = backup_name(name, run_kind, now) + "-now"
            try:
                ctx.kube.create_cr("MOBackup", ns, body)
                active.append(body["metadata"]["name"])
                reason, event_type = "BackupCreated", "Normal"
                message = f"created {run_kind} MOBackup {body['metadata']['name']}"
            except Conflict:
                pass
            patch["lastScheduleTime"] = status.iso(now)
    # Retention over Completed backups, history limit over Failed ones.
    items = [retention.Item(b["metadata"]["name"], str(b["status"].get("backupID")), _completion(b))
             for b in completed if (b.get("status") or {}).get("backupID")]
    decision = retention.select(items, spec.retention, now, history_limit=spec.successful_limit)
    # Being the base of a kept backup is no reason to stay: every file list is complete, so each
    # backup restores on its own and the repository's garbage collection keeps the blobs it uses.
    # Only a run still in progress reads its base's file list: that base waits for the next pass.
    running = [b for b in backups if b["metadata"]["name"] in active]
    base_ids = {(b.get(part) or {}).get("baseBackupID") for b in running for part in ("status", "spec")} - {None}
    base_names = {(b.get("spec") or {}).get("baseBackupName") for b in running} - {None}
    by_name = {b["metadata"]["name"]: b for b in completed}
    doomed = [n for n in decision.delete
              if n not in base_names and (by_name[n].get("status") or {}).get("backupID") not in base_ids]
    # S3 Object Lock: a backup the bucket still holds is kept until its date (a later pass deletes it).
    held = {n: until for n in doomed if (until := status.locked_until(by_name[n], now)) is not None}
    doomed = [n for n in doomed if n not in held]
    doomed += retention.history_overflow([b["metadata"]["name"] for b in failed], spec.failed_limit)
    for victim in doomed:
        ctx.kube.delete_cr("MOBackup", ns, victim)
    if doomed:
        events.emit(ctx.kube, sched, "Normal", "RetentionApplied", f"deleted {', '.join(doomed)}")
    patch["retentionHeld"] = [{"name": n, "lockedUntil": status.iso(u)} for n, u in sorted(held.items())]
    if held and old.get("retentionHeld") != patch["retentionHeld"]:
        events.emit(ctx.kube, sched, "Normal", "RetentionHeld", "kept by S3 Object Lock, deleted once it passes: " +
                    ", ".join(f"{n} (until {status.iso(u)})" for n, u in sorted(held.items())))
    from .drill import schedule_drills  # MOBackupSchedule.spec.drill (restore drills)

    drill_note = schedule_drills(ctx, sched, completed, L_SCHEDULE)
    if drill_note:
        events.emit(ctx.kube, sched, "Normal", "DrillCreated", drill_note)
    if completed:
        patch["lastSuccessfulBackup"] = completed[0]["metadata"]["name"]
        patch["lastSuccessfulTime"] = status.iso(_completion(completed[0]))
    patch["active"] = active
    patch["reason"], patch["message"] = reason, message
    ok = reason not in ("InvalidSpec", "StorageOverlap")
    patch["conditions"] = status.merge_conditions(old.get("conditions"), [
        status.condition("Ready", ok, reason, message or "scheduling", sched["metadata"].get("generation"))])
    _patch(ctx, sched, patch, event=event_type)


def _patch(ctx: Ctx, sched: dict[str, Any], patch: dict[str, Any], event: str | None = None) -> None:
    ns, name, _ = meta(sched)
    old = sched.get("status") or {}
    if all(old.get(k) == v for k, v in patch.items() if k != "conditions") and "conditions" in old:
        return
    try:
        ctx.kube.patch_status("MOBackupSchedule", ns, name, patch)
    except NotFound:
        return
    sched["status"] = {**old, **patch}
    if event and (old.get("reason"), old.get("message")) != (patch.get("reason"), patch.get("message")):
        events.emit(ctx.kube, sched, event, str(patch.get("reason")), str(patch.get("message")))
