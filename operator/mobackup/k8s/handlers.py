"""kopf handlers: thin. Watch events feed an in-memory index and call the plain reconcile functions;
a resync thread re-drives active runs, due schedules, storage checks and the workload sweeper.

Why watch events (on.event) rather than kopf's create/update/timer handlers: the runs keep their own
state machine in status (so any pass, even after a restart, continues it), and kopf timers would put
a finalizer on every object. The only finalizer is kopf's, for MOBackups with deletionPolicy Delete.

Why a resync thread and not kopf timers/daemons/indices: timers and daemons are per object and each
puts a finalizer on every object it serves (kopf/on.py: requires_finalizer=True), and the workload
sweep belongs to no object; kopf indices are handed only to handlers, not to a loop outside them, so
the loop keeps its own small index from the same watch events. Peering (replicaCount > 1) is kopf's.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import controller, copies, drill, jobs, schedule, status, workload
from .controller import Ctx
from .kube import NotFound
from .models import GROUP, VERSION

log = logging.getLogger("mobackup.handlers")


@dataclass
class State:
    ctx: Ctx | None = None
    namespaces: list[str] = field(default_factory=list)  # empty: all
    resync_seconds: float = 3.0
    schedule_seconds: float = 300.0
    sweep_seconds: float = 30.0
    # (kind, ns, name) of runs that are Pending/Running; schedules and storages we know of.
    active: dict[tuple[str, str, str], str] = field(default_factory=dict)
    schedules: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    dirty_schedules: set[tuple[str, str]] = field(default_factory=set)
    fast: set[tuple[str, str, str]] = field(default_factory=set)  # runs polled every FAST_SECONDS
    storages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    copy_seconds: float = 30.0  # passes over each storage with copyTo (sooner when marked dirty)
    dirty_copies: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


STATE = State()


def configure(ctx: Ctx, namespaces: list[str], resync_seconds: float = 3.0) -> None:
    STATE.ctx, STATE.namespaces, STATE.resync_seconds = ctx, namespaces, resync_seconds


def _ctx() -> Ctx:
    assert STATE.ctx is not None, "handlers.configure() was not called"
    return STATE.ctx


def _raw(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def drive(kind: str, ns: str, name: str) -> None:
    """One reconcile pass over a run, on a fresh copy, serialised per object."""
    ctx = _ctx()
    try:
        obj = ctx.kube.get_cr(kind, ns, name)
    except NotFound:
        with STATE.lock:
            STATE.active.pop((kind, ns, name), None)
            STATE.fast.discard((kind, ns, name))
        return
    obj.setdefault("kind", kind)
    with ctx.locked(obj["metadata"]["uid"]) as got:
        if not got:
            return
        obj = ctx.kube.get_cr(kind, ns, name)  # may have moved while we waited
        obj.setdefault("kind", kind)
        before = (obj.get("status") or {}).get("phase")
        if kind == "MOBackup":
            controller.reconcile_backup(ctx, obj)
        elif kind == drill.KIND:
            drill.reconcile_drill(ctx, obj)
        else:
            controller.reconcile_restore(ctx, obj)
    phase = (obj.get("status") or {}).get("phase")
    with STATE.lock:
        if phase in controller.RUN_ACTIVE and not obj["metadata"].get("deletionTimestamp"):
            STATE.active[(kind, ns, name)] = obj["metadata"]["uid"]
        else:
            STATE.active.pop((kind, ns, name), None)
        # MatrixOne is down from here on: notice its last pod leaving within ~0.3 s, not a resync period.
        if (obj.get("status") or {}).get("reason") == "WaitingForPodsToStop":
            STATE.fast.add((kind, ns, name))
        else:
            STATE.fast.discard((kind, ns, name))
    if kind == "MOBackup" and phase == "Completed" and before != "Completed":
        recount_storage(ns, _storage_of(obj))
        with STATE.lock:
            STATE.dirty_copies.add((ns, str(_storage_of(obj))))
    if kind == "MOBackup":
        sched = (obj["metadata"].get("labels") or {}).get(schedule.L_SCHEDULE)
        if sched and phase in ("Completed", "Failed"):
            with STATE.lock:
                STATE.dirty_schedules.add((ns, sched))


# ------------------------------------------------------------------------------------------ startup

@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "mobackup.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="mobackup.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="mobackup.io")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.batching.batch_window = 0.05  # react within ~50 ms of an event (reaction-time target < 1 s)
    STATE.stop.clear()
    threading.Thread(target=resync_loop, name="resync", daemon=True).start()
    threading.Thread(target=fast_loop, name="fast", daemon=True).start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    STATE.stop.set()


# ------------------------------------------------------------------------------------------ runs

def _run_event(kind: str, type: str | None, body: Any) -> None:
    obj = _raw(body)
    obj.setdefault("kind", kind)
    ns, name, uid = controller.meta(obj)
    phase = (obj.get("status") or {}).get("phase")
    if type == "DELETED":
        sched = (obj["metadata"].get("labels") or {}).get(schedule.L_SCHEDULE)
        with STATE.lock:
            STATE.active.pop((kind, ns, name), None)
            # Its schedule's status lists it (active, last successful), and a run deleted before it
            # finished no longer keeps its base from retention.
            if sched:
                STATE.dirty_schedules.add((ns, sched))
        ctx = _ctx()
        with ctx.locked(uid):
            controller.cleanup_run(ctx, obj)
        ctx.forget(uid)
        return
    if kind == "MOBackup" and phase == "Completed":
        controller.record_success_metrics(_ctx(), obj)
    if phase in controller.RUN_ACTIVE and not obj["metadata"].get("deletionTimestamp"):
        drive(kind, ns, name)


@kopf.on.event(GROUP, VERSION, "mobackups")
def mobackup_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _run_event("MOBackup", type, body)


@kopf.on.event(GROUP, VERSION, "morestores")
def morestore_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _run_event("MORestore", type, body)


@kopf.on.event(GROUP, VERSION, "morestoredrills")
def morestoredrill_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    obj = _raw(body)
    st = obj.get("status") or {}
    if type == "DELETED":
        with STATE.lock:
            STATE.active.pop((drill.KIND, obj["metadata"]["namespace"], obj["metadata"]["name"]), None)
        return
    if st.get("phase") == "Completed":
        drill.record_success_metric(_ctx(), obj)
    # Active drills are driven; a terminal one whose scratch objects were not confirmed gone is
    # cleaned (the operator was killed between the outcome and the cleanup).
    if st.get("phase") in controller.RUN_ACTIVE or not st.get("cleanedUp"):
        drive(drill.KIND, obj["metadata"]["namespace"], obj["metadata"]["name"])


def _deletes_data(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("deletionPolicy") == "Delete"


@kopf.on.delete(GROUP, VERSION, "mobackups", when=_deletes_data)
def mobackup_delete(body: kopf.Body, **_: Any) -> None:
    ctx = _ctx()
    obj = _raw(body)
    obj.setdefault("kind", "MOBackup")
    with ctx.locked(obj["metadata"]["uid"]):
        done, message = controller.delete_backup_data(ctx, obj)
    if done and message == "deleted":
        recount_storage(obj["metadata"]["namespace"], _storage_of(obj))
    if not done:
        held = status.locked_until(obj)  # S3 Object Lock: retry when it passes (hourly at most)
        delay = 2.0 if held is None else min(max((held - status.now()).total_seconds() + 1, 2.0), 3600.0)
        raise kopf.TemporaryError(message, delay=delay)


@kopf.on.event("batch", "v1", "jobs", labels={jobs.MANAGED_BY: jobs.MANAGER})
def job_event(body: kopf.Body, **_: Any) -> None:
    labels = body.get("metadata", {}).get("labels") or {}
    kind = {"mobackup": "MOBackup", "morestore": "MORestore",
            "morestoredrill": drill.KIND}.get(labels.get(jobs.L_KIND, ""))
    if labels.get(jobs.L_ACTION) == "copy":  # the source storage's copy pass follows it
        if labels.get(copies.L_COPY_SOURCE):
            with STATE.lock:
                STATE.dirty_copies.add((body["metadata"]["namespace"], labels[copies.L_COPY_SOURCE]))
        return
    if not kind or labels.get(jobs.L_ACTION) == "delete":
        return
    owner = next((r for r in body.get("metadata", {}).get("ownerReferences") or [] if r.get("kind") == kind), None)
    if owner:
        drive(kind, body["metadata"]["namespace"], owner["name"])


# ------------------------------------------------------------------------------------------ storages

@kopf.on.event(GROUP, VERSION, "mobackupstorages")
def storage_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    obj = _raw(body)
    obj.setdefault("kind", "MOBackupStorage")
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if type == "DELETED":
        with STATE.lock:
            STATE.storages.pop(key, None)
        copies.forget_targets(_ctx(), obj)
        return
    with STATE.lock:
        old = STATE.storages.get(key)
        STATE.storages[key] = obj
        if old is not None and (old.get("spec") or {}).get("copyTo") != (obj.get("spec") or {}).get("copyTo"):
            STATE.dirty_copies.add(key)  # a changed copyTo: a pass now, not within copy_seconds
        if old is not None and _phase(old) != "Available" and _phase(obj) == "Available":
            # A copy target back: the storages copying to it resume now, not within copy_seconds.
            STATE.dirty_copies.update(k for k, o in STATE.storages.items() if k[0] == key[0] and any(
                isinstance(t, dict) and t.get("name") == key[1] for t in (o.get("spec") or {}).get("copyTo") or []))
    if controller.storage_check_due(obj, time.time()):
        _check_storage_async(key)
    else:  # e.g. an operator just started: the gauge says what the last check found until the next one
        controller.export_from_status(_ctx(), obj)


def _phase(obj: dict[str, Any]) -> Any:
    return (obj.get("status") or {}).get("phase")


_checking: set[tuple[str, str]] = set()
_recheck: set[tuple[str, str]] = set()  # forced checks asked for while one was running


def _storage_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("storage") or ((obj.get("spec") or {}).get("storageRef") or {}).get("name")


def recount_storage(ns: str, name: str | None) -> None:
    """A backup of this storage completed or its data was deleted: refresh backupCount now, not at
    the next periodic check (checkIntervalSeconds, 300 s by default)."""
    if name:
        _check_storage_async((ns, name), force=True)


def _check_storage_async(key: tuple[str, str], force: bool = False) -> None:
    """A check of an unreachable endpoint can take many seconds (retries): never in the resync loop."""
    with STATE.lock:
        if key in _checking:
            if force:  # the running check may have listed before this change: run once more after it
                _recheck.add(key)
            return
        _checking.add(key)

    def work() -> None:
        again = force
        while True:
            try:
                _check_storage(key, again)
            except Exception:
                log.exception("storage check of %s/%s", *key)
            with STATE.lock:
                again = key in _recheck
                _recheck.discard(key)
                if not again:
                    _checking.discard(key)
                    return

    threading.Thread(target=work, name=f"check-{key[1]}", daemon=True).start()


def _fresh_and_locked(kind: str, key: tuple[str, str], action: Callable[[Ctx, dict[str, Any]], None]
                      ) -> dict[str, Any] | None:
    """Re-read the object and run `action` on it under its per-object lock; None when it is gone."""
    ctx = _ctx()
    try:
        obj = ctx.kube.get_cr(kind, *key)
    except NotFound:
        return None
    obj.setdefault("kind", kind)
    with ctx.locked(obj["metadata"]["uid"]) as got:
        if got:
            action(ctx, obj)
    return obj


def _check_storage(key: tuple[str, str], force: bool = False) -> None:
    def check(ctx: Ctx, obj: dict[str, Any]) -> None:
        if force or controller.storage_check_due(obj, time.time()):
            controller.check_storage(ctx, obj)

    _fresh_and_locked("MOBackupStorage", key, check)


_copying: set[tuple[str, str]] = set()
_last_copies: dict[tuple[str, str], float] = {}  # when each storage's copy pass last started


def _copies_async(key: tuple[str, str]) -> None:
    """A copy pass may open the target repository (network): in its own thread, one per storage."""
    with STATE.lock:
        if key in _copying:
            STATE.dirty_copies.add(key)  # once more after the running pass
            return
        _copying.add(key)

    def work() -> None:
        try:
            _fresh_and_locked("MOBackupStorage", key, copies.reconcile_copies)
        except Exception:
            log.exception("copies of %s/%s", *key)
        finally:
            with STATE.lock:
                _copying.discard(key)

    threading.Thread(target=work, name=f"copy-{key[1]}", daemon=True).start()


# ------------------------------------------------------------------------------------------ schedules

@kopf.on.event(GROUP, VERSION, "mobackupschedules")
def schedule_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    obj = _raw(body)
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    with STATE.lock:
        if type == "DELETED":
            STATE.schedules.pop(key, None)
            return
        old = STATE.schedules.get(key)
        STATE.schedules[key] = obj
    changed = (old is None or old["metadata"].get("generation") != obj["metadata"].get("generation")
               or (old["metadata"].get("annotations") or {}).get(schedule.A_RUN_NOW)
               != (obj["metadata"].get("annotations") or {}).get(schedule.A_RUN_NOW))
    if changed:
        _drive_schedule(key)


def _drive_schedule(key: tuple[str, str]) -> None:
    obj = _fresh_and_locked("MOBackupSchedule", key, schedule.reconcile_schedule)
    if obj is None:
        return
    with STATE.lock:
        if key in STATE.schedules:
            STATE.schedules[key] = obj


def _schedule_due(obj: dict[str, Any], now: float, every: float, last_driven: float) -> bool:
    """Worth a pass: a run is due, one is active, or it has not been looked at for `every` seconds.
    (Idle schedules cost no API call: footprint with many schedules.)"""
    st = obj.get("status") or {}
    nxt = status.parse_iso(st.get("nextScheduleTime"))
    if nxt is None or nxt.timestamp() <= now or st.get("active"):
        return True
    return now - last_driven >= every


# ------------------------------------------------------------------------------------------ resync

def resync_once(last_sweep: float, last_schedules: dict[tuple[str, str], float]) -> float:
    ctx = _ctx()
    now = time.time()
    with STATE.lock:
        runs = list(STATE.active)
        storages = list(STATE.storages.items())
        schedules = list(STATE.schedules.items())
        dirty = set(STATE.dirty_schedules)
        STATE.dirty_schedules.clear()
        dirty_copies = set(STATE.dirty_copies) - _copying
        STATE.dirty_copies.difference_update(dirty_copies)
    for kind in ("MOBackup", "MORestore", drill.KIND):
        ctx.metrics.set("mobackup_active_runs", sum(1 for r in runs if r[0] == kind), kind=kind)
    for kind, ns, name in runs:
        try:
            drive(kind, ns, name)
        except Exception:
            log.exception("resync of %s %s/%s", kind, ns, name)
    for key, obj in storages:
        if controller.storage_check_due(obj, now):
            _check_storage_async(key)
        copying = (obj.get("spec") or {}).get("copyTo") or (obj.get("status") or {}).get("copies")
        if copying and (key in dirty_copies or now - _last_copies.get(key, 0.0) >= STATE.copy_seconds):
            _last_copies[key] = now
            _copies_async(key)
    for key, obj in schedules:
        last = last_schedules.get(key, now)  # the watch event of a new schedule drove it already
        last_schedules.setdefault(key, now)
        if key in dirty or (_schedule_due(obj, now, STATE.schedule_seconds, last) and now - last >= 1.0):
            last_schedules[key] = now
            try:
                _drive_schedule(key)
            except Exception:
                log.exception("schedule %s/%s", *key)
    if now - last_sweep >= STATE.sweep_seconds:
        for ns in STATE.namespaces or [None]:  # type: ignore[list-item]
            try:
                for line in workload.sweep(ctx.kube, ns):
                    log.info("scaled back a workload left down: %s", line)
            except Exception:
                log.exception("workload sweep")
        last_sweep = now
    return last_sweep


def resync_loop() -> None:
    last_sweep = 0.0
    last_schedules: dict[tuple[str, str], float] = {}
    while not STATE.stop.wait(STATE.resync_seconds):
        try:
            last_sweep = resync_once(last_sweep, last_schedules)
        except Exception:
            log.exception("resync")


FAST_SECONDS = 0.3


def fast_loop() -> None:
    """Runs waiting for the workload's pods to go: polled often, since MatrixOne is already down."""
    while not STATE.stop.wait(FAST_SECONDS):
        with STATE.lock:
            runs = list(STATE.fast)
        for kind, ns, name in runs:
            try:
                drive(kind, ns, name)
            except Exception:
                log.exception("fast pass of %s %s/%s", kind, ns, name)
