"""The reconcile logic of MOBackup, MORestore and MOBackupStorage (no kopf here: handlers.py calls it).

A run (MOBackup or MORestore) is a small state machine kept in its status, so any pass (a watch
event, the periodic resync, an operator restarted in the middle) continues from where it is:

    Pending: validate -> references exist -> Lease of the source -> (Stop) scale down, pods gone
             -> create the Job                                                   -> Running
    Running: Job still running -> renew the Lease; Job vanished -> Failed (JobVanished);
             Job done -> result from the pod's termination message -> scale back, release -> Completed/Failed
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import events, jobs, lease, models, retention, snapshot, status, storage, workload
from .kube import Conflict, Kube, NotFound
from .metrics import REGISTRY, Registry

log = logging.getLogger("mobackup.controller")

RUN_ACTIVE = (None, "", "Pending", "Running")


@dataclass
class Ctx:
    kube: Kube
    defaults: jobs.OperatorDefaults = field(default_factory=jobs.OperatorDefaults)
    metrics: Registry = REGISTRY
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def locked(self, uid: str) -> Iterator[bool]:
        """Serialise passes over one object (watch handlers and the resync thread both call in)."""
        with self._guard:
            lk = self._locks.setdefault(uid, threading.Lock())
        got = lk.acquire(timeout=60)
        try:
            yield got
        finally:
            if got:
                lk.release()

    def forget(self, uid: str) -> None:
        with self._guard:
            self._locks.pop(uid, None)


class Fail(Exception):
    """Stop the run as Failed with this reason (CamelCase) and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Wait(Exception):
    """Stay Pending with this reason and message (re-checked on the next pass)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def meta(obj: dict[str, Any]) -> tuple[str, str, str]:
    m = obj["metadata"]
    return m["namespace"], m["name"], m["uid"]


def holder_id(obj: dict[str, Any]) -> str:
    _ns, name, uid = meta(obj)
    return f"{obj['kind']}/{name}/{uid}"


def owner_of(obj: dict[str, Any]) -> jobs.Owner:
    ns, name, uid = meta(obj)
    return jobs.Owner(obj["kind"], name, ns, uid)


def transition(ctx: Ctx, obj: dict[str, Any], phase: str, reason: str, message: str,
               more_conditions: list[dict[str, Any]] | None = None, **fields: Any) -> None:
    """Patch the phase (+conditions, `more_conditions` in the same patch, result fields); an Event
    when phase or reason changes."""
    old = obj.get("status") or {}
    same = old.get("phase") == phase and old.get("reason") == reason and old.get("message") == message
    if same and all(old.get(k) == v for k, v in fields.items()):
        return
    ns, name, _ = meta(obj)
    patch = status.phase_patch(old, phase, reason, message, obj["metadata"].get("generation"),
                               more_conditions=more_conditions, **fields)
    try:
        ctx.kube.patch_status(obj["kind"], ns, name, patch)
    except NotFound:
        return
    obj["status"] = {**old, **patch}
    if (old.get("phase"), old.get("reason")) != (phase, reason):
        events.emit(ctx.kube, obj, "Warning" if phase == "Failed" else "Normal", reason, message)


def patch_fields(ctx: Ctx, obj: dict[str, Any], **fields: Any) -> None:
    old = obj.get("status") or {}
    if all(old.get(k) == v for k, v in fields.items()):
        return
    ns, name, _ = meta(obj)
    try:
        ctx.kube.patch_status(obj["kind"], ns, name, fields)
    except NotFound:
        return
    obj["status"] = {**old, **fields}


# ----------------------------------------------------------------------------------------- storage

def get_storage(ctx: Ctx, ns: str, name: str) -> tuple[dict[str, Any], models.StorageSpec]:
    try:
        obj = ctx.kube.get_cr("MOBackupStorage", ns, name)
    except NotFound:
        raise Fail("StorageNotFound", f"MOBackupStorage {ns}/{name} not found") from None
    try:
        return obj, models.parse_storage(obj.get("spec") or {})
    except models.SpecError as e:
        raise Fail("InvalidStorage", f"MOBackupStorage {name}: {e}") from None


def require_storage_ready(ctx: Ctx, ns: str, name: str) -> tuple[dict[str, Any], models.StorageSpec]:
    obj, st = get_storage(ctx, ns, name)
    try:
        storage.read_credentials(ctx.kube, ns, st, ctx.defaults.ambient_credential_buckets)
    except storage.MissingInput as e:
        raise Fail(e.reason, f"MOBackupStorage {name}: {e}") from None
    sst = obj.get("status") or {}
    if sst.get("phase") == "Unavailable":
        raise Fail("StorageUnavailable", f"MOBackupStorage {name} is unavailable: {sst.get('message', '')}")
    if not sst.get("phase"):
        raise Wait("WaitingForStorageCheck", f"MOBackupStorage {name} has not been checked yet")
    return obj, st


def refuse_storage_overlap(storage_spec: models.StorageSpec, storage_name: str, **places: Any) -> None:
    """Fail (StorageOverlap) a run whose data or target is its own repository (models.storage_overlap),
    before any Job: the engine refuses too, but only once the Job runs, and not a PVC mounted twice."""
    problem = models.storage_overlap(storage_spec, storage_name, **places)
    if problem:
        raise Fail("StorageOverlap", problem)


def s3_place(url: str) -> tuple[str, str]:
    """(bucket, prefix) of an s3:// URL the operator built."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def check_storage(ctx: Ctx, obj: dict[str, Any]) -> None:
    ns, name, _ = meta(obj)
    old = obj.get("status") or {}
    try:
        st = models.parse_storage(obj.get("spec") or {})
        result = storage.check(ctx.kube, ns, st, ctx.defaults.ambient_credential_buckets)
        location = st.location
    except models.SpecError as e:
        result, location = storage.CheckResult(False, "InvalidSpec", str(e)), None
    phase = "Available" if result.available else "Unavailable"
    gen = obj["metadata"].get("generation")
    patch: dict[str, Any] = {
        "phase": phase, "reason": result.reason, "message": result.message, "lastChecked": status.iso(),
        "observedGeneration": gen,
        "conditions": status.merge_conditions(old.get("conditions"), [
            status.condition("Available", result.available, result.reason, result.message, gen)]),
    }
    if location:
        patch["location"] = location
    if result.backup_count is not None:
        patch["backupCount"] = result.backup_count
    if result.object_lock is not None or (result.backup_count is not None and old.get("objectLock")):
        patch["objectLock"] = result.object_lock
    if result.available and location and storage.stats_due(old.get("stats"), result.backup_count,
                                                           status.now().timestamp()):
        try:
            policies = retention.policies_of_storage(ctx.kube.list_cr("MOBackupSchedule", ns), name)
            stats = storage.repo_stats(ctx.kube, ns, st, ctx.defaults.ambient_credential_buckets, policies)
        except Exception as e:  # the figures are extra: a failure never makes the storage unavailable
            log.warning("stats of MOBackupStorage %s/%s: %s", ns, name, e)
            stats = None
        if stats is not None:
            patch["stats"] = stats
            if stats.get("storedBytes") is not None:
                ctx.metrics.set("mobackup_storage_stored_bytes", stats["storedBytes"], namespace=ns, storage=name)
            else:
                ctx.metrics.remove("mobackup_storage_stored_bytes", namespace=ns, storage=name)
            export_class_bytes(ctx, ns, name, stats.get("bytesByRetentionClass"))
    if "stats" not in patch:  # not recomputed (at most hourly): the figures stay exported
        export_stats(ctx, ns, name, old.get("stats"))
    try:
        ctx.kube.patch_status("MOBackupStorage", ns, name, patch)
    except NotFound:
        return
    obj["status"] = {**old, **patch}
    ctx.metrics.set("mobackup_storage_available", 1 if result.available else 0, namespace=ns, storage=name)
    if old.get("phase") != phase or (old.get("reason") != result.reason and not result.available):
        events.emit(ctx.kube, obj, "Normal" if result.available else "Warning", result.reason, result.message)


