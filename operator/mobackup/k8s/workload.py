"""Scale a MatrixOne workload down for a Stop-consistent copy, and always back up afterwards.

Only the `/scale` subresource is used: the operator may not patch StatefulSets or Deployments (that
would let it rewrite their pod templates). Its bookkeeping stays on its own object, in metadata: the
annotation A_REPLICAS records the replicas BEFORE the scale to 0 and the finalizer FINALIZER keeps
the run from vanishing while the workload is down (both set in one patch). So an operator restarted
at any point, or a run deleted while the operator was down, still knows what to restore: `sweep()`
scales back every workload whose run is finished or being deleted, then drops both.

What is scaled back is never taken from the status (`status.scaledWorkload` is a copy for people):
whoever may patch a run's status (once, a Job's ServiceAccount) could name any workload or replica
count there. The workload is the one the run's immutable spec names; the replicas are the operator's
annotation, which a status patch cannot write.
"""

from __future__ import annotations

import logging
from typing import Any

from . import jobs
from .kube import Conflict, Kube, NotFound
from .models import SpecError, Workload, parse_backup, parse_restore
from .status import iso

log = logging.getLogger("mobackup.workload")

FINALIZER = "mobackup.io/workload-scaled-down"
A_REPLICAS = "mobackup.io/scaled-replicas"
RUN_KINDS = ("MOBackup", "MORestore")


class WorkloadError(Exception):
    """The workload cannot be scaled (missing, or held by another run); str() is the reason."""


def read_scale(kube: Kube, ns: str, w: Workload) -> tuple[int, str]:
    """(spec.replicas, label selector of its pods) from the /scale subresource."""
    try:
        scale = kube.get_scale(w.kind, ns, w.name)
    except NotFound:
        raise WorkloadError(f"{w.kind} {ns}/{w.name} not found") from None
    return int((scale.get("spec") or {}).get("replicas") or 0), str((scale.get("status") or {}).get("selector") or "")


def record(obj: dict[str, Any]) -> dict[str, Any]:
    """status.scaledWorkload: what people read. Never acted on (see the module docstring)."""
    return (obj.get("status") or {}).get("scaledWorkload") or {}


def spec_workload(obj: dict[str, Any]) -> Workload | None:
    """The workload a run may stop: the one its spec names (immutable once created)."""
    spec = obj.get("spec") or {}
    try:
        if obj.get("kind") == "MOBackup":
            b = parse_backup(spec, obj["metadata"].get("namespace") or "")
            return b.workload if b.consistency == "Stop" else None
        if obj.get("kind") == "MORestore":
            return parse_restore(spec).workload
    except (SpecError, ValueError, TypeError):
        return None
    return None


def held_replicas(obj: dict[str, Any]) -> int | None:
    """The replicas to restore, as the operator recorded them in metadata; None when the run holds
    nothing down. A run scaled down by an operator before A_REPLICAS existed has only the finalizer
    and the status record: that record is used then, for the workload its spec names only."""
    meta = obj["metadata"]
    text = (meta.get("annotations") or {}).get(A_REPLICAS)
    if text is not None:
        try:
            return max(0, int(text))
        except ValueError:
            return None
    sw = record(obj)
    if FINALIZER in (meta.get("finalizers") or []) and sw.get("scaledDownAt") and not sw.get("scaledUpAt"):
        return max(0, int(sw.get("replicas") or 0))
    return None


def holds(obj: dict[str, Any], w: Workload | None = None) -> bool:
    """Did this run scale a workload (`w`, or any) down without scaling it back yet?"""
    if held_replicas(obj) is None:
        return False
    return w is None or spec_workload(obj) == w


def run_active(obj: dict[str, Any]) -> bool:
    if obj["metadata"].get("deletionTimestamp"):
        return False
    return (obj.get("status") or {}).get("phase") in (None, "", "Pending", "Running")


def other_holder(kube: Kube, ns: str, w: Workload, uid: str) -> dict[str, Any] | None:
    """Another run of the namespace that holds `w` down (active or not yet swept)."""
    for kind in RUN_KINDS:
        for other in kube.list_cr(kind, ns):
            if other["metadata"].get("uid") != uid and holds(other, w):
                other.setdefault("kind", kind)
                return other
    return None


