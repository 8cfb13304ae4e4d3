"""The real node leaves the machine as it found it (issue 21): two `tests/cluster/up --real-node` /
`down` cycles, each compared with the machine before it: sysctls the kubelet and kube-proxy set,
iptables chains and rules, nftables tables, network links, mounts, cgroups, the fixed paths the
kubelet and containerd use. Runs before test_real_node_e2e.py (file order): one real node at a time."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cluster import paths, real_node

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


IMAGE = real_node.chart_image()
PROBE = """
import os, ssl, urllib.request
d = "/var/run/secrets/kubernetes.io/serviceaccount/"
url = "https://kubernetes.default.svc:%s/version" % os.environ["KUBERNETES_SERVICE_PORT"]   # cluster DNS
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(d + "token").read()})
ctx = ssl.create_default_context(cafile=d + "ca.crt")
print(url, urllib.request.urlopen(req, context=ctx, timeout=10).status)
"""


def _cli(command: str, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(paths.CLUSTER_DIR / command), "--state-dir", str(state), *extra],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "MOBACKUP_TEST_STATE": str(state)})


def test_two_up_down_cycles_leave_the_machine_as_before() -> None:
    for cycle in (1, 2):
        before = real_node.host_snapshot()
        # short: containerd's and the kubelet's unix sockets live below it (108-byte limit)
        state = Path(tempfile.mkdtemp(prefix=f"mobt{cycle}-"))
        t0 = time.monotonic()
        up = _cli("up", state, "--real-node", "--no-s3")   # S3 changes nothing on the machine
        try:
            assert up.returncode == 0, f"up (cycle {cycle}) exited {up.returncode}:\n{up.stderr[-4000:]}"
            # It was really up: the node's changes are visible while it runs.
            during = real_node.host_snapshot()
            assert any(" KUBE-SERVICES" in c for c in during["chains"]), "kube-proxy made no chains"
            assert during["cgroups"], "the kubelet made no cgroups under its root"
            assert during["sysctls"]["vm.overcommit_memory"] == "1", during["sysctls"]
            # A pod on the bridge, in the image, reaching the API server through its Service by
            # name (CoreDNS, kube-proxy's DNAT): veth, netns, volume mounts and pod cgroups for down to undo.
            kubectl = [str(paths.binary("kubectl")), "--kubeconfig", str(state / "admin.kubeconfig")]
            pod = subprocess.run([*kubectl, "run", "probe", "--restart=Never", f"--image={IMAGE}",
                                  "--image-pull-policy=Never", "--command", "--", "python", "-c", PROBE],
                                 capture_output=True, text=True, timeout=60, check=False)
            assert pod.returncode == 0, pod.stderr
            done = subprocess.run([*kubectl, "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/probe",
                                   "--timeout=60s"], capture_output=True, text=True, timeout=90, check=False)
            log = subprocess.run([*kubectl, "logs", "probe"], capture_output=True, text=True, timeout=30).stdout
            assert done.returncode == 0 and "/version 200" in log, f"{done.stderr}\n{log}"
            assert real_node.BRIDGE in real_node.links()
        finally:
            down = _cli("down", state)
        took = time.monotonic() - t0
        assert down.returncode == 0, down.stderr
        assert "down: " in down.stderr and "left" not in down.stderr, down.stderr
        after = real_node.host_snapshot()
        for key in before:
            assert after[key] == before[key], (
                f"cycle {cycle}: {key} differs after down: gone {sorted(set(before[key]) - set(after[key]))[:20]}, "
                f"new {sorted(set(after[key]) - set(before[key]))[:20]}"
                if isinstance(before[key], set) else f"cycle {cycle}: {key}: {before[key]} -> {after[key]}")
        assert not state.exists()
        print(f"cycle {cycle}: up+down {took:.1f}s")
