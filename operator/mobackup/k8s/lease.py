"""One backup or restore at a time per source: a coordination.k8s.io Lease per data PVC.

The holder identity is "<Kind>/<name>/<uid>" of the run. A Lease whose holder is no longer active
(gone, Completed, Failed) is taken over, so a crash never blocks a source for good.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .kube import Conflict, Kube, NotFound

LEASE_SECONDS = 300


def lease_name(claim: str) -> str:
    """`claim`: a PVC name, `matrixonecluster-<name>` or an s3:// URL (made a DNS name here)."""
    digest = hashlib.sha256(claim.encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9.-]+", "-", claim.lower().removeprefix("s3://"))[:36].strip("-.")
    return f"mobackup-source-{readable}-{digest}"


def _micro(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Outcome:
    acquired: bool
    holder: str | None  # the other holder when not acquired


def decide(current_holder: str | None, me: str, holder_active: Callable[[str], bool]) -> bool:
    """May `me` take (or keep) the lease?"""
    if not current_holder or current_holder == me:
        return True
    return not holder_active(current_holder)


def acquire(kube: Kube, ns: str, claim: str, me: str, holder_active: Callable[[str], bool],
            now: datetime | None = None) -> Outcome:
    name = lease_name(claim)
    now = now or datetime.now(UTC)
    spec = {"holderIdentity": me, "leaseDurationSeconds": LEASE_SECONDS, "acquireTime": _micro(now),
            "renewTime": _micro(now)}
    body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": {"name": name, "namespace": ns,
                                         "labels": {"app.kubernetes.io/managed-by": "mobackup-operator"},
                                         "annotations": {"mobackup.io/claim": claim}},
                            "spec": spec}
    for _ in range(3):
        try:
            current = kube.get_lease(ns, name)
        except NotFound:
            try:
                kube.create_lease(ns, body)
                return Outcome(True, None)
            except Conflict:
                continue
        holder = (current.get("spec") or {}).get("holderIdentity")
        if not decide(holder, me, holder_active):
            return Outcome(False, holder)
        if holder == me:
            spec = {**current["spec"], "renewTime": _micro(now)}
        current["spec"] = spec
        try:
            kube.replace_lease(ns, name, current)
            return Outcome(True, None)
        except Conflict:
            continue
    return Outcome(False, "a concurrent writer")


def release(kube: Kube, ns: str, claim: str, me: str) -> None:
    name = lease_name(claim)
    try:
        current = kube.get_lease(ns, name)
    except NotFound:
        return
    if (current.get("spec") or {}).get("holderIdentity") != me:
        return
    current["spec"]["holderIdentity"] = None
    with contextlib.suppress(Conflict, NotFound):
        kube.replace_lease(ns, name, current)
