"""Where an Online backup's Job must run and what MatrixOne calls the data directory.

MatrixOne's BACKUP writes the staging copy at a path of the MatrixOne container; the Job reads it
at its own mount of the same volume. The path is `spec.source.serverDataDir`, or found from the
MatrixOne pod that mounts the source PVC (its volumeMount of that claim, plus `pvc.path`). The Job
gets a pod affinity to that pod's labels: a ReadWriteOnce volume is usable only on its node.
"""

from __future__ import annotations

from typing import Any

from .jobs import OnlinePlacement
from .kube import Kube
from .models import BackupSpec

# Labels that change with every rollout: an affinity to them would miss the next pod.
VOLATILE_LABELS = ("controller-revision-hash", "pod-template-hash")


class PlacementError(Exception):
    """The reason (CamelCase) and a readable message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _selector(kube: Kube, ns: str, spec: BackupSpec) -> str:
    assert spec.workload is not None
    scale = kube.get_scale(spec.workload.kind, ns, spec.workload.name)
    selector = str((scale.get("status") or {}).get("selector") or "")
    if not selector:
        raise PlacementError("WorkloadNotFound", f"{spec.workload.kind} {spec.workload.name} reports no pod selector")
    return selector


def _mount_path(pod: dict[str, Any], claim: str) -> str | None:
    volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
    for container in pod["spec"].get("containers") or []:
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name")) or {}
            if (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                # A subPath mount shows only part of the volume: pvc.path cannot be mapped through it.
                return None if mount.get("subPath") else str(mount["mountPath"]).rstrip("/")
    return None


def placement(kube: Kube, ns: str, spec: BackupSpec) -> OnlinePlacement:
    path = spec.volume.path
    if spec.workload is None:
        assert spec.server_data_dir
        return OnlinePlacement(spec.server_data_dir, {})
    pods = [p for p in kube.list_pods(ns, _selector(kube, ns, spec))
            if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"]
    using = [p for p in pods if any((v.get("persistentVolumeClaim") or {}).get("claimName") == spec.volume.claim
                                    for v in p["spec"].get("volumes") or [])]
    if not using:
        raise PlacementError("MatrixOneNotRunning",
                             f"no running pod of {spec.workload.kind} {spec.workload.name} mounts PVC "
                             f"{spec.volume.claim}: an Online backup needs MatrixOne running on it")
    pod = using[0]
    labels = {k: v for k, v in (pod["metadata"].get("labels") or {}).items() if k not in VOLATILE_LABELS}
    server_dir = spec.server_data_dir
    if server_dir is None:
        mount = _mount_path(pod, spec.volume.claim)
        if mount is None:
            raise PlacementError("ServerDataDirUnknown",
                                 f"pod {pod['metadata']['name']} mounts PVC {spec.volume.claim} with a subPath or "
                                 "not at all in a container: set spec.source.serverDataDir")
        server_dir = mount if path in (".", "") else f"{mount}/{path}"
    return OnlinePlacement(server_dir, labels)
