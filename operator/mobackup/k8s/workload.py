"""Scale a MatrixOne workload down for a Stop-consistent copy, and always back up afterwards.

Only the `/scale` subresource is used: the operator may not patch StatefulSets or Deployments (that
would let it rewrite their pod templates). Its bookkeeping stays on its own object: the run's
`status.scaledWorkload` records the replicas BEFORE the scale to 0, and the finalizer FINALIZER
keeps the run from vanishing while the workload is down. So an operator restarted at any point, or
a run deleted while the operator was down, still knows what to restore: `sweep()` scales back every
workload whose run is finished or being deleted, then drops the finalizer.
"""

from __future__ import annotations

import logging
from typing import Any

from .kube import Conflict, Kube, NotFound
from .models import Workload
from .status import iso

log = logging.getLogger("mobackup.workload")

FINALIZER = "mobackup.io/workload-scaled-down"
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
    return (obj.get("status") or {}).get("scaledWorkload") or {}


def holds(obj: dict[str, Any], w: Workload | None = None) -> bool:
    """Did this run scale a workload (`w`, or any) down without scaling it back yet?"""
    sw = record(obj)
    if not sw.get("scaledDownAt") or sw.get("scaledUpAt"):
        return False
    return w is None or (sw.get("kind"), sw.get("name")) == (w.kind, w.name)


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


def _set_finalizer(kube: Kube, obj: dict[str, Any], present: bool) -> None:
    """Add or remove FINALIZER; conditional on resourceVersion so a concurrent change is not lost."""
    kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    current = obj
    for _ in range(5):
        finalizers = list(current["metadata"].get("finalizers") or [])
        if (FINALIZER in finalizers) == present:
            return
        finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
        try:
            kube.patch_cr(kind, ns, name, {"metadata": {"finalizers": finalizers,
                                                        "resourceVersion": current["metadata"]["resourceVersion"]}})
            return
        except NotFound:
            return
        except Conflict:
            current = kube.get_cr(kind, ns, name)
    raise Conflict(f"{kind} {ns}/{name}: finalizers kept changing")


def add_finalizer(kube: Kube, obj: dict[str, Any]) -> None:
    _set_finalizer(kube, obj, True)


def remove_finalizer(kube: Kube, obj: dict[str, Any]) -> None:
    _set_finalizer(kube, obj, False)


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
    """Restore the replicas this run recorded (None when it holds nothing), then mark its record
    scaled up and drop the finalizer. Returns the replica count restored."""
    sw = record(obj)
    if not holds(obj):
        if FINALIZER in (obj["metadata"].get("finalizers") or []):
            remove_finalizer(kube, obj)
        return None
    ns = obj["metadata"]["namespace"]
    w = Workload(str(sw.get("kind") or "StatefulSet"), str(sw["name"]))
    replicas = int(sw.get("replicas") or 0)
    try:
        scale(kube, ns, w, replicas)
    except NotFound:
        log.info("%s %s/%s is gone: nothing to scale back", w.kind, ns, w.name)
    done = {**sw, "scaledUpAt": iso()}
    try:
        kube.patch_status(obj["kind"], ns, obj["metadata"]["name"], {"scaledWorkload": done})
    except NotFound:
        return replicas
    obj["status"] = {**(obj.get("status") or {}), "scaledWorkload": done}
    remove_finalizer(kube, obj)
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
    (its Job is deleted first: nothing may still write to the volume), and drop stale finalizers."""
    restored = []
    for kind in RUN_KINDS:
        try:
            items = kube.list_cr(kind, ns) if ns else kube.list_cr_all(kind)
        except Exception:  # a namespace-restricted operator may not list cluster-wide
            continue
        for obj in items:
            obj.setdefault("kind", kind)
            if run_active(obj) or not (holds(obj) or FINALIZER in (obj["metadata"].get("finalizers") or [])):
                continue
            st = obj.get("status") or {}
            if st.get("phase") in ("Pending", "Running") and st.get("jobName"):
                kube.delete_job(obj["metadata"]["namespace"], st["jobName"])
            sw = record(obj)
            n = scale_back(kube, obj)
            if n is not None:
                restored.append(f"{sw.get('kind')} {obj['metadata']['namespace']}/{sw.get('name')} -> {n} "
                                f"(held by {kind} {obj['metadata']['name']})")
    return restored