def export_from_status(ctx: Ctx, obj: dict[str, Any]) -> None:
    """The storage's gauges from its status (the last check's verdict and figures), between checks:
    an operator just restarted exported none for up to checkIntervalSeconds, and an unavailable
    storage's alert resolved meanwhile."""
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    st = obj.get("status") or {}
    if st.get("phase") in ("Available", "Unavailable"):
        up = 1 if st["phase"] == "Available" else 0
        ctx.metrics.set("mobackup_storage_available", up, namespace=ns, storage=name)
    export_stats(ctx, ns, name, st.get("stats"))


def export_stats(ctx: Ctx, ns: str, name: str, stats: Any) -> None:
    """The gauges of status.stats as an earlier computation left them (a figure left out: nothing)."""
    if isinstance(stats, dict) and isinstance(stats.get("storedBytes"), int | float):
        ctx.metrics.set("mobackup_storage_stored_bytes", stats["storedBytes"], namespace=ns, storage=name)
        export_class_bytes(ctx, ns, name, stats.get("bytesByRetentionClass"))


def export_class_bytes(ctx: Ctx, ns: str, name: str, by_class: Any) -> None:
    """mobackup_storage_retention_class_bytes: status.stats.bytesByRetentionClass, one series a class."""
    from mobackup.engine.stats import RETENTION_CLASSES

    metric = "mobackup_storage_retention_class_bytes"
    for cls in RETENTION_CLASSES:
        value = by_class.get(cls) if isinstance(by_class, dict) else None
        labels = {"namespace": ns, "storage": name, "class": cls}
        if isinstance(value, int | float):
            ctx.metrics.set(metric, value, **labels)
        else:
            ctx.metrics.remove(metric, **labels)


def storage_check_due(obj: dict[str, Any], now_ts: float) -> bool:
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation") or not st.get("lastChecked"):
        return True
    interval = int((obj.get("spec") or {}).get("checkIntervalSeconds", 300))
    last = status.parse_iso(st["lastChecked"])
    return last is None or now_ts - last.timestamp() >= interval


# ------------------------------------------------------------------------------------ shared run parts

def _pods_of_job(ctx: Ctx, ns: str, job_name: str) -> list[dict[str, Any]]:
    pods = ctx.kube.list_pods(ns, f"job-name={job_name}")
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")


def job_outcome(ctx: Ctx, ns: str, job: dict[str, Any]) -> tuple[jobs.JobState, dict[str, Any] | None, str]:
    """(Job state, the agent's result JSON if any, a fallback message from the pods)."""
    state = jobs.job_state(job)
    if state.state == "Running":
        return state, None, ""
    pods = _pods_of_job(ctx, ns, job["metadata"]["name"])
    wanted = "Succeeded" if state.state == "Succeeded" else "Failed"
    fallback = ""
    for pod in reversed(pods):
        pst = pod.get("status") or {}
        msg = jobs.termination_message(pod)
        result = jobs.parse_result(msg)
        if result is not None and (pst.get("phase") == wanted or not fallback):
            return state, result, ""
        killed = jobs.memory_kill(pod) if result is None and state.state == "Failed" else None
        if killed and not fallback:  # the newest attempt died of it: no result could be written
            return state, {"ok": False, "reason": "OOMKilled", "error": killed}, ""
        if not fallback:
            fallback = (msg or pst.get("message") or pst.get("reason") or "").strip()[-500:]
    return state, None, fallback or state.message or state.reason


def scale_back(ctx: Ctx, obj: dict[str, Any], w: models.Workload | None = None) -> None:
    """Restore what this run recorded in its metadata, on the workload its spec names (no-op when it
    holds nothing; see workload.py)."""
    held = workload.spec_workload(obj)
    n = workload.scale_back(ctx.kube, obj)
    if n is not None and held is not None:
        events.emit(ctx.kube, obj, "Normal", "ScaledUp", f"{held.kind} {held.name} scaled back to {n} replicas")


def stop_workload(ctx: Ctx, obj: dict[str, Any], w: models.Workload) -> None:
    """Scale to 0 through /scale and wait until its pods are gone. The replicas are recorded on
    this run (annotation + finalizer, see workload.py) BEFORE the scale-down, so they are never lost."""
    ns, _, uid = meta(obj)
    if not workload.holds(obj, w):
        try:
            prev, _ = workload.read_scale(ctx.kube, ns, w)
        except workload.WorkloadError as e:
            raise Fail("WorkloadError", str(e)) from None
        other = workload.other_holder(ctx.kube, ns, w, uid)
        if other is not None:
            who = f"{other['kind']} {other['metadata']['name']}"
            if workload.run_active(other):
                raise Fail("WorkloadError", f"{w.kind} {ns}/{w.name} is already scaled down by {who}")
            raise Wait("WaitingForWorkload", f"{w.kind} {w.name} is still held down by the finished {who}; "
                                             "it is scaled back first")
        workload.hold(ctx.kube, obj, prev)
        patch_fields(ctx, obj, scaledWorkload={"kind": w.kind, "name": w.name, "replicas": prev,
                                               "scaledDownAt": status.iso()})
        events.emit(ctx.kube, obj, "Normal", "ScaledDown", f"{w.kind} {w.name} scaled from {prev} to 0")
    try:
        workload.scale(ctx.kube, ns, w, 0)
    except NotFound:
        raise Fail("WorkloadError", f"{w.kind} {ns}/{w.name} not found") from None
    gone, left = workload.pods_gone(ctx.kube, ns, w)
    if not gone:
        raise Wait("WaitingForPodsToStop", f"{w.kind} {w.name}: {left} pod(s) still running")


def take_lease(ctx: Ctx, obj: dict[str, Any], claim: str) -> None:
    ns, _, _ = meta(obj)
    out = lease.acquire(ctx.kube, ns, claim, holder_id(obj),
                        lambda h: workload.holder_active(ctx.kube, ns, h))
    if not out.acquired:
        who = out.holder or "another run"
        parsed = workload.parse_holder(who)
        who = f"{parsed[0]} {parsed[1]}" if parsed else who
        raise Wait("WaitingForLease", f"{who} is using PVC {claim}; one backup or restore at a time per source")


