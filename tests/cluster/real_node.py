"""A real node for the test control plane: containerd + runc, kubelet, kube-scheduler, kube-proxy
and a CNI bridge, running the project's image as the users' clusters do (issue 21).

Everything it creates is its own and is undone by `stop()`:
- containerd with its own root, state and socket under the state dir (overlayfs, cgroupfs, runc;
  `restrict_oom_score_adj` because there is no CAP_SYS_RESOURCE here), the images imported from
  the archives `tests/cluster/build pause image` made (nothing is pulled: no registry);
- the kubelet (root dir, pod logs, certificates under the state dir; its pods' cgroups under
  CGROUP_ROOT, not the machine's kubepods), kube-scheduler, kube-proxy (iptables mode);
- the CNI bridge BRIDGE with POD_CIDR, and a Service range SERVICE_CIDR of its own;
- CoreDNS on the bridge's address (the kubelet's clusterDNS): Service names resolve in pods;
- sysctls the kubelet, kube-proxy and the bridge plugin set: saved before, restored after;
- iptables chains and rules (kube-proxy's KUBE-*, the kubelet's KUBE-FIREWALL and canaries),
  mounts under the state dir, cgroups, veth links, and the fixed paths these versions use
  (/run/containerd, /var/lib/cni, /var/lib/kubelet, /var/log/containers, /var/log/pods) when they
  did not exist before.
kube-proxy's chains and those fixed paths are machine-wide, so one real node runs at a time on a
machine (LOCK_FILE, flock); the local node's clusters of other sessions are not touched (they use
no iptables, no CNI, no cgroups).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import paths, procs
from cluster.control_plane import NodeAccess

NODE_NAME = "mobackup-real-node"
BRIDGE = "mobt0"
POD_CIDR = "10.244.77.0/24"
GATEWAY = "10.244.77.1"                 # the bridge's address: pods' route to the host, and their DNS
SERVICE_CIDR = "10.96.77.0/24"
CGROUP_ROOT = "mobackup-test"           # the kubelet's --cgroup-root: kubepods live below it
CGROUP_V1 = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
MO_IMAGE = "docker.io/matrixorigin/matrixone:v1.3.0-dev-local"   # tests/cluster/build mo-image
# containerd's content and snapshots are kept between runs (one real node per machine at a time):
# the images stay imported. Its state (shims, sockets, containers) is per run, under the state dir.
CONTAINERD_ROOT = paths.CACHE_DIR / "containerd-root"
LOCK_FILE = Path("/tmp/mobackup-real-node.lock")
# Set by the kubelet (protectKernelDefaults=false), kube-proxy, the bridge plugin (isGateway).
SYSCTLS = ["vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.conf.all.route_localnet",
           "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"]
# Paths the kubelet, containerd and the CNI plugins use whatever their configuration says.
FIXED_PATHS = [Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/lib/kubelet"),
               Path("/var/log/containers"), Path("/var/log/pods")]
CNI_BIN = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")             # containerd's CRI names its sandboxes' netns cni-*
HOST_COMMANDS = ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack", "ip", "nft"]


def chart_image() -> str:
    """The chart's default image (values image.repository, tag = the chart's appVersion): the name
    the project's image is built and imported under."""
    import yaml

    chart = paths.REPO_ROOT / "charts" / "mo-backup-operator"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return f"{values['image']['repository']}:{values['image']['tag'] or app}"


class NodeUnavailable(RuntimeError):
    """The machine cannot run a real node (a package, binary or kernel feature is missing)."""


def host_ip() -> str:
    """The address of the default route's interface: the node's InternalIP."""
    out = _run(["ip", "-4", "-o", "route", "get", "1.1.1.1"]).stdout
    m = re.search(r" src (\d+\.\d+\.\d+\.\d+)", out)
    if not m:
        raise NodeUnavailable(f"no IPv4 default route to take the node's address from: {out!r}")
    return m.group(1)


def node_access() -> NodeAccess:
    return NodeAccess(host_ip=host_ip(), service_cidr=SERVICE_CIDR, node_name=NODE_NAME)


