"""The whole test cluster: control plane + local node + the S3 server (SeaweedFS) + the operator's identity.

Shared by the pytest fixtures (cluster.fixtures) and by tests/cluster/up and down.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster import paths, procs
from cluster.control_plane import ControlPlane, start_control_plane, wait_for
from cluster.kube_api import ApiError, KubeApi, object_path
from cluster.rbac import OperatorIdentity, ensure_namespace, install_operator_identity
from cluster.s3 import S3Server, start_s3

# Order matters for `down`: dependents first.
PID_FILES = ["local-node.pid", "kube-controller-manager.pid", "kube-apiserver.pid", "etcd.pid", "seaweedfs.pid"]
PID_BINARIES = {"local-node.pid": "python", "kube-controller-manager.pid": "kube-controller-manager",
                "kube-apiserver.pid": "kube-apiserver", "etcd.pid": "etcd", "seaweedfs.pid": "weed"}


@dataclass
class KubeCluster:
    state_dir: Path
    control_plane: ControlPlane
    operator: OperatorIdentity
    pv_root: Path
    node: procs.Server
    s3: S3Server | None = None
    _namespaces: list[str] = field(default_factory=list)

    # ---- what tests read -----------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return self.control_plane.api_url

    @property
    def kubeconfig(self) -> Path:
        """cluster-admin kubeconfig (token of a system:masters user)."""
        return self.control_plane.admin_kubeconfig

    @property
    def operator_kubeconfig(self) -> Path:
        """kubeconfig of the chart's operator ServiceAccount, with exactly the chart's RBAC."""
        return self.operator.kubeconfig

    @property
    def ca_file(self) -> Path:
        return self.control_plane.ca_file

    def api(self) -> KubeApi:
        """Admin REST client returning plain dicts (see cluster.kube_api)."""
        return self.control_plane.api()

    def kubernetes_client(self, operator: bool = False) -> Any:
        """A `kubernetes.client.ApiClient` (admin, or the operator's identity)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(str(self.operator_kubeconfig if operator else self.kubeconfig),
                                client_configuration=cfg)
        return client.ApiClient(cfg)

    def env(self) -> dict[str, str]:
        """Variables for a subprocess (e.g. the operator run by a test) to reach everything."""
        env = {"KUBECONFIG": str(self.kubeconfig), "KUBECONFIG_OPERATOR": str(self.operator_kubeconfig),
               "MOBACKUP_TEST_PV_ROOT": str(self.pv_root)}
        if self.s3 is not None:
            env.update(self.s3.env())
            env.update({"S3_ENDPOINT": self.s3.endpoint, "S3_BUCKET": self.s3.bucket})
        return env

    # ---- helpers -------------------------------------------------------------------------------
    def create_namespace(self, prefix: str = "t", name: str | None = None) -> str:
        """A fresh namespace; returns once its "default" ServiceAccount exists (pods need it)."""
        name = name or f"{prefix}-{secrets.token_hex(3)}"
        api = self.api()
        ensure_namespace(api, name)
        wait_for(api, f"/api/v1/namespaces/{name}/serviceaccounts/default", lambda o: True, 30,
                 f"ServiceAccount {name}/default")
        self._namespaces.append(name)
        return name

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 60) -> None:
        api = self.api()
        api.delete(f"/api/v1/namespaces/{name}")
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    api.get(f"/api/v1/namespaces/{name}")
                except ApiError as e:
                    if e.status == 404:
                        return
                    raise
                time.sleep(0.2)
            raise TimeoutError(f"namespace {name} still exists after {timeout}s")

    def make_pvc(self, namespace: str, name: str, size: str = "1Gi",
                 access_modes: tuple[str, ...] = ("ReadWriteOnce",)) -> Path:
        """A hostPath PV under pv_root pre-bound to a new PVC `namespace/name`; waits until the real
        PV binder reports both Bound. Returns the host directory the PVC's pods see."""
        host = self.pv_root / namespace / name
        host.mkdir(parents=True, exist_ok=True)
        api = self.api()
        pv_name = f"pv-{namespace}-{name}"[:253]
        api.create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
            "spec": {"capacity": {"storage": size}, "accessModes": list(access_modes),
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "hostPath": {"path": str(host), "type": "DirectoryOrCreate"},
                     "claimRef": {"namespace": namespace, "name": name}},
        })
        api.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": list(access_modes), "storageClassName": "", "volumeName": pv_name,
                     "resources": {"requests": {"storage": size}}},
        })
        wait_for(api, f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}",
                 lambda o: o.get("status", {}).get("phase") == "Bound", 60, f"PVC {namespace}/{name} Bound")
        return host

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str | Path,
              namespace: str | None = None) -> list[dict[str, Any]]:
        """Server-side apply of objects (dicts, a YAML string, or a YAML file) as cluster-admin."""
        if isinstance(manifest, Path):
            docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        elif isinstance(manifest, str):
            docs = [d for d in yaml.safe_load_all(manifest) if d]
        elif isinstance(manifest, dict):
            docs = [manifest]
        else:
            docs = manifest
        api = self.api()
        return [api.apply(object_path(d, default_namespace=namespace), d) for d in docs]

    def operator_identity(self, release: str, values: dict[str, Any] | None = None,
                          namespace: str = "mobackup-system") -> OperatorIdentity:
        """Another operator identity with the chart's RBAC for other values (say
        {"watchNamespaces": ["ns1"]}), under another release name so the two RBAC sets stay apart.
        Returns .kubeconfig, .service_account, .namespace, .objects (the applied RBAC)."""
        return install_operator_identity(self.api(), self.api_url, self.ca_file, self.state_dir,
                                         values, namespace, release)

    def pod_log(self, namespace: str, pod: str) -> str:
        """stdout+stderr of all containers of a pod the local node ran (there is no kubelet log API)."""
        out = []
        for d in sorted((self.state_dir / "node" / "pods").glob(f"{namespace}_{pod}_*")):
            for f in sorted(d.glob("*.log")):
                out.append(f"==> {f.name} <==\n{f.read_text(errors='replace')}")
        return "\n".join(out)

    def logs_hint(self) -> str:
        return f"cluster state and logs in {self.state_dir}"

    def stop(self) -> None:
        self.node.stop(timeout=15)
        self.control_plane.stop()
        if self.s3 is not None:
            self.s3.stop()