def _set_hold(kube: Kube, obj: dict[str, Any], replicas: int | None) -> None:
    """Record the replicas (A_REPLICAS) and FINALIZER, or with None drop both, in one metadata
    patch conditional on resourceVersion (a concurrent change is not lost)."""
    kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    present = replicas is not None
    value = str(replicas) if present else None
    current = obj
    for _ in range(5):
        meta = current["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if (FINALIZER in finalizers) == present and (meta.get("annotations") or {}).get(A_REPLICAS) == value:
            return
        finalizers = [*[f for f in finalizers if f != FINALIZER], *([FINALIZER] if present else [])]
        patch = {"metadata": {"finalizers": finalizers, "annotations": {A_REPLICAS: value},
                              "resourceVersion": meta["resourceVersion"]}}
        try:
            updated = kube.patch_cr(kind, ns, name, patch)
        except NotFound:
            return
        except Conflict:
            current = kube.get_cr(kind, ns, name)
            continue
        obj["metadata"] = updated.get("metadata") or obj["metadata"]  # with the new resourceVersion
        return
    raise Conflict(f"{kind} {ns}/{name}: finalizers kept changing")


def hold(kube: Kube, obj: dict[str, Any], replicas: int) -> None:
    """Before a scale to 0: the replicas to restore, and the finalizer that keeps the run until then."""
    _set_hold(kube, obj, replicas)


def release(kube: Kube, obj: dict[str, Any]) -> None:
    _set_hold(kube, obj, None)


def delete_jobs(kube: Kube, obj: dict[str, Any]) -> None:
    """Delete every Job the run can have (their names are derived, never read from its status):
    before a workload comes back, nothing may still write its volume."""
    m = obj["metadata"]
    for name in jobs.run_job_names(jobs.Owner(obj["kind"], m["name"], m["namespace"], m["uid"])):
        kube.delete_job(m["namespace"], name)


def scale(kube: Kube, ns: str, w: Workload, replicas: int) -> None:
    kube.scale_workload(w.kind, ns, w.name, replicas)


def pods_gone(kube: Kube, ns: str, w: Workload) -> tuple[bool, int]:
    """(True when no pod of the workload is left, number of pods left)."""
    try:
        _, sel = read_scale(kube, ns, w)
    except WorkloadError:
        return True, 0
    pods = kube.list_pods(ns, sel) if sel else []
    return not pods, len(pods)


def scale_back(kube: Kube, obj: dict[str, Any]) -> int | None:
    """Restore the replicas this run recorded (None when it holds nothing) on the workload its spec
    names, then mark the status copy scaled up and drop the record. Returns the replica count."""
    replicas, w = held_replicas(obj), spec_workload(obj)
    meta = obj["metadata"]
    if replicas is None or w is None:
        if replicas is not None:
            log.warning("%s %s/%s holds a workload its spec no longer names: dropping the record",
                        obj["kind"], meta["namespace"], meta["name"])
        if FINALIZER in (meta.get("finalizers") or []) or A_REPLICAS in (meta.get("annotations") or {}):
            release(kube, obj)
        return None
    ns = meta["namespace"]
    try:
        scale(kube, ns, w, replicas)
    except NotFound:
        log.info("%s %s/%s is gone: nothing to scale back", w.kind, ns, w.name)
    done = {**record(obj), "kind": w.kind, "name": w.name, "replicas": replicas, "scaledUpAt": iso()}
    try:
        kube.patch_status(obj["kind"], ns, meta["name"], {"scaledWorkload": done})
    except NotFound:
        return replicas
    obj["status"] = {**(obj.get("status") or {}), "scaledWorkload": done}
    release(kube, obj)
    return replicas


def parse_holder(holder: str) -> tuple[str, str, str] | None:
    parts = holder.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def holder_active(kube: Kube, ns: str, holder: str) -> bool:
    """Is the run that holds a lease still Pending/Running and not being deleted?"""
    parsed = parse_holder(holder)
    if not parsed:
        return False
    kind, name, uid = parsed
    try:
        obj = kube.get_cr(kind, ns, name)
    except (NotFound, KeyError):
        return False
    if obj["metadata"].get("uid") != uid:
        return False
    if obj["metadata"].get("deletionTimestamp"):
        # Deletion still runs our cleanup; a Retain/finished run does not need the workload down.
        return (obj.get("status") or {}).get("phase") == "Running"
    return (obj.get("status") or {}).get("phase") in (None, "Pending", "Running")


def sweep(kube: Kube, ns: str | None) -> list[str]:
    """Scale back every workload (in `ns`, or all) held by a run that is finished or being deleted
    (its Jobs are deleted first, whatever its status says: nothing may still write to the volume),
    and drop stale records."""
    restored = []
    for kind in RUN_KINDS:
        try:
            items = kube.list_cr(kind, ns) if ns else kube.list_cr_all(kind)
        except Exception:  # a namespace-restricted operator may not list cluster-wide
            continue
        for obj in items:
            obj.setdefault("kind", kind)
            meta = obj["metadata"]
            if run_active(obj) or not (holds(obj) or FINALIZER in (meta.get("finalizers") or [])
                                       or A_REPLICAS in (meta.get("annotations") or {})):
                continue
            if holds(obj):
                delete_jobs(kube, obj)
            w = spec_workload(obj)
            n = scale_back(kube, obj)
            if n is not None and w is not None:
                restored.append(f"{w.kind} {meta['namespace']}/{w.name} -> {n} (held by {kind} {meta['name']})")
    return restored
