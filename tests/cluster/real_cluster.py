"""The test cluster with a real node (cluster.real_node): control plane, containerd + kubelet +
kube-scheduler + kube-proxy + CoreDNS, an S3 server (SeaweedFS) on the host's address, the images
imported; `RealCluster` has the interface of `KubeCluster` (cluster.kube_cluster)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cluster import paths, procs
from cluster.control_plane import start_control_plane, wait_for
from cluster.kube_api import ApiError
from cluster.kube_cluster import KubeCluster
from cluster.real_node import NODE_NAME, RealNode, check_host, node_access
from cluster.s3 import S3Server, start_s3


def image_archives() -> list[Path]:
    """The pause image, the project's image (built from the Dockerfile for this tree) and the
    MatrixOne image (the suite's mo-service), as archives for `ctr images import`; builds what is
    missing (MissingComponent on failure)."""
    paths.ensure_built("node", "pause", "mo-image")
    proc = subprocess.run([str(paths.BUILD_SCRIPT), "image"], capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise paths.MissingComponent(f"`{paths.BUILD_SCRIPT} image` exited {proc.returncode}:\n{tail}")
    return [paths.CACHE_DIR / "images" / "pause.tar", Path(lines[-1]), paths.CACHE_DIR / "images" / "matrixone.tar"]


@dataclass
class RealCluster(KubeCluster):
    """A KubeCluster whose pods a real kubelet runs in containers (see the module docstring).
    `operator` is None: the chart itself is installed with helm. pv_root holds local PVs."""
    real_node: RealNode | None = None

    def make_pvc(self, namespace: str, name: str, size: str = "1Gi",
                 access_modes: tuple[str, ...] = ("ReadWriteOnce",)) -> Path:
        """A local PV (node affinity to the node) pre-bound to a new PVC; returns its host directory."""
        host = self.pv_root / namespace / name
        host.mkdir(parents=True, exist_ok=True)
        api = self.api()
        pv_name = f"pv-{namespace}-{name}"[:253]
        api.create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
            "spec": {"capacity": {"storage": size}, "accessModes": list(access_modes),
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": LOCAL_STORAGE_CLASS,
                     "local": {"path": str(host)},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}},
                     "claimRef": {"namespace": namespace, "name": name}},
        })
        api.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": list(access_modes), "storageClassName": LOCAL_STORAGE_CLASS,
                     "volumeName": pv_name, "resources": {"requests": {"storage": size}}},
        })
        wait_for(api, f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                 lambda o: o.get("status", {}).get("phase") == "Bound", 60, f"PVC {namespace}/{name} Bound")
        return host

    def make_local_pv(self, name: str, size: str = "5Gi") -> Path:
        """An unclaimed local PV of the `local-storage` class, for a PVC someone else creates (say a
        drill's scratch PVC): the scheduler binds it with that PVC's first pod. Returns its directory."""
        host = self.pv_root / "_unclaimed" / name
        host.mkdir(parents=True, exist_ok=True)
        self.api().create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": LOCAL_STORAGE_CLASS,
                     "local": {"path": str(host)},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}})
        return host

    def pod_log(self, namespace: str, pod: str) -> str:
        """The containers' logs through the API server and the kubelet (`kubectl logs`)."""
        api = self.api()
        out = []
        try:
            spec = api.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")["spec"]
        except ApiError as e:
            return f"(pod {namespace}/{pod}: {e})"
        for c in spec.get("initContainers", []) + spec["containers"]:
            status, text = api.raw_get(f"/api/v1/namespaces/{namespace}/pods/{pod}/log?container={c['name']}")
            out.append(f"==> {c['name']} <==\n{text if status == 200 else f'(HTTP {status}) {text[:500]}'}")
        return "\n".join(out)

    def logs_hint(self) -> str:
        return f"cluster state and logs in {self.state_dir} (node: {self.state_dir / 'node'})"

    def env(self) -> dict[str, str]:
        env = {"KUBECONFIG": str(self.kubeconfig), "MOBACKUP_TEST_PV_ROOT": str(self.pv_root)}
        if self.s3 is not None:
            env.update(self.s3.env())
            env.update({"S3_ENDPOINT": self.s3.endpoint, "S3_BUCKET": self.s3.bucket})
        return env

    def stop(self) -> list[str]:  # type: ignore[override]
        problems: list[str] = []
        steps = []
        t0 = time.monotonic()
        if self.real_node is not None:
            self.real_node.drain(self.api())
            steps.append(f"drain {time.monotonic() - t0:.1f}s")
            problems = self.real_node.stop()
            steps.append(f"node {time.monotonic() - t0:.1f}s")
        self.control_plane.stop()
        steps.append(f"control plane {time.monotonic() - t0:.1f}s")
        if self.s3 is not None:   # throwaway data: no graceful stop (SeaweedFS takes 10 s for it)
            self.s3.kill()
            steps.append(f"s3 {time.monotonic() - t0:.1f}s")
        with contextlib.suppress(OSError):
            (self.state_dir / "stop-times.log").write_text(", ".join(steps) + "\n")
        return problems


LOCAL_STORAGE_CLASS = "local-storage"


def start_real_cluster(state_dir: Path, s3: S3Server | None = None, with_s3: bool = True) -> RealCluster:
    """Control plane + real node + an S3 server (SeaweedFS) on the host's address, reachable
    from pods; returns when the Node is Ready and pods can be created."""
    paths.ensure_built("etcd", "kube", "helm", "node", "coredns", "pause")
    check_host()
    images = image_archives()
    access = node_access()
    state_dir.mkdir(parents=True, exist_ok=True)
    pv_root = state_dir / "pv"
    pv_root.mkdir(exist_ok=True)
    if s3 is None and with_s3:   # SeaweedFS on the host's address: the pods' S3
        s3 = start_s3(state_dir, ip=access.host_ip)
    try:
        cp = start_control_plane(state_dir, node=access)
    except BaseException:
        if s3 is not None:
            s3.stop()
        raise
    node = RealNode(state_dir / "node", access)
    try:
        assert cp.node_kubeconfig is not None
        node.start(cp.node_kubeconfig, cp.admin_kubeconfig, cp.ca_file, images)
        api = cp.api()
        procs.wait_until(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in
                                     api.get(f"/api/v1/nodes/{NODE_NAME}")["status"]["conditions"]),
                         90, "the real node Ready", node.servers["kubelet"])
        procs.wait_until(lambda: not api.get(f"/api/v1/nodes/{NODE_NAME}")["spec"].get("taints"),
                         60, "the node's not-ready taint lifted", node.servers["kubelet"])
        api.apply(f"/apis/storage.k8s.io/v1/storageclasses/{LOCAL_STORAGE_CLASS}", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": LOCAL_STORAGE_CLASS},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"})
    except BaseException:
        node.stop()
        cp.stop()
        if s3 is not None:
            s3.stop()
        raise
    return RealCluster(state_dir, cp, None, pv_root, node.servers["kubelet"], s3,  # type: ignore[arg-type]
                       real_node=node)