def start_cluster(state_dir: Path, with_s3: bool = True, s3: S3Server | None = None) -> KubeCluster:
    """Start everything (or raise paths.MissingComponent / RuntimeError with the failing log)."""
    paths.ensure_built("etcd", "kube", "helm", "seaweedfs")
    state_dir.mkdir(parents=True, exist_ok=True)
    pv_root = state_dir / "pv"
    pv_root.mkdir(exist_ok=True)
    if with_s3 and s3 is None:
        s3 = start_s3(state_dir)
    cp: ControlPlane | None = None
    try:
        cp = start_control_plane(state_dir)
        node_dir = state_dir / "node"
        node_dir.mkdir(exist_ok=True)
        env = {"PYTHONPATH": str(paths.TESTS_DIR), "PYTHONUNBUFFERED": "1"}
        node = procs.start_server("local-node", [
            sys.executable, "-m", "cluster.local_node", "--kubeconfig", str(cp.admin_kubeconfig),
            "--state-dir", str(node_dir), "--pv-root", str(pv_root), "--venv-bin", str(paths.VENV_BIN),
        ], state_dir / "local-node.log", env=env, cwd=paths.TESTS_DIR, pid_file=state_dir / "local-node.pid")
        api = cp.api()
        try:
            procs.wait_until(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in
                                         api.get("/api/v1/nodes/local-node")["status"]["conditions"]),
                             30, "local node registration", node)
            operator = install_operator_identity(api, cp.api_url, cp.ca_file, state_dir)
        except BaseException:
            node.stop()
            raise
    except BaseException:
        if cp is not None:
            cp.stop()
        if s3 is not None and with_s3:
            s3.stop()
        raise
    return KubeCluster(state_dir, cp, operator, pv_root, node, s3)


def stop_by_pid_files(state_dir: Path) -> list[str]:
    """`down`: stop what `up` started, by the PIDs it recorded (checking each is still ours)."""
    stopped = []
    for name in PID_FILES:
        pid_file = state_dir / name
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().strip())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if cmdline and PID_BINARIES[name] in cmdline:
            procs.stop_pid(pid, timeout=15)
            stopped.append(f"{name[:-4]} (pid {pid})")
        pid_file.unlink()
    etcd_dir_file = state_dir / "etcd-dir"
    if etcd_dir_file.exists():
        shutil.rmtree(etcd_dir_file.read_text().strip(), ignore_errors=True)
    return stopped


def write_env_file(cluster: KubeCluster) -> Path:
    path = cluster.state_dir / "env.sh"
    lines = [f"export {k}={_shq(v)}" for k, v in sorted(cluster_exports(cluster).items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    (cluster.state_dir / "etcd-dir").write_text(str(cluster.control_plane.etcd_dir))
    return path


def cluster_exports(cluster: KubeCluster) -> dict[str, str]:
    e = cluster.env()
    e["KUBE_API_URL"] = cluster.api_url
    e["PATH"] = f"{paths.BIN_DIR}:{os.environ.get('PATH', '')}"
    return e


def _shq(v: str) -> str:
    return "'" + v.replace("'", "'\"'\"'") + "'"