def run_key(obj: dict[str, Any], spec: models.BackupSpec | models.RestoreSpec) -> str:
    """What a run's Lease is named after: its PVC, or the S3 prefix of the table data it resolved
    (status.sharedStorage), so that a MatrixOneCluster and the same data given as sharedStorage
    exclude each other; before that resolution, what the spec names."""
    if spec.volume is None:
        resolved = (obj.get("status") or {}).get("sharedStorage")
        if resolved:
            return str(resolved)
    return spec.lease_key


def lease_s3_source(ctx: Ctx, obj: dict[str, Any], source: S3Source) -> None:
    """Record the resolved prefix (run_key reads it back on every later pass), then take its Lease."""
    patch_fields(ctx, obj, sharedStorage=source.shared.data_url)
    take_lease(ctx, obj, source.shared.data_url)


def run_job_name(obj: dict[str, Any], action: str) -> str:
    """The Job a run follows: status.jobName only when it is one of the run's own (derived) names, so
    a patched status cannot point the operator at another Job's result."""
    owner = owner_of(obj)
    name = (obj.get("status") or {}).get("jobName")
    return str(name) if name in jobs.run_job_names(owner) else jobs.job_name(owner, action)


def create_job(ctx: Ctx, obj: dict[str, Any], body: dict[str, Any]) -> str:
    ns = obj["metadata"]["namespace"]
    name = body["metadata"]["name"]
    require_job_secrets(ctx, ns, body)
    # Conflict: created by an earlier pass (e.g. before an operator restart): adopt it.
    with contextlib.suppress(Conflict):
        ctx.kube.create_job(ns, body)
    return name


def require_job_secrets(ctx: Ctx, ns: str, body: dict[str, Any]) -> None:
    """Every Secret a Job would read must be one its owner opted in (storage module docstring): the
    one check that covers each run kind and each way a spec names a Secret."""
    chart = ctx.defaults.job_defaults
    installer_chose = storage.pod_secrets({"containers": [{"env": chart.get("env"), "envFrom": chart.get("envFrom")}]})
    try:
        storage.check_job_secrets(ctx.kube, ns, body, installer_chose)
    except storage.MissingInput as e:
        raise Fail(e.reason, f"Job {body['metadata']['name']}: {e}") from None


def finish(ctx: Ctx, obj: dict[str, Any], claim: str, w: models.Workload | None, ok: bool, reason: str,
           message: str, more_conditions: list[dict[str, Any]] | None = None, **fields: Any) -> None:
    """Scale back and release first, then the terminal phase: a crash in between is repaired."""
    ns, _, _ = meta(obj)
    try:
        scale_back(ctx, obj, w)
    except Exception as e:  # the sweeper retries; the phase must still become terminal
        log.warning("scale back failed: %s", e)
    drop_snapshot(ctx, obj)
    lease.release(ctx.kube, ns, claim, holder_id(obj))
    kind = obj["kind"]
    started = status.parse_iso((obj.get("status") or {}).get("startTime"))
    # Metrics first: whoever sees the terminal phase also finds it counted.
    ctx.metrics.inc("mobackup_successes_total" if ok else "mobackup_failures_total", kind=kind, namespace=ns)
    if started:
        ctx.metrics.observe("mobackup_run_duration_seconds", (status.now() - started).total_seconds(), kind=kind)
    transition(ctx, obj, "Completed" if ok else "Failed", reason, message, more_conditions, **fields)


def drop_snapshot(ctx: Ctx, obj: dict[str, Any]) -> None:
    if obj.get("kind") == "MOBackup" and (obj.get("status") or {}).get("snapshot"):
        try:
            snapshot.cleanup(ctx.kube, owner_of(obj))
        except Exception as e:  # owned by the MOBackup: the GC removes them with it at the latest
            log.warning("snapshot cleanup failed: %s", e)


def fail_early(ctx: Ctx, obj: dict[str, Any], e: Fail, claim: str | None, w: models.Workload | None) -> None:
    if claim:
        finish(ctx, obj, claim, w, False, e.reason, str(e))
    else:
        transition(ctx, obj, "Failed", e.reason, str(e))
        ctx.metrics.inc("mobackup_failures_total", kind=obj["kind"], namespace=obj["metadata"]["namespace"])


# ------------------------------------------------------------------------------------------ MOBackup

def _reconcile_run(ctx: Ctx, obj: dict[str, Any], parse: Callable[[dict[str, Any]], Any],
                   start: Callable[..., None], follow: Callable[..., None],
                   stopped_workload: Callable[[Any], models.Workload | None]) -> None:
    """One pass over an MOBackup or MORestore: parse the spec (Failed when invalid), then start the run
    or follow its Job. `Wait` keeps it Pending with a reason; `Fail` fails it and scales back the
    workload the run stopped."""
    phase = (obj.get("status") or {}).get("phase")
    if obj["metadata"].get("deletionTimestamp"):
        if workload.FINALIZER in (obj["metadata"].get("finalizers") or []):
            cleanup_run(ctx, obj)  # our finalizer holds the deletion until the workload is back
        return
    if phase not in RUN_ACTIVE:
        return
    try:
        spec = parse(obj.get("spec") or {})
    except models.SpecError as e:
        fail_early(ctx, obj, Fail("InvalidSpec", str(e)), None, None)
        return
    try:
        if phase != "Running":
            check_job_overrides(ctx, spec.job)
        (follow if phase == "Running" else start)(ctx, obj, spec)
    except Wait as e:
        transition(ctx, obj, "Pending", e.reason, str(e))
    except Fail as e:
        fail_early(ctx, obj, e, run_key(obj, spec), stopped_workload(spec))


def check_job_overrides(ctx: Ctx, overrides: models.JobOverrides) -> None:
    """spec.job may not pick another image/ServiceAccount or weaken the pod (see jobs.py)."""
    try:
        jobs.check_overrides(overrides, ctx.defaults)
    except jobs.JobPolicyError as e:
        raise Fail("JobOverrideNotAllowed", str(e)) from None


def reconcile_backup(ctx: Ctx, obj: dict[str, Any]) -> None:
    ns = obj["metadata"]["namespace"]
    _reconcile_run(ctx, obj, lambda spec: models.parse_backup(spec, ns), start_backup, follow_backup,
                   lambda spec: spec.workload if spec.consistency == "Stop" else None)


def resolve_base(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec) -> str | None:
    ns, _, _ = meta(obj)
    if spec.type != "Incremental":
        return None
    if spec.base_id:
        return spec.base_id
    if not spec.base_name:
        return None  # the engine picks the latest completed backup of the source in the repository
    base = completed_backup(ctx, ns, spec.base_name, BASE_REASONS, "base MOBackup")
    bst = base["status"]
    try:
        bspec = models.parse_backup(base.get("spec") or {}, ns)
    except models.SpecError:
        raise Fail("InvalidBase", f"base MOBackup {spec.base_name} has an invalid spec") from None
    if bspec.storage != spec.storage:
        raise Fail("InvalidBase", f"base MOBackup {spec.base_name} is in storage {bspec.storage}, "
                                  f"not {spec.storage}")
    base_source = bst.get("source") or bspec.source_name
    if base_source != spec.source_name:
        raise Fail("InvalidBase", f"base MOBackup {spec.base_name} is of source {base_source!r}, "
                                  f"not {spec.source_name!r}")
    return str(bst["backupID"])