def check_host() -> None:
    """Fail loudly (never skip) when something the node needs is missing."""
    missing = [c for c in HOST_COMMANDS if shutil.which(c) is None]
    missing += [str(CNI_BIN / p) for p in ("bridge", "host-local", "loopback") if not (CNI_BIN / p).exists()]
    missing += [str(paths.binary(b)) for b in ("kubelet", "kube-scheduler", "kube-proxy", "coredns")
                if not paths.binary(b).exists()]
    if missing:
        raise NodeUnavailable(f"missing for the real node: {', '.join(missing)} (run tests/setup.sh)")
    if os.geteuid() != 0:
        raise NodeUnavailable("the real node needs root (containerd, iptables, cgroups, mounts)")
    for ctl in ("memory", "cpu", "pids"):
        if not (CGROUP_V1 / ctl).is_dir():
            raise NodeUnavailable(f"cgroup v1 controller {ctl} not mounted at {CGROUP_V1 / ctl}")


# ---- what the node may change on the host: snapshots for `down` and the up/down test ------------
def read_sysctls(names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        f = Path("/proc/sys") / n.replace(".", "/")
        with contextlib.suppress(OSError):
            out[n] = f.read_text().strip()
    return out


def write_sysctls(values: dict[str, str]) -> None:
    for n, v in values.items():
        f = Path("/proc/sys") / n.replace(".", "/")
        with contextlib.suppress(OSError):
            if f.read_text().strip() != v:
                f.write_text(v)


def iptables_chains() -> set[str]:
    """'family table chain' for every chain of iptables and ip6tables (built-in and user)."""
    chains = set()
    for fam in ("iptables", "ip6tables"):
        out = _run([f"{fam}-save"], check=False).stdout
        table = ""
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chains.add(f"{fam} {table} {line[1:].split()[0]}")
    return chains


def iptables_rules() -> set[str]:
    rules = set()
    for fam in ("iptables", "ip6tables"):
        table = ""
        for line in _run([f"{fam}-save"], check=False).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A"):
                rules.add(f"{fam} {table} {line}")
    return rules


def nft_tables() -> set[str]:
    """'family name' of every nftables table (iptables-nft creates its tables on first use)."""
    out = _run(["nft", "list", "tables"], check=False).stdout
    return {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("table ")}


def links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in _run(["ip", "-o", "link"]).stdout.splitlines()}


def mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def host_snapshot() -> dict[str, Any]:
    """What a node could leave behind, for comparing before and after."""
    return {"sysctls": read_sysctls(SYSCTLS), "chains": iptables_chains(), "rules": iptables_rules(),
            "nft_tables": nft_tables(),
            "links": links(), "mounts": mounts(),
            "cgroups": {str(p) for p in CGROUP_V1.glob(f"*/{CGROUP_ROOT}")},
            "fixed_paths": {str(p) for p in FIXED_PATHS if p.exists()}}


