"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

kube-apiserver runs with RBAC, service-account tokens (TokenRequest) and its default admission
plugins; kube-controller-manager runs the controllers listed in CONTROLLERS. There is no
scheduler and no kubelet: the local node (cluster.local_node) binds and runs pods, or, given a
NodeAccess, a real kubelet (cluster.real_node) joins it.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster import paths, procs
from cluster.kube_api import ApiError, KubeApi
from cluster.pki import make_pki

CONTROLLERS = [
    "job-controller", "garbage-collector-controller", "serviceaccount-controller",
    "namespace-controller", "replicaset-controller", "deployment-controller",
    "statefulset-controller", "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller", "persistentvolume-protection-controller",
    "root-ca-certificate-publisher-controller", "ttl-after-finished-controller",
    "cronjob-controller", "endpointslice-controller", "clusterrole-aggregation-controller",
]
SERVICE_CIDR = "10.0.0.0/24"
# A real kubelet registers its Node with the not-ready taint (TaintNodesByCondition admission):
# the node lifecycle controller lifts it; pod GC and the TTL controller are what a node expects.
NODE_CONTROLLERS = ["node-lifecycle-controller", "pod-garbage-collector-controller", "ttl-controller"]


@dataclass(frozen=True)
class NodeAccess:
    """What a real node (cluster.real_node) needs from the control plane: the API server listening
    on the host's address (pods reach it through the `kubernetes` Service, whose endpoint is the
    advertised address), its own Service range, a node identity (Node authorizer +
    NodeRestriction) and a client certificate for the kubelet's API (logs, exec)."""
    host_ip: str
    service_cidr: str
    node_name: str

    @property
    def service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP: the range's first address."""
        import ipaddress

        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))


@dataclass
class ControlPlane:
    state_dir: Path
    api_url: str
    ca_file: Path
    admin_token: str
    admin_kubeconfig: Path
    etcd_dir: Path
    servers: list[procs.Server] = field(default_factory=list)
    node_kubeconfig: Path | None = None     # with NodeAccess: the kubelet's identity

    def api(self) -> KubeApi:
        return KubeApi(self.api_url, self.admin_token, str(self.ca_file))

    @property
    def port(self) -> int:
        return int(self.api_url.rsplit(":", 1)[1])

    def stop(self) -> None:
        for s in reversed(self.servers):
            s.stop()
        shutil.rmtree(self.etcd_dir, ignore_errors=True)