def start_backup(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec) -> None:
    ns, _, _ = meta(obj)
    if not (obj.get("status") or {}).get("phase"):
        transition(ctx, obj, "Pending", "Accepted", "validated; preparing the backup",
                   type=spec.type, source=spec.source_name, storage=spec.storage)
    _, st = require_storage_ready(ctx, ns, spec.storage)
    if spec.volume is None:
        start_s3_backup(ctx, obj, spec, st)
        return
    refuse_storage_overlap(st, spec.storage, claims={
        "spec.source.pvc.claimName": spec.volume.claim,
        "the snapshot's clone PVC": snapshot.names(owner_of(obj))[1] if spec.consistency == "Snapshot" else None})
    storage.require_pvc(ctx.kube, ns, spec.volume.claim, "source")
    base_id = resolve_base(ctx, obj, spec)
    if spec.sql:
        try:
            storage.secret_value(ctx.kube, ns, spec.sql.password)
        except storage.MissingInput as e:
            raise Fail(e.reason, f"source.sql: {e}") from None
    if spec.consistency == "Snapshot" and not ctx.kube.has_api(snapshot.GROUP, snapshot.VERSION):
        raise Fail("SnapshotUnsupported", "consistency Snapshot needs the CSI VolumeSnapshot API "
                                          "(snapshot.storage.k8s.io/v1), which this cluster does not serve; "
                                          "use consistency Stop")
    online = online_placement(ctx, ns, spec) if spec.consistency == "Online" else None
    take_lease(ctx, obj, spec.volume.claim)
    # Online: BACKUP checkpoints by itself and the agent reports the version.
    mo_version = None if online else sql_checkpoint(ctx, obj, spec)
    from . import pointintime  # the PITR windows, read while MatrixOne still answers
    pitr_record = pointintime.backup_record(ctx, obj, spec)
    if spec.consistency == "Stop" and spec.workload:
        stop_workload(ctx, obj, spec.workload)
    clone = None
    if spec.consistency == "Snapshot":
        try:
            snap, clone = snapshot.ensure_clone(ctx.kube, owner_of(obj), spec.volume.claim, spec.snapshot_class)
        except snapshot.SnapshotWait as e:
            raise Wait("WaitingForSnapshot", str(e)) from None
        except snapshot.SnapshotError as e:
            raise Fail("SnapshotFailed", str(e)) from None
        if not (obj.get("status") or {}).get("snapshot"):
            patch_fields(ctx, obj, snapshot={"name": snap, "cloneClaim": clone, "readyAt": status.iso()})
            events.emit(ctx.kube, obj, "Normal", "SnapshotReady", f"VolumeSnapshot {snap} ready, cloned to {clone}")
    body = jobs.backup_job(owner_of(obj), spec, st, base_id=base_id, defaults=ctx.defaults, claim=clone,
                           mo_version=mo_version, online=online, pitr_record=pitr_record)
    job_name = create_job(ctx, obj, body)
    ctx.metrics.inc("mobackup_runs_total", kind="MOBackup", namespace=ns)
    how = (f"has MatrixOne back itself up online into {online.server_data_dir}, then stores it" if online
           else f"is copying {spec.volume.claim}/{spec.volume.path}")
    transition(ctx, obj, "Running", "JobCreated", f"Job {job_name} {how} to {st.location}", jobName=job_name,
               startTime=status.iso(), location=st.location, type=spec.type, source=spec.source_name,
               storage=spec.storage, consistency=spec.consistency, **({"baseBackupID": base_id} if base_id else {}))


# ------------------------------------------------------------- MatrixOne with table data in S3

S3_STEP_NAMES = {"stage": "MatrixOne's BACKUP (stage)", "ingest": "the ingest shards", "commit": "the commit"}


@dataclass(frozen=True)
class S3Source:
    shared: models.SharedS3
    sql: models.SqlEndpoint | None
    running_sets: tuple[str, ...] = ()

    @property
    def sql_endpoints(self) -> list[str]:
        """Where a restore's Job checks that MatrixOne is stopped (--check-stopped)."""
        return [f"{self.sql.host}:{self.sql.port}"] if self.sql else []


def s3_source(ctx: Ctx, ns: str, cluster: str | None, shared: models.SharedS3 | None,
              sql: models.SqlEndpoint | None) -> S3Source:
    """The S3 data (and SQL endpoint) of a MatrixOneCluster by name, or as given; its key Secret checked."""
    from .mocluster import ClusterError, cluster_source

    if cluster:
        try:
            found = cluster_source(ctx.kube, ns, cluster, sql)
        except ClusterError as e:
            raise Fail(e.reason, str(e)) from None
        source = S3Source(found.shared, found.sql, found.running_sets)
    else:
        assert shared is not None
        source = S3Source(shared, sql)
    for key in (jobs.SHARED_KEY_ID, jobs.SHARED_SECRET_KEY):
        try:
            storage.secret_value(ctx.kube, ns, models.SecretKey(source.shared.secret, key))
        except storage.MissingInput as e:
            raise Fail(e.reason, f"sharedStorage.s3.secretRef: {e}") from None
    return source


def start_s3_backup(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec, st: models.StorageSpec) -> None:
    """Online through MatrixOne's BACKUP into an S3 staging prefix: one Job (parallelPods 1), or
    stage -> Indexed Job of parallelPods ingest pods -> commit (next_s3_step)."""
    ns, _, _ = meta(obj)
    base_id = resolve_base(ctx, obj, spec)
    source = s3_source(ctx, ns, spec.cluster, spec.shared, spec.sql)
    refuse_storage_overlap(st, spec.storage, staging=s3_place(jobs.staging_url(spec, source.shared)))
    if source.sql is None:
        raise Wait("WaitingForCluster", f"MatrixOneCluster {spec.cluster} reports no SQL endpoint yet (status.host "
                                        "and status.credentialRef are set once it is Ready); or give source.sql")
    try:
        storage.secret_value(ctx.kube, ns, source.sql.password)
    except storage.MissingInput as e:
        raise Fail(e.reason, f"source.sql: {e}") from None
    lease_s3_source(ctx, obj, source)
    step = "backup" if spec.parallel_pods == 1 else "stage"
    from . import pointintime  # the PITR windows (and, with pointInTime.window, the PITR made first)
    pitr_record = pointintime.backup_record(ctx, obj, spec, source.sql) if step == "backup" else None
    body = jobs.s3_backup_job(owner_of(obj), spec, st, source.shared, source.sql, step=step, defaults=ctx.defaults,
                              base_id=base_id, pitr_record=pitr_record)
    job_name = create_job(ctx, obj, body)
    ctx.metrics.inc("mobackup_runs_total", kind="MOBackup", namespace=ns)
    staging = jobs.staging_url(spec, source.shared)
    how = ("has MatrixOne back itself up online" if step == "backup"
           else f"has MatrixOne back itself up online (then {spec.parallel_pods} pods store it)")
    transition(ctx, obj, "Running", "JobCreated", f"Job {job_name} {how} into {staging}, to {st.location}",
               jobName=job_name, startTime=status.iso(), location=st.location, type=spec.type,
               source=spec.source_name, storage=spec.storage, consistency="Online", step=step,
               sharedStorage=source.shared.data_url, **({"baseBackupID": base_id} if base_id else {}))


