"""Scale a MatrixOne workload down for a Stop-consistent copy, and always back up afterwards.

The previous replica count and the holder are written as annotations on the workload BEFORE it is
scaled to 0, so an operator restarted at any point (or the deletion of the MOBackup) still knows
what to restore: `sweep()` scales back every workload whose holder is gone or finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .kube import Kube, NotFound
from .models import Workload
from .status import iso

A_REPLICAS = "mobackup.io/previous-replicas"
A_HOLDER = "mobackup.io/scaled-down-by"  # "<Kind>/<name>/<uid>"
A_AT = "mobackup.io/scaled-down-at"


class WorkloadError(Exception):
    """The workload cannot be scaled (missing, or held by another run); str() is the reason."""


@dataclass(frozen=True)
class Plan:
    action: str  # "annotate-and-scale" | "already-down" | "conflict"
    previous: int
    holder: str | None = None


def plan_scale_down(replicas: int, annotations: dict[str, str], holder: str) -> Plan:
    current_holder = annotations.get(A_HOLDER)
    if current_holder == holder:
        return Plan("already-down", int(annotations.get(A_REPLICAS, replicas)))
    if current_holder:
        return Plan("conflict", int(annotations.get(A_REPLICAS, replicas)), current_holder)
    return Plan("annotate-and-scale", replicas)


def plan_scale_up(annotations: dict[str, str], holder: str | None) -> int | None:
    """Replicas to restore, or None when this holder did not scale the workload down."""
    current = annotations.get(A_HOLDER)
    if not current or (holder is not None and current != holder):
        return None
    try:
        return int(annotations.get(A_REPLICAS, "1"))
    except ValueError:
        return 1


def scale_down(kube: Kube, ns: str, w: Workload, holder: str) -> int:
    """Annotate then scale to 0; returns the previous replica count. Idempotent per holder."""
    try:
        obj = kube.get_workload(w.kind, ns, w.name)
    except NotFound:
        raise WorkloadError(f"{w.kind} {ns}/{w.name} not found") from None
    annotations = obj["metadata"].get("annotations") or {}
    replicas = int((obj.get("spec") or {}).get("replicas", 1))
    plan = plan_scale_down(replicas, annotations, holder)
    if plan.action == "conflict":
        raise WorkloadError(f"{w.kind} {ns}/{w.name} is already scaled down by {plan.holder}")
    if plan.action == "annotate-and-scale":
        kube.patch_workload(w.kind, ns, w.name, {"metadata": {"annotations": {
            A_REPLICAS: str(replicas), A_HOLDER: holder, A_AT: iso()}}})
    if replicas != 0 or plan.action == "already-down":
        kube.scale_workload(w.kind, ns, w.name, 0)
    return plan.previous


def selector(obj: dict[str, Any]) -> str:
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pods_gone(kube: Kube, ns: str, w: Workload) -> tuple[bool, int]:
    """(True when no pod of the workload is left, number of pods left)."""
    try:
        obj = kube.get_workload(w.kind, ns, w.name)
    except NotFound:
        return True, 0
    sel = selector(obj)
    pods = kube.list_pods(ns, sel) if sel else []
    return not pods, len(pods)


def scale_up(kube: Kube, ns: str, w: Workload, holder: str | None) -> int | None:
    """Restore the remembered replica count when `holder` (or anyone, if None) scaled it down."""
    try:
        obj = kube.get_workload(w.kind, ns, w.name)
    except NotFound:
        return None
    replicas = plan_scale_up(obj["metadata"].get("annotations") or {}, holder)
    if replicas is None:
        return None
    kube.scale_workload(w.kind, ns, w.name, replicas)
    kube.patch_workload(w.kind, ns, w.name, {"metadata": {"annotations": {A_REPLICAS: None, A_HOLDER: None,
                                                                          A_AT: None}}})
    return replicas


def parse_holder(holder: str) -> tuple[str, str, str] | None:
    parts = holder.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def holder_active(kube: Kube, ns: str, holder: str) -> bool:
    """Is the run that holds a workload (or a lease) still Pending/Running and not being deleted?"""
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
    """Scale back every workload (in `ns`, or all) whose holder is no longer active."""
    restored = []
    for kind in ("StatefulSet", "Deployment"):
        try:
            items = kube.list_workloads(kind, ns)
        except Exception:  # a namespace-restricted operator may not list cluster-wide
            continue
        for obj in items:
            ann = obj["metadata"].get("annotations") or {}
            holder = ann.get(A_HOLDER)
            if not holder:
                continue
            wns = obj["metadata"]["namespace"]
            if holder_active(kube, wns, holder):
                continue
            n = scale_up(kube, wns, Workload(kind, obj["metadata"]["name"]), holder)
            if n is not None:
                restored.append(f"{kind} {wns}/{obj['metadata']['name']} -> {n}")
    return restored
