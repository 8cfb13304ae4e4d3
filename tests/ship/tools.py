"""Locating the real tools the ship tests drive (helm, kubeconform, kustomize, argocd-lua).

A missing tool makes the test FAIL with a message naming the tool and how to get it.
"""

from __future__ import annotations

import json
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


def argocd_lua() -> Path:
    """Argo CD's Lua health-check evaluation (gopher-lua), built by tests/ship/build-argocd-lua."""
    script = Path(__file__).with_name("build-argocd-lua")
    proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    binary = paths.binary("argocd-lua")
    if proc.returncode != 0 or not binary.exists():
        pytest.fail(f"argocd-lua not available ({script} exited {proc.returncode}):\n{proc.stderr[-3000:]}",
                    pytrace=False)
    return binary


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


# Third-party CRDs the chart and deploy/ can render objects of, from the Go module proxy (the
# upstream projects' own files): Prometheus Operator (ServiceMonitor, PrometheusRule) and
# Argo CD (Application).
THIRD_PARTY_CRDS = {
    "github.com/prometheus-operator/prometheus-operator@v0.85.0": [
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ],
    "github.com/argoproj/argo-cd/v3@v3.1.9": ["manifests/crds/application-crd.yaml"],
}


def third_party_crds() -> list[Path]:
    if shutil.which("go") is None:
        pytest.fail("`go` not found: needed to fetch the Prometheus Operator and Argo CD CRDs "
                    "from the Go module proxy", pytrace=False)
    files = []
    for module, rels in THIRD_PARTY_CRDS.items():
        proc = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True,
                              check=False, timeout=600, cwd="/")
        info = json.loads(proc.stdout or "{}")
        if proc.returncode != 0 or not info.get("Dir"):
            pytest.fail(f"cannot download {module} from the Go module proxy: "
                        f"{info.get('Error') or proc.stderr[-2000:]}", pytrace=False)
        files += [Path(info["Dir"]) / rel for rel in rels]
    return files