def next_s3_step(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec, step: str, result: dict[str, Any]) -> None:
    """stage done -> the Indexed ingest Job; ingest done -> the commit Job."""
    ns, _, _ = meta(obj)
    st = obj.get("status") or {}
    run_id = str(result.get("run_id") or st.get("runID") or "")
    if not run_id:
        finish(ctx, obj, run_key(obj, spec), None, False, "NoResult", f"{S3_STEP_NAMES[step]} reported no run ID")
        return
    _, storage_spec = get_storage(ctx, ns, spec.storage)
    source = s3_source(ctx, ns, spec.cluster, spec.shared, spec.sql)
    following = "ingest" if step == "stage" else "commit"
    body = jobs.s3_backup_job(owner_of(obj), spec, storage_spec, source.shared, None, step=following,
                              defaults=ctx.defaults, run_id=run_id)
    job_name = create_job(ctx, obj, body)
    fields: dict[str, Any] = {"jobName": job_name, "step": following, "runID": run_id}
    if step == "stage":
        fields.update(stagedBytes=result.get("staged_bytes"), backupTS=result.get("backup_ts"),
                      moVersion=result.get("mo_version"))
        message = (f"MatrixOne staged {result.get('staged_files')} files ({result.get('staged_bytes')} bytes); "
                   f"Job {job_name} stores them in {spec.parallel_pods} pods")
    else:
        message = f"all {spec.parallel_pods} shards stored; Job {job_name} lists the backup"
    events.emit(ctx.kube, obj, "Normal", "Staged" if step == "stage" else "ShardsStored", message)
    transition(ctx, obj, "Running", "JobCreated", message, **{k: v for k, v in fields.items() if v is not None})


def start_s3_restore(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec, st: models.StorageSpec,
                     backup_id: str, storage_name: str, backup_ts: str | None) -> None:
    """Into the SHARED prefix of a stopped cluster (refused while a MatrixOneCluster asks for pods or
    its SQL endpoint answers), or of a new one; hk_data into the log volume and beside the data."""
    ns, _, _ = meta(obj)
    source = s3_source(ctx, ns, spec.cluster, spec.shared, spec.sql_check)
    if source.running_sets:
        sets = ", ".join(source.running_sets)
        raise Fail("ClusterRunning", f"MatrixOneCluster {spec.cluster} still asks for pods ({sets}): set every "
                                     "set's replicas to 0 (and spec.logService.pvcRetentionPolicy Retain if its "
                                     "volumes must stay), then create the MORestore again")
    shared = source.shared
    log_claim = spec.log_volume.claim if spec.log_volume else None
    refuse_storage_overlap(st, storage_name, claims={"spec.target.logVolume.claimName": log_claim},
                           writes={"the target's data prefix": (shared.bucket, shared.key_prefix),
                                   "the ID allocator state (hk_data)": (shared.bucket, shared.key("hk_data"))})
    if spec.log_volume is not None:
        storage.require_pvc(ctx.kube, ns, spec.log_volume.claim, "target.logVolume")
    lease_s3_source(ctx, obj, source)
    if spec.workload:
        stop_workload(ctx, obj, spec.workload)
    step = "restore" if spec.parallel_pods == 1 else "shards"
    body = jobs.s3_restore_job(owner_of(obj), spec, st, backup_id, source.shared, source.sql_endpoints,
                               ctx.defaults, step)
    job_name = create_job(ctx, obj, body)
    ctx.metrics.inc("mobackup_runs_total", kind="MORestore", namespace=ns)
    pods = f" in {spec.parallel_pods} pods" if step == "shards" else ""
    transition(ctx, obj, "Running", "JobCreated", f"Job {job_name} is restoring {backup_id} into "
               f"{source.shared.data_url}{pods}", jobName=job_name, startTime=status.iso(), backupID=backup_id,
               storage=storage_name, location=st.location, target=spec.target_label, step=step,
               sharedStorage=source.shared.data_url, **({"backupTS": backup_ts} if backup_ts else {}))


