"""Where the test-infrastructure binaries and state live, and how to make sure they are built."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

CLUSTER_DIR = Path(__file__).resolve().parent
TESTS_DIR = CLUSTER_DIR.parent
REPO_ROOT = TESTS_DIR.parent
BUILD_SCRIPT = CLUSTER_DIR / "build"
# Outside the clone: CI runs in a fresh clone on the same machine and must reuse the binaries.
CACHE_DIR = Path(os.environ.get("MOBACKUP_TEST_CACHE", Path.home() / ".cache" / "mobackup-test"))
BIN_DIR = CACHE_DIR / "bin"
VENV_BIN = REPO_ROOT / ".venv" / "bin"

COMPONENT_BINARIES = {
    "seaweedfs": ["weed"],
    "etcd": ["etcd"],
    "kube": ["kube-apiserver", "kube-controller-manager"],
    "kubectl": ["kubectl"],
    "helm": ["helm"],
    "kubeconform": ["kubeconform"],
    "node": ["kubelet", "kube-scheduler", "kube-proxy"],
    "coredns": ["coredns"],
    "pause": [],           # image archives under CACHE_DIR/images (cluster.real_node)
    "mo-image": [],
}


class MissingComponent(RuntimeError):
    """A real component could not be built or found; the message says which and why."""


def binary(name: str) -> Path:
    return BIN_DIR / name


def ensure_built(*components: str) -> None:
    """Run tests/cluster/build for the components (a no-op taking milliseconds when the stamps
    match the pins; rebuilds when a pin changed). Raises MissingComponent with the build output."""
    try:
        proc = subprocess.run(
            [str(BUILD_SCRIPT), *components], capture_output=True, text=True, check=False
        )
    except OSError as e:
        raise MissingComponent(f"cannot run {BUILD_SCRIPT}: {e}") from e
    missing = [b for c in components for b in COMPONENT_BINARIES[c] if not binary(b).exists()]
    if proc.returncode != 0 or missing:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise MissingComponent(
            f"real component(s) {', '.join(components)} not available in {BIN_DIR} "
            f"(missing: {', '.join(missing) or 'none'}; `{BUILD_SCRIPT} {' '.join(components)}` "
            f"exited {proc.returncode}):\n{tail}"
        )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (all test servers listen on loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
