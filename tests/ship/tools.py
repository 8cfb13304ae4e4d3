"""Locating the real tools the ship tests drive (helm, kubeconform, kustomize, lua5.4).

A missing tool makes the test FAIL with a message naming the tool and how to get it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cluster import paths

REPO = paths.REPO_ROOT
CHART = REPO / "charts" / "mo-backup-operator"
DEPLOY = REPO / "deploy"
CRDS = REPO / "crds"
VENV_PY = REPO / ".venv" / "bin" / "python"


def built_tool(component: str) -> Path:
    """helm or kubeconform, built by tests/cluster/build into the cache."""
    try:
        paths.ensure_built(component)
    except paths.MissingComponent as e:
        pytest.fail(str(e), pytrace=False)
    return paths.binary(component)


def kustomize() -> Path:
    script = Path(__file__).with_name("build-kustomize")
    proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    binary = paths.binary("kustomize")
    if proc.returncode != 0 or not binary.exists():
        pytest.fail(f"kustomize not available ({script} exited {proc.returncode}):\n{proc.stderr[-3000:]}",
                    pytrace=False)
    return binary


def lua() -> Path:
    found = shutil.which("lua5.4")
    if found is None:
        pytest.fail("lua5.4 not found: install the Debian package lua5.4 (tests/setup.sh does)", pytrace=False)
    return Path(found)


def run(args: list[str | Path], *, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run a tool; on failure the assertion shows the command and its output."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def crd_files() -> list[Path]:
    files = sorted(CRDS.glob("*.yaml"))
    if not files:
        pytest.fail(f"no CRDs in {CRDS} yet (written by the operator work, issue 4)", pytrace=False)
    return files