def s3_restore_finalize(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> None:
    """Every shard uploaded its objects: the Job that checks them all, removes the others (overwrite)
    and writes the ID allocator state."""
    ns, _, _ = meta(obj)
    # Resolved again from the (immutable) spec, not read back from the status.
    backup_id, storage_name, _ = resolve_restore_backup(ctx, ns, spec)
    _, storage_spec = get_storage(ctx, ns, storage_name)
    source = s3_source(ctx, ns, spec.cluster, spec.shared, spec.sql_check)
    body = jobs.s3_restore_job(owner_of(obj), spec, storage_spec, backup_id, source.shared,
                               source.sql_endpoints, ctx.defaults, "finalize")
    job_name = create_job(ctx, obj, body)
    message = f"all {spec.parallel_pods} shards uploaded; Job {job_name} completes the restore"
    events.emit(ctx.kube, obj, "Normal", "ShardsRestored", message)
    transition(ctx, obj, "Running", "JobCreated", message, jobName=job_name, step="finalize")


def online_placement(ctx: Ctx, ns: str, spec: models.BackupSpec) -> jobs.OnlinePlacement:
    from .online import PlacementError, placement

    try:
        return placement(ctx.kube, ns, spec)
    except PlacementError as e:
        raise Fail(e.reason, str(e)) from None
    except NotFound:
        w = spec.workload
        raise Fail("WorkloadNotFound", f"{w.kind if w else 'workload'} {w.name if w else ''} not found") from None


def sql_checkpoint(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec) -> str | None:
    """Force a checkpoint through the SQL endpoint (once per run) and learn the MatrixOne version.

    Required for Snapshot (the crash-consistent image should hold a fresh checkpoint); for Stop it
    only shortens MatrixOne's restart, so a failure is a Warning Event and the cold copy goes on.
    """
    st = obj.get("status") or {}
    if not spec.sql or st.get("checkpoint"):
        return st.get("moVersion")
    from mobackup.engine.errors import MobackupError
    from mobackup.engine.mosql import SqlEndpoint, prepare_backup

    ns, _, _ = meta(obj)
    sql = spec.sql
    try:
        password = storage.secret_value(ctx.kube, ns, sql.password)
    except storage.MissingInput as e:
        raise Fail(e.reason, f"source.sql: {e}") from None
    try:
        version = prepare_backup(SqlEndpoint(sql.host, sql.port, sql.user, password, sql.database, timeout=10))
    except MobackupError as e:
        if spec.consistency == "Snapshot":
            raise Fail("CheckpointFailed", str(e)) from None
        patch_fields(ctx, obj, checkpoint={"time": status.iso(), "ok": False, "message": str(e)[:500]})
        events.emit(ctx.kube, obj, "Warning", "CheckpointFailed", f"{e}; copying the stopped data anyway")
        return None
    patch_fields(ctx, obj, checkpoint={"time": status.iso(), "ok": True, "message": "checkpoint done"},
                 moVersion=version)
    events.emit(ctx.kube, obj, "Normal", "Checkpoint", f"MatrixOne {version} checkpointed before the copy")
    return version


def follow_backup(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec) -> None:
    ns, _, _ = meta(obj)
    st = obj.get("status") or {}
    job_name = run_job_name(obj, "backup")
    w = spec.workload if spec.consistency == "Stop" else None
    key = run_key(obj, spec)
    try:
        job = ctx.kube.get_job(ns, job_name)
    except NotFound:
        finish(ctx, obj, key, w, False, "JobVanished",
               f"Job {job_name} disappeared before reporting a result")
        return
    state, result, fallback = job_outcome(ctx, ns, job)
    if state.state == "Running":
        take_lease(ctx, obj, key)  # renew
        if state.attempts and state.attempts != st.get("attempts"):
            patch_fields(ctx, obj, attempts=state.attempts)
        return
    step = st.get("step")
    if step in ("stage", "ingest") and state.state == "Succeeded" and result and result.get("ok"):
        next_s3_step(ctx, obj, spec, step, result.get("result") or {})
        return
    if state.state == "Succeeded" and not result and step in (None, "backup", "commit"):
        result = summary_from_repository(ctx, obj, spec)
    if result and result.get("ok"):
        reported = result.get("result") or {}
        fields = status.backup_result_fields(reported)
        record_backup_id(ctx, obj, fields.get("backupID"))
        retried = reported.get("backup_retries")
        if isinstance(retried, int) and not isinstance(retried, bool) and retried > 0:
            events.emit(ctx.kube, obj, "Warning", "BackupRetried",
                        f"MatrixOne's BACKUP failed {retried} time(s) in a way that may pass on its own and was run "
                        f"again into a fresh staging; last: {str(reported.get('backup_retry_reason'))[:200]}")
        from . import pointintime
        recoverable = pointintime.backup_condition(obj, {**st, **fields})
        finish(ctx, obj, key, w, True, "BackupCompleted",
               f"backup {fields.get('backupID')} completed: {fields.get('size')} in {fields.get('fileCount')} "
               f"files, {fields.get('newBytes')} new bytes", attempts=state.attempts,
               more_conditions=[recoverable] if recoverable else [], **fields)
        ctx.metrics.inc("mobackup_transferred_bytes_total", float(fields.get("newBytes") or 0),
                        kind="MOBackup", namespace=ns)
        record_success_metrics(ctx, obj)
        return
    if result:
        reason, message = str(result.get("reason") or "BackupFailed"), str(result.get("error") or "")
    else:
        reason = "JobFailed" if state.state == "Failed" else "NoResult"
        message = f"Job {job_name}: {state.reason}: {fallback}".strip()
    if state.state == "Failed" and state.reason in ("DeadlineExceeded", "BackoffLimitExceeded",
                                                     "FailedIndexes") and result:
        message = f"{message} (Job {state.reason})"
    if step in ("stage", "ingest", "commit"):
        message = f"{S3_STEP_NAMES[step]}: {message} (nothing was listed)"
    finish(ctx, obj, key, w, False, reason, message, attempts=state.attempts)


def summary_from_repository(ctx: Ctx, obj: dict[str, Any], spec: models.BackupSpec) -> dict[str, Any] | None:
    """The Job succeeded but its termination message is lost (e.g. the pod was garbage-collected):
    take the manifest this run published (same source, started after the Job was created)."""
    from mobackup.engine.errors import MobackupError

    ns, _, _ = meta(obj)
    started = status.parse_iso((obj.get("status") or {}).get("startTime"))
    try:
        _, st = get_storage(ctx, ns, spec.storage)
        repo = storage.open_repo(ctx.kube, ns, st, ctx.defaults.ambient_credential_buckets)
        if repo is None or started is None:
            return None
        mine = [s for s in repo.list_backups() if s.source == spec.source_name
                and (status.parse_iso(s.started_at) or started) >= started - timedelta(seconds=5)]
    except (Fail, MobackupError, storage.MissingInput) as e:
        log.warning("no result from the repository either: %s", e)
        return None
    if len(mine) != 1:
        return None
    log.info("result of %s read from the repository manifest %s", obj["metadata"]["name"], mine[0].id)
    from mobackup.engine.pitr import interval_fields

    return {"ok": True, "action": "backup", "result": {**mine[0].to_dict(), **interval_fields(mine[0])},
            "from": "repository"}


def record_success_metrics(ctx: Ctx, obj: dict[str, Any]) -> None:
    st = obj.get("status") or {}
    if st.get("phase") != "Completed":
        return
    done = status.parse_iso(st.get("completionTime"))
    source = str(st.get("source") or "")
    ns = obj["metadata"]["namespace"]
    if done is None:
        return
    prev = ctx.metrics.get("mobackup_last_success_timestamp_seconds", namespace=ns, source=source)
    if prev is None or done.timestamp() >= prev:
        ctx.metrics.set("mobackup_last_success_timestamp_seconds", done.timestamp(), namespace=ns, source=source)
        ctx.metrics.set("mobackup_last_success_size_bytes", float(st.get("sizeBytes") or 0), namespace=ns,
                        source=source)


A_BACKUP_ID = "mobackup.io/backup-id"


def record_backup_id(ctx: Ctx, obj: dict[str, Any], backup_id: Any) -> None:
    """Write the backup ID into the MOBackup's metadata too: what deletion, restores and drills act on
    must be what the operator recorded, and neither a Job nor a status patch can write metadata."""
    if not backup_id:
        return
    ns, name, _ = meta(obj)
    try:
        updated = ctx.kube.patch_cr(obj["kind"], ns, name, {"metadata": {"annotations": {A_BACKUP_ID: str(backup_id)}}})
    except NotFound:
        return
    obj["metadata"] = updated.get("metadata") or obj["metadata"]  # with the new resourceVersion


def recorded_backup_id(obj: dict[str, Any]) -> str | None:
    """The ID of a Completed MOBackup's backup; None without one. Raises Fail when status.backupID is
    not the ID the operator recorded in metadata (the status was patched by someone else). A MOBackup
    completed before that record existed has only its status: the Jobs then check the backup in the
    repository (delete: --source, --not-before)."""
    st = obj.get("status") or {}
    if st.get("phase") != "Completed" or not st.get("backupID"):
        return None
    recorded = (obj["metadata"].get("annotations") or {}).get(A_BACKUP_ID)
    if recorded is not None and recorded != st["backupID"]:
        raise Fail("BackupIDMismatch", f"MOBackup {obj['metadata']['name']}: status.backupID {st['backupID']!r} "
                                       f"is not the backup the operator recorded ({recorded!r})")
    return str(st["backupID"])


def cleanup_run(ctx: Ctx, obj: dict[str, Any]) -> None:
    """The resource is being deleted (or is gone): stop the Job if still active, scale back what it
    holds down (which also drops its finalizer), release its Lease."""
    ns, _, _ = meta(obj)
    st = obj.get("status") or {}
    active = st.get("phase") in ("Pending", "Running")
    if active or workload.holds(obj):
        workload.delete_jobs(ctx.kube, obj)  # its own Jobs by name, whatever the status says
    try:
        scale_back(ctx, obj)
    except Exception as e:
        log.warning("scale back on deletion failed (the sweeper retries): %s", e)
    if not active:
        return
    drop_snapshot(ctx, obj)
    try:
        key = run_key(obj, models.parse_backup(obj.get("spec") or {}, ns) if obj["kind"] == "MOBackup"
                      else models.parse_restore(obj.get("spec") or {}))
    except models.SpecError:
        return
    lease.release(ctx.kube, ns, key, holder_id(obj))


def hold_deletion(ctx: Ctx, obj: dict[str, Any], backup_id: str, until: datetime) -> str:
    """A locked backup is not attempted (the bucket would refuse): the MOBackup stays, saying when
    its data is deleted (the deletion handler retries then)."""
    message = (f"backup {backup_id} is under S3 Object Lock until {status.iso(until)}: its data is deleted "
               "then (the MOBackup stays until that)")
    if (obj.get("status") or {}).get("message") != message:
        patch_fields(ctx, obj, reason="ObjectLocked", message=message)
        events.emit(ctx.kube, obj, "Normal", "ObjectLocked", message)
    return message


def delete_backup_data(ctx: Ctx, obj: dict[str, Any]) -> tuple[bool, str]:
    """deletionPolicy Delete: run (or follow) the delete Job. (done, message)."""
    ns, _name, _ = meta(obj)
    cleanup_run(ctx, obj)
    try:
        backup_id = recorded_backup_id(obj)
    except Fail as e:  # deleting what a patched status names could remove another backup: keep the data
        events.emit(ctx.kube, obj, "Warning", e.reason, f"{e}; nothing deleted")
        return True, f"not deleted: {e}"
    if not backup_id:
        return True, "no backup data to delete"
    held = status.locked_until(obj)
    if held is not None:
        return False, hold_deletion(ctx, obj, backup_id, held)
    spec = models.parse_backup(obj.get("spec") or {}, ns)
    try:
        _, stg = get_storage(ctx, ns, spec.storage)
    except Fail as e:
        return False, f"cannot delete backup {backup_id}: {e}"
    owner = owner_of(obj)
    try:
        body = jobs.delete_job(owner, stg, backup_id, spec.job, ctx.defaults, source=spec.source_name,
                               not_before=obj["metadata"].get("creationTimestamp"))
    except jobs.JobPolicyError as e:
        message = f"cannot delete backup {backup_id}: {e}"
        if (obj.get("status") or {}).get("message") != message:
            patch_fields(ctx, obj, reason="JobOverrideNotAllowed", message=message)
            events.emit(ctx.kube, obj, "Warning", "JobOverrideNotAllowed", message)
        return False, message
    # Not owned by the MOBackup (it is being deleted: the GC could remove the Job at once); the
    # operator deletes it after reading the result, ttlSecondsAfterFinished is the backstop.
    body["metadata"].pop("ownerReferences", None)
    body["spec"].setdefault("ttlSecondsAfterFinished", 600)
    body["spec"]["backoffLimit"] = 0
    jname = body["metadata"]["name"]
    try:
        job = ctx.kube.get_job(ns, jname)
    except NotFound:
        try:
            require_job_secrets(ctx, ns, body)
        except Fail as e:
            return False, f"cannot delete backup {backup_id}: {e}"
        ctx.kube.create_job(ns, body)
        ctx.metrics.inc("mobackup_runs_total", kind="Delete", namespace=ns)
        events.emit(ctx.kube, obj, "Normal", "DeletingData", f"Job {jname} deletes backup {backup_id}")
        return False, f"Job {jname} is deleting backup {backup_id}"
    state, result, fallback = job_outcome(ctx, ns, job)
    if state.state == "Running":
        return False, f"Job {jname} is deleting backup {backup_id}"
    ctx.kube.delete_job(ns, jname)
    if result and result.get("ok"):
        ctx.metrics.inc("mobackup_successes_total", kind="Delete", namespace=ns)
        message = f"backup {backup_id} deleted from {stg.location}"
        # Backups based on it are no reason to refuse: each restores from its own complete file list.
        outcome = result.get("result")
        dependents = outcome.get("dependents") if isinstance(outcome, dict) else None
        if isinstance(dependents, list) and dependents:
            message += f"; based on it, still restorable: {', '.join(map(str, dependents))}"
        events.emit(ctx.kube, obj, "Normal", "DataDeleted", message)
        return True, "deleted"
    ctx.metrics.inc("mobackup_failures_total", kind="Delete", namespace=ns)
    if result and result.get("reason") == "BackupNotFound":
        return True, "already absent"
    if result and result.get("reason") == "RetentionError":  # a lock the status did not say: wait for it
        message = f"backup {backup_id} not deleted yet: {result.get('error')}"
        if (obj.get("status") or {}).get("message") != message:
            patch_fields(ctx, obj, reason="ObjectLocked", message=message)
            events.emit(ctx.kube, obj, "Normal", "ObjectLocked", message)
        return False, message
    if result and result.get("reason") == "DeleteRefused":  # not this MOBackup's backup: keep it
        message = f"backup {backup_id} not deleted: {result.get('error')}"
        events.emit(ctx.kube, obj, "Warning", "DeleteRefused", message)
        return True, message
    message = f"deletion of backup {backup_id}: {(result or {}).get('error') or fallback}"
    patch_fields(ctx, obj, reason="DeleteFailed", message=message)
    events.emit(ctx.kube, obj, "Warning", "DeleteFailed", message)
    return False, message


# ----------------------------------------------------------------------------------------- MORestore

def reconcile_restore(ctx: Ctx, obj: dict[str, Any]) -> None:
    from . import scoped  # spec.scope: tables into the running MatrixOne (k8s/scoped.py)

    if scoped.is_scoped(obj.get("spec")):
        scoped.reconcile_scoped(ctx, obj)
        return
    _reconcile_run(ctx, obj, models.parse_restore, start_restore, follow_restore, lambda spec: spec.workload)


# Reasons when a run depends on another MOBackup: (not found, still running, not Completed).
BASE_REASONS = ("BaseNotFound", "WaitingForBase", "InvalidBase")
RESTORE_REASONS = ("BackupNotFound", "WaitingForBackup", "BackupNotCompleted")


def completed_backup(ctx: Ctx, ns: str, name: str, reasons: tuple[str, str, str], label: str) -> dict[str, Any]:
    """The MOBackup a run depends on: Wait while it runs, Fail when it is missing or did not complete."""
    missing, running, unfinished = reasons
    try:
        backup = ctx.kube.get_cr("MOBackup", ns, name)
    except NotFound:
        raise Fail(missing, f"{label} {name} not found") from None
    st = backup.setdefault("status", {}) or {}
    if st.get("phase") in RUN_ACTIVE:
        raise Wait(running, f"{label} {name} is {st.get('phase') or 'Pending'}")
    if not recorded_backup_id(backup):
        raise Fail(unfinished, f"{label} {name} is {st.get('phase')}, not Completed")
    return backup


def resolve_restore_backup(ctx: Ctx, ns: str, spec: models.RestoreSpec) -> tuple[str, str, str | None]:
    """(backup id, storage name, backupTS)."""
    if spec.backup_id:
        assert spec.storage
        return spec.backup_id, spec.storage, None
    assert spec.backup_name
    b = completed_backup(ctx, ns, spec.backup_name, RESTORE_REASONS, "MOBackup")
    bst = b["status"]
    storage_name = (b.get("spec") or {}).get("storageRef", {}).get("name") or bst.get("storage")
    return str(bst["backupID"]), str(storage_name), bst.get("backupTS")


def start_restore(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> None:
    ns, _, _ = meta(obj)
    target = spec.target_label
    if not (obj.get("status") or {}).get("phase"):
        transition(ctx, obj, "Pending", "Accepted", "validated; preparing the restore", target=target)
    if spec.point_in_time is not None:
        from . import pointintime  # the backup whose interval holds the time, before anything is touched
        backup_id, storage_name, backup_ts = pointintime.resolve(ctx, obj, spec)
    else:
        backup_id, storage_name, backup_ts = resolve_restore_backup(ctx, ns, spec)
    _, st = require_storage_ready(ctx, ns, storage_name)
    if spec.sql_check:
        try:
            storage.secret_value(ctx.kube, ns, spec.sql_check.password)
        except storage.MissingInput as e:
            raise Fail(e.reason, f"sqlCheck: {e}") from None
    if spec.volume is None:
        start_s3_restore(ctx, obj, spec, st, backup_id, storage_name, backup_ts)
        return
    refuse_storage_overlap(st, storage_name, claims={"spec.target.pvc.claimName": spec.volume.claim})
    storage.require_pvc(ctx.kube, ns, spec.volume.claim, "target")
    take_lease(ctx, obj, spec.volume.claim)
    if spec.workload:
        stop_workload(ctx, obj, spec.workload)
    body = jobs.restore_job(owner_of(obj), spec, st, backup_id, ctx.defaults)
    job_name = create_job(ctx, obj, body)
    ctx.metrics.inc("mobackup_runs_total", kind="MORestore", namespace=ns)
    transition(ctx, obj, "Running", "JobCreated", f"Job {job_name} is restoring {backup_id} into {target}",
               jobName=job_name, startTime=status.iso(), backupID=backup_id, storage=storage_name,
               location=st.location, target=target, **({"backupTS": backup_ts} if backup_ts else {}))


def follow_restore(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> None:
    ns, _, _ = meta(obj)
    st = obj.get("status") or {}
    if st.get("reason") == "CheckingSQL":
        sql_check_pass(ctx, obj, spec)
        return
    if st.get("reason") == "RestoringToTime":
        from . import pointintime
        pointintime.follow_job(ctx, obj, spec)
        return
    job_name = run_job_name(obj, "restore")
    try:
        job = ctx.kube.get_job(ns, job_name)
    except NotFound:
        finish(ctx, obj, run_key(obj, spec), spec.workload, False, "JobVanished",
               f"Job {job_name} disappeared before reporting a result")
        return
    state, result, fallback = job_outcome(ctx, ns, job)
    if state.state == "Running":
        take_lease(ctx, obj, run_key(obj, spec))
        if state.attempts and state.attempts != st.get("attempts"):
            patch_fields(ctx, obj, attempts=state.attempts)
        return
    if result and result.get("ok") and st.get("step") == "shards" and state.state == "Succeeded":
        s3_restore_finalize(ctx, obj, spec)
        return
    if result and result.get("ok"):
        fields = status.restore_result_fields(result.get("result") or {})
        ctx.metrics.inc("mobackup_transferred_bytes_total", float(fields.get("restoredBytes") or 0),
                        kind="MORestore", namespace=ns)
        msg = (f"restored backup {fields.get('backupID')}: {fields.get('size')} in {fields.get('fileCount')} "
               "files")
        if spec.point_in_time is not None:
            from . import pointintime
            scale_back(ctx, obj, spec.workload)
            pointintime.start_job(ctx, obj, spec, msg, attempts=state.attempts, **fields)
            return
        if spec.sql_check:
            scale_back(ctx, obj, spec.workload)
            transition(ctx, obj, "Running", "CheckingSQL", msg + "; checking SQL", attempts=state.attempts,
                       sqlCheckSince=status.iso(), **fields)
            return
        finish(ctx, obj, run_key(obj, spec), spec.workload, True, "RestoreCompleted", msg,
               attempts=state.attempts, **fields)
        return
    if result:
        reason, message = str(result.get("reason") or "RestoreFailed"), str(result.get("error") or "")
        if reason == "TargetNotEmptyError":
            reason = "TargetNotEmpty"
            message += " (set spec.overwrite: true to replace it)"
        elif reason == "ClusterRunningError":
            reason = "ClusterRunning"
    else:
        reason = "JobFailed"
        message = f"Job {job_name}: {state.reason}: {fallback}".strip()
    finish(ctx, obj, run_key(obj, spec), spec.workload, False, reason, message, attempts=state.attempts)


def sql_check_pass(ctx: Ctx, obj: dict[str, Any], spec: models.RestoreSpec) -> None:
    import pymysql

    from mobackup.engine import sqlconn

    ns, _, _ = meta(obj)
    chk = spec.sql_check
    assert chk
    started = status.parse_iso((obj.get("status") or {}).get("sqlCheckSince"))
    try:
        password = storage.secret_value(ctx.kube, ns, chk.password)
    except storage.MissingInput as e:
        finish(ctx, obj, run_key(obj, spec), spec.workload, False, "SQLCheckFailed", str(e))
        return
    try:
        conn = sqlconn.connect(chk.host, chk.port, chk.user, password,
                               connect_timeout=3, read_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute("select version()")
                version = str(cur.fetchone()[0])
                cur.execute("show databases")
                dbs = sorted(str(r[0]) for r in cur.fetchall())
        finally:
            conn.close()
    except pymysql.MySQLError as e:
        waited = (status.now() - started).total_seconds() if started else 0
        if waited < chk.timeout_seconds:
            return  # not up yet: the next pass tries again
        finish(ctx, obj, run_key(obj, spec), spec.workload, False, "SQLCheckFailed",
               f"{chk.host}:{chk.port} did not answer within {chk.timeout_seconds}s: {e.args[-1]}")
        return
    result = f"version {version}; databases: {', '.join(dbs)}"
    to_time = ((obj.get("status") or {}).get("pointInTime") or {}).get("time") if spec.point_in_time else None
    finish(ctx, obj, run_key(obj, spec), spec.workload, True, "RestoreCompleted",
           f"restored backup {obj['status'].get('backupID')}{f' to {to_time}' if to_time else ''}; SQL check ok",
           sqlCheck=result[:1000])