# ---- the node -------------------------------------------------------------------------------------
@dataclass
class RealNode:
    state_dir: Path
    access: NodeAccess
    servers: dict[str, procs.Server] = field(default_factory=dict)
    _lock_fd: int | None = None

    @property
    def socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run(["ctr", "-a", str(self.socket), "-n", "k8s.io", *args], check=check, timeout=timeout)

    # ---- start -------------------------------------------------------------------------------
    def start(self, kubeconfig: Path, admin_kubeconfig: Path, ca_file: Path, images: list[Path]) -> None:
        """containerd (images imported), kubelet, kube-scheduler, kube-proxy; returns when the
        Node is Ready. On failure everything started so far is undone before raising."""
        check_host()
        if len(str(self.socket)) > 90:
            raise NodeUnavailable(f"state dir {self.state_dir} too long: containerd's sockets below it would pass "
                                  "the 108-byte limit of a unix socket path")
        self._lock()
        try:
            self._record_host()
            self._start_containerd(images)
            self._start_dns(admin_kubeconfig)
            self._start_kubelet(kubeconfig, ca_file)
            self._start_scheduler_and_proxy(admin_kubeconfig)
        except BaseException:
            self.stop()
            raise

    def _lock(self) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = Path(LOCK_FILE).read_text().split(" ")[0]
                if holder == str(os.getpid()) or time.monotonic() > deadline:
                    os.close(fd)
                    raise NodeUnavailable(f"another real node holds {LOCK_FILE} (pid {holder}): "
                                          "one per machine") from None
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.state_dir}\n".encode())
        self._lock_fd = fd

    def _record_host(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        saved = self.state_dir / "host-before.json"
        if not saved.exists():
            saved.write_text(json.dumps({
                "sysctls": read_sysctls(SYSCTLS),
                "fixed_paths": [str(p) for p in FIXED_PATHS if p.exists()],
                "netns": [str(p) for p in NETNS_DIR.glob("cni-*")] if NETNS_DIR.is_dir() else [],
                "chains": sorted(iptables_chains()),
                "rules": sorted(iptables_rules()),
                "nft_tables": sorted(nft_tables()),
            }, indent=1))

    def _start_containerd(self, images: list[Path]) -> None:
        d = self.state_dir / "containerd"
        cni = self.state_dir / "cni"
        for sub in (CONTAINERD_ROOT, d / "state", cni / "net.d", cni / "ipam"):
            sub.mkdir(parents=True, exist_ok=True)
        (d / "config.toml").write_text(f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{d / 'containerd.ttrpc.sock'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # no CAP_SYS_RESOURCE here: the pause container's oom_score_adj -998 would be refused
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni / 'net.d'}"
""")
        # No ipMasq: pods reach only this host (API server, S3, MatrixOne), so the bridge plugin
        # adds no iptables rules; kube-proxy masquerades Service traffic (--masquerade-all).
        (cni / "net.d" / "10-mobackup.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "mobackup-test", "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(cni / "ipam")}}]}))
        self._serve("containerd", ["containerd", "--config", str(d / "config.toml")])
        procs.wait_until(lambda: self.socket.exists() and self.ctr("version", check=False).returncode == 0,
                         30, "containerd's socket", self.servers["containerd"])
        # Importing (and unpacking) the project's image takes ~10 s: skipped when this very
        # archive (its name is its inputs' hash) was imported into the kept root before.
        marker = CONTAINERD_ROOT / "imported.json"
        want = {str(a): a.stat().st_mtime for a in images}
        have = self.ctr("images", "ls", "-q", check=False).stdout.split()
        try:
            done = json.loads(marker.read_text()) if marker.exists() else {}
        except ValueError:
            done = {}
        if done != want or not {PAUSE_IMAGE, chart_image(), MO_IMAGE} <= set(have):
            marker.unlink(missing_ok=True)
            # The previous build of the image goes first: containerd's GC then frees its layers.
            self.ctr("images", "rm", chart_image(), check=False)
            for archive in images:
                self.ctr("images", "import", str(archive), timeout=600)
            marker.write_text(json.dumps(want))

    def _start_dns(self, admin_kubeconfig: Path) -> None:
        """CoreDNS (kubernetes plugin: Services and pods of cluster.local) on the bridge's address,
        the kubelet's clusterDNS. The bridge is made here, before any pod: the CNI bridge plugin
        takes it as it is."""
        if BRIDGE not in links():
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE])
            _run(["ip", "link", "set", BRIDGE, "up"])
        ready = paths.free_port()
        corefile = self.state_dir / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {GATEWAY}
    errors
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {admin_kubeconfig} admin
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
""")
        self._serve("coredns", [str(paths.binary("coredns")), "-conf", str(corefile)])
        procs.wait_until(lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"), 60, "CoreDNS ready",
                         self.servers["coredns"])

    def _start_kubelet(self, kubeconfig: Path, ca_file: Path) -> None:
        k = self.state_dir / "kubelet"
        (k / "pki").mkdir(parents=True, exist_ok=True)
        for ctl in ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "systemd"):
            if (CGROUP_V1 / ctl).is_dir():
                (CGROUP_V1 / ctl / CGROUP_ROOT).mkdir(exist_ok=True)
        port, healthz = paths.free_port(), paths.free_port()
        (k / "config.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.access.host_ip, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(ca_file)}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "cgroupsPerQOS": True,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "failSwapOn": False, "failCgroupV1": False,
            "podLogsDir": str(self.state_dir / "pod-logs"),
            "clusterDomain": "cluster.local", "clusterDNS": [GATEWAY], "resolvConf": "/etc/resolv.conf",
            "oomScoreAdj": 0, "serializeImagePulls": False,
            # The images are imported, not pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "enableControllerAttachDetach": False,
            "maxPods": 60,
            "nodeStatusReportFrequency": "10s",
            "fileCheckFrequency": "5s", "syncFrequency": "10s",
        }))
        self._serve("kubelet", [
            str(paths.binary("kubelet")), f"--config={k / 'config.yaml'}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={k}", f"--cert-dir={k / 'pki'}", f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.access.host_ip}", "--v=2"])

    def _start_scheduler_and_proxy(self, admin_kubeconfig: Path) -> None:
        self._serve("kube-scheduler", [
            str(paths.binary("kube-scheduler")), f"--kubeconfig={admin_kubeconfig}", "--leader-elect=false",
            "--secure-port=0", "--v=1"])
        proxy_healthz = paths.free_port()
        self._serve("kube-proxy", [
            str(paths.binary("kube-proxy")), f"--kubeconfig={admin_kubeconfig}", f"--hostname-override={NODE_NAME}",
            "--proxy-mode=iptables", f"--cluster-cidr={POD_CIDR}", "--masquerade-all=true",
            f"--metrics-bind-address=127.0.0.1:{paths.free_port()}",
            f"--healthz-bind-address=127.0.0.1:{proxy_healthz}",
            # 0: leave the machine's conntrack sysctls alone
            "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0", "--conntrack-udp-timeout=0", "--conntrack-udp-timeout-stream=0",
            "--v=1"])
        # Its /healthz answers 200 before the first sync: wait for the `kubernetes` Service's rule
        # too (then Services are reachable from pods).
        procs.wait_until(lambda: _http_ok(f"http://127.0.0.1:{proxy_healthz}/healthz")
                         and "default/kubernetes" in _run(["iptables-save", "-t", "nat"], check=False).stdout,
                         60, "kube-proxy's rules for the kubernetes Service", self.servers["kube-proxy"])

    def _serve(self, name: str, argv: list[str]) -> None:
        self.servers[name] = procs.start_server(name, argv, self.state_dir / f"{name}.log",
                                                pid_file=self.state_dir / f"{name}.pid")

    # ---- stop: undo everything ----------------------------------------------------------------
    def drain(self, api: Any, timeout: float = 15) -> None:
        """Delete every pod and wait until the kubelet has stopped their sandboxes (CNI DEL frees
        the veths and addresses, volumes are unmounted): the orderly part of stop()."""
        with contextlib.suppress(Exception):
            # Cordoned first: a controller's replacement pod then stays Pending, never started.
            api.merge_patch(f"/api/v1/nodes/{NODE_NAME}", {"spec": {"unschedulable": True}})
            for pod in api.get("/api/v1/pods")["items"]:
                m = pod["metadata"]
                api.delete(f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}", {"gracePeriodSeconds": 0})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.socket.exists():
            if not self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                return
            time.sleep(0.5)

    def stop(self) -> list[str]:
        """Stop what start() started (by PID), then undo what they changed. Returns problems left."""
        for name in ("kube-proxy", "kube-scheduler", "kubelet", "coredns"):
            self._stop_server(name)
        self._stop_containers()
        self._stop_server("containerd")
        problems = self._clean_host()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return problems

    def _stop_server(self, name: str) -> None:
        server = self.servers.pop(name, None)
        pid_file = self.state_dir / f"{name}.pid"
        if server is None and pid_file.exists():     # `down` in another process than `up`
            pid = int(pid_file.read_text())
            if _cmdline(pid).split(" ")[0].endswith(name):
                server = procs.Server(name, pid, self.state_dir / f"{name}.log")
        if server is not None:
            server.stop(timeout=15)
        pid_file.unlink(missing_ok=True)

    def _stop_containers(self) -> None:
        """Every container still running in our containerd (after drain(), none), killed; the shims
        and their runc state go with them."""
        if not self.socket.exists():
            return
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        time.sleep(0.5)
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "delete", "-f", task, check=False)
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", c, check=False)

    def _clean_host(self) -> list[str]:
        before_file = self.state_dir / "host-before.json"
        before: dict[str, Any] = json.loads(before_file.read_text()) if before_file.exists() else {}
        # kube-proxy's own rules and chains
        if paths.binary("kube-proxy").exists():
            _run([str(paths.binary("kube-proxy")), "--cleanup"], check=False, timeout=60)
        # Whatever else appeared since up (the kubelet's KUBE-FIREWALL, canaries, hints): rules first.
        if before:
            old_rules = set(before["rules"])
            for rule in sorted(iptables_rules() - old_rules, reverse=True):
                fam, table, spec = rule.split(" ", 2)
                _run([fam, "-t", table, *_split_rule(spec.replace("-A ", "-D ", 1))], check=False)
            old_chains = set(before["chains"])
            for chain in sorted(iptables_chains() - old_chains):
                fam, table, name = chain.split(" ")
                _run([fam, "-t", table, "-F", name], check=False)
            for chain in sorted(iptables_chains() - old_chains):
                fam, table, name = chain.split(" ")
                _run([fam, "-t", table, "-X", name], check=False)
            # Tables iptables-nft (or kube-proxy's cleanup of its nftables mode) created, now empty.
            for table in sorted(nft_tables() - set(before.get("nft_tables", []))):
                _run(["nft", "delete", "table", *table.split(" ")], check=False)
        # Mounts under the state dir (kubelet volumes, containerd's rootfs and shm), deepest first.
        prefix = str(self.state_dir.resolve()) + "/"
        for m in sorted((m for m in mounts() if m.startswith(prefix)), key=len, reverse=True):
            _run(["umount", "-l", m], check=False)
        # Network namespaces of sandboxes the kubelet did not tear down (a killed kubelet): their
        # veths go with them.
        for ns in NETNS_DIR.glob("cni-*") if NETNS_DIR.is_dir() else []:
            if str(ns) not in before.get("netns", []):
                _run(["umount", "-l", str(ns)], check=False)
                ns.unlink(missing_ok=True)
        # Pod network: the bridge.
        if BRIDGE in links():
            _run(["ip", "link", "del", BRIDGE], check=False)
        # The pods' cgroups under our root (deepest first; empty once the processes are gone).
        for ctl in CGROUP_V1.iterdir():
            root = ctl / CGROUP_ROOT
            if root.is_dir():
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()
        # Fixed paths that were not there before.
        existed = set(before.get("fixed_paths", [str(p) for p in FIXED_PATHS]))
        for p in FIXED_PATHS:
            if str(p) not in existed and p.exists():
                shutil.rmtree(p, ignore_errors=True)
        if before.get("sysctls"):
            write_sysctls(before["sysctls"])
        problems = []
        if before:
            if read_sysctls(SYSCTLS) != before["sysctls"]:
                problems.append(f"sysctls not restored: {read_sysctls(SYSCTLS)} != {before['sysctls']}")
            extra = iptables_chains() - set(before["chains"])
            if extra:
                problems.append(f"iptables chains left: {sorted(extra)}")
            before_file.unlink()
        left = [m for m in mounts() if m.startswith(prefix)]
        if left:
            problems.append(f"mounts left: {left}")
        return problems


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def _split_rule(spec: str) -> list[str]:
    import shlex

    return shlex.split(spec)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc
