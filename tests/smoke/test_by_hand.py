"""tests/cluster/README.md's by-hand flow, run as written: `eval "$(tests/cluster/up)"`, the
`helm install` of the chart into mobackup-system, `tests/cluster/down` (in a state dir of its own,
beside the session's cluster). `up` applies the chart's operator RBAC; the install must adopt it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cluster import paths

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def by_hand_lines() -> list[str]:
    text = (paths.REPO_ROOT / "tests" / "cluster" / "README.md").read_text()
    section = text[text.index("## By hand"):]
    block = section[section.index("```\n") + 4:]
    return [line.split("#")[0].strip() for line in block[:block.index("```")].splitlines() if line.strip()]


def test_up_helm_install_down_as_documented(tmp_path: Path) -> None:
    paths.ensure_built("etcd", "kube", "helm", "seaweedfs")
    up, install, down = by_hand_lines()
    assert up == 'eval "$(tests/cluster/up)"' and down == "tests/cluster/down"
    assert install.startswith("helm install mo-backup-operator charts/mo-backup-operator -n mobackup-system")
    env = {**os.environ, "MOBACKUP_TEST_STATE": str(tmp_path / "state"),
           "HELM_CACHE_HOME": str(tmp_path / "helm-cache"), "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    try:
        script = f"set -e\n{up}\n{install}\nhelm status mo-backup-operator -n mobackup-system"
        proc = subprocess.run(["bash", "-c", script], cwd=paths.REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
    finally:
        subprocess.run(["bash", "-c", down], cwd=paths.REPO_ROOT, env=env, capture_output=True, timeout=120,
                       check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "STATUS: deployed" in proc.stdout