def write_kubeconfig(path: Path, api_url: str, ca_file: Path, token: str, user: str,
                     namespace: str = "default") -> Path:
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "mobackup-test", "cluster": {"server": api_url,
                                                           "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "mobackup-test", "user": user,
                                                 "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


def start_control_plane(state_dir: Path, with_controller_manager: bool = True,
                        node: NodeAccess | None = None) -> ControlPlane:
    """Start etcd, kube-apiserver (and kube-controller-manager); wait until /readyz is ok."""
    paths.ensure_built("etcd", "kube")
    state_dir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(state_dir / "pki", (node.host_ip, node.service_ip) if node else ())
    service_cidr = node.service_cidr if node else SERVICE_CIDR
    # etcd fsyncs every write; on tmpfs that costs nothing (the cluster is throwaway anyway).
    shm = Path("/dev/shm")
    etcd_dir = Path(tempfile.mkdtemp(prefix="mobackup-etcd-", dir=shm if shm.is_dir() else state_dir))
    etcd_port, etcd_peer, api_port = paths.free_port(), paths.free_port(), paths.free_port()
    api_url = f"https://127.0.0.1:{api_port}"
    admin_token, cm_token = secrets.token_hex(24), secrets.token_hex(24)
    tokens = state_dir / "tokens.csv"
    node_token = secrets.token_hex(24)
    tokens.write_text(f'{admin_token},admin,uid-admin,"system:masters"\n'
                      f'{cm_token},system:kube-controller-manager,uid-kcm,"system:masters"\n'
                      + (f'{node_token},system:node:{node.node_name},uid-node,"system:nodes"\n' if node else ""))
    tokens.chmod(0o600)
    admin_kc = write_kubeconfig(state_dir / "admin.kubeconfig", api_url, pki["ca_crt"], admin_token, "admin")
    cm_kc = write_kubeconfig(state_dir / "controller-manager.kubeconfig", api_url, pki["ca_crt"], cm_token,
                             "kube-controller-manager")
    cp = ControlPlane(state_dir, api_url, pki["ca_crt"], admin_token, admin_kc, etcd_dir)
    if node:
        cp.node_kubeconfig = write_kubeconfig(state_dir / "node.kubeconfig", api_url, pki["ca_crt"], node_token,
                                              f"system:node:{node.node_name}")
    # A real node's pods reach the API server at the host's address; the local node's at loopback.
    listen = [
        "--bind-address=0.0.0.0", f"--advertise-address={node.host_ip}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={pki['kubelet_client_crt']}",
        f"--kubelet-client-key={pki['kubelet_client_key']}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
    ] if node else ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--authorization-mode=RBAC"]
    try:
        etcd = procs.start_server("etcd", [
            str(paths.binary("etcd")), "--name", "default", "--data-dir", str(etcd_dir),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
            "--log-level", "warn", "--quota-backend-bytes", str(2 * 1024**3),
        ], state_dir / "etcd.log", pid_file=state_dir / "etcd.pid")
        cp.servers.append(etcd)
        apiserver = procs.start_server("kube-apiserver", [
            str(paths.binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            *listen, f"--secure-port={api_port}",
            f"--tls-cert-file={pki['apiserver_crt']}", f"--tls-private-key-file={pki['apiserver_key']}",
            f"--client-ca-file={pki['ca_crt']}",
            f"--service-cluster-ip-range={service_cidr}",
            f"--service-account-issuer={api_url}",
            f"--service-account-key-file={pki['sa_pub']}",
            f"--service-account-signing-key-file={pki['sa_key']}",
            f"--token-auth-file={tokens}",
            "--anonymous-auth=false",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--watch-cache=true",
            "--v=1",
        ], state_dir / "kube-apiserver.log", pid_file=state_dir / "kube-apiserver.pid")
        cp.servers.append(apiserver)
        api = cp.api()
        procs.wait_until(lambda: api.raw_get("/readyz")[0] == 200, 90,
                         "kube-apiserver /readyz", apiserver)
        if with_controller_manager:
            cm = procs.start_server("kube-controller-manager", [
                str(paths.binary("kube-controller-manager")),
                f"--kubeconfig={cm_kc}", "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS + (NODE_CONTROLLERS if node else []))}",
                f"--root-ca-file={pki['ca_crt']}",
                f"--service-account-private-key-file={pki['sa_key']}",
                f"--service-cluster-ip-range={service_cidr}",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1", "--secure-port=0",
                "--pvclaimbinder-sync-period=5s",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ], state_dir / "kube-controller-manager.log", pid_file=state_dir / "kube-controller-manager.pid")
            cp.servers.append(cm)
            # The serviceaccount controller creating "default" proves the controller manager works.
            procs.wait_until(lambda: _exists(api, "/api/v1/namespaces/default/serviceaccounts/default"),
                             60, "kube-controller-manager (default ServiceAccount)", cm)
    except BaseException:
        cp.stop()
        raise
    return cp


def _exists(api: KubeApi, path: str) -> bool:
    try:
        api.get(path)
        return True
    except ApiError as e:
        if e.status == 404:
            return False
        raise


def wait_for(api: KubeApi, path: str, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    """Poll an object until predicate(obj) is true; returns it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = api.get(path)
            if predicate(last):
                return last
        except ApiError as e:
            if e.status != 404:
                raise
            last = None
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r:.2000}")
