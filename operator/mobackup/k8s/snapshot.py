"""Snapshot consistency: a CSI VolumeSnapshot of the data PVC, a PVC cloned from it, and the Job
copies the clone (MatrixOne keeps running; the image is crash-consistent, which is what its own
recovery is built for, best after a forced checkpoint through the SQL endpoint).

NOTE: exercised end to end only up to the refusal on clusters without the VolumeSnapshot API (the
test cluster has no CSI driver); the manifests are unit-tested.
"""

from __future__ import annotations

from typing import Any

from . import jobs
from .kube import Conflict, Kube, NotFound
from .storage import pvc_made_for

GROUP, VERSION, PLURAL = "snapshot.storage.k8s.io", "v1", "volumesnapshots"


class SnapshotWait(Exception):
    """Not ready yet (reason, message)."""


class SnapshotError(Exception):
    """The snapshot failed (message from the snapshot controller)."""


def names(owner: jobs.Owner) -> tuple[str, str]:
    return jobs.job_name(owner, "snap"), jobs.job_name(owner, "clone")


def snapshot_body(owner: jobs.Owner, claim: str, class_name: str | None) -> dict[str, Any]:
    snap, _ = names(owner)
    spec: dict[str, Any] = {"source": {"persistentVolumeClaimName": claim}}
    if class_name:
        spec["volumeSnapshotClassName"] = class_name
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeSnapshot",
            "metadata": {"name": snap, "namespace": owner.namespace,
                         "labels": {jobs.MANAGED_BY: jobs.MANAGER, jobs.L_UID: owner.uid},
                         "ownerReferences": [owner.reference()]},
            "spec": spec}


def clone_body(owner: jobs.Owner, source_pvc: dict[str, Any], restore_size: str | None) -> dict[str, Any]:
    snap, clone = names(owner)
    src = source_pvc.get("spec") or {}
    size = restore_size or ((src.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    spec: dict[str, Any] = {
        "accessModes": src.get("accessModes") or ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
        "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": snap},
    }
    if src.get("storageClassName"):
        spec["storageClassName"] = src["storageClassName"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": clone, "namespace": owner.namespace,
                         "labels": {jobs.MANAGED_BY: jobs.MANAGER, jobs.L_UID: owner.uid},
                         "ownerReferences": [owner.reference()]},
            "spec": spec}


def ensure_clone(kube: Kube, owner: jobs.Owner, claim: str, class_name: str | None) -> tuple[str, str]:
    """Create (idempotently) the snapshot and, once it is ready, its clone. Returns (snapshot, clone)."""
    snap, clone = names(owner)
    ns = owner.namespace
    try:
        vs = kube.get_obj(GROUP, VERSION, ns, PLURAL, snap)
    except NotFound:
        try:
            vs = kube.create_obj(GROUP, VERSION, ns, PLURAL, snapshot_body(owner, claim, class_name))
        except Conflict:
            vs = kube.get_obj(GROUP, VERSION, ns, PLURAL, snap)
    st = vs.get("status") or {}
    if (st.get("error") or {}).get("message"):
        raise SnapshotError(f"VolumeSnapshot {snap}: {st['error']['message']}")
    if not st.get("readyToUse"):
        raise SnapshotWait(f"VolumeSnapshot {snap} of PVC {claim} is not ready yet")
    made = pvc_made_for(kube, ns, clone, owner.uid)
    if made is False:
        raise SnapshotError(f"PVC {clone} exists and is not this backup's clone: refusing to copy it (or to delete "
                            "it afterwards)")
    if made is None:
        source = kube.get_pvc(ns, claim)
        try:
            kube.create_pvc(ns, clone_body(owner, source, st.get("restoreSize")))
        except Conflict:  # made meanwhile: whose it is, the next pass checks
            raise SnapshotWait(f"PVC {clone} appeared meanwhile; checking it next") from None
    return snap, clone


def cleanup(kube: Kube, owner: jobs.Owner) -> None:
    snap, clone = names(owner)
    if pvc_made_for(kube, owner.namespace, clone, owner.uid):  # never another's of that name
        kube.delete_pvc(owner.namespace, clone)
    kube.delete_obj(GROUP, VERSION, owner.namespace, PLURAL, snap)
