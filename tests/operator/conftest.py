"""End-to-end fixtures: the real control plane (cluster helper's kube_cluster), real S3 server (SeaweedFS), the CRDs of
crds/, and the operator run as a subprocess (`mobackup operator`) with the chart's RBAC (the
restricted operator kubeconfig, never admin). Helpers live in mo_e2e.py."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mo_cluster_e2e import mo_cluster_crd, s3_mo  # noqa: F401  (fixtures of the MatrixOneCluster tests)
from mo_e2e import REPO, Env, OperatorProcess

from cluster.kube_api import KubeApi


@pytest.fixture(scope="session")
def crds(kube_cluster: Any) -> None:
    """Apply crds/*.yaml and wait until the API server serves them."""
    api: KubeApi = kube_cluster.api()
    for f in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        kube_cluster.apply(doc)
    deadline = time.monotonic() + 60
    for f in sorted((REPO / "crds").glob("*.yaml")):
        name = yaml.safe_load(f.read_text())["metadata"]["name"]
        while True:
            crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
            if conds.get("Established") == "True":
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established: {conds}"
            time.sleep(0.2)


def _job_rbac(cluster: Any, ns: str) -> None:
    """The chart's ServiceAccount for Job pods (no Role: Jobs have no API rights), rendered for this namespace."""
    from cluster.rbac import render_chart

    docs = render_chart({"jobServiceAccount.namespaces": [ns]})
    objs = [d for d in docs if d.get("kind") in ("ServiceAccount", "Role", "RoleBinding")
            and d["metadata"].get("namespace") == ns]
    assert objs, "the chart renders no Job ServiceAccount for the namespace"
    cluster.apply(objs)


@pytest.fixture
def env(kube_cluster: Any, kube_namespace: str, s3_server: Any, crds: None, tmp_path: Path
        ) -> Iterator[Env]:
    _job_rbac(kube_cluster, kube_namespace)
    op = OperatorProcess(kube_cluster, [kube_namespace], tmp_path / "operator.log")
    op.start()
    e = Env(kube_cluster, kube_namespace, op, s3_server, tmp_path)
    try:
        yield e
    finally:
        e.op.kill(signal.SIGTERM)  # e.op: a test may have replaced the operator (e.g. another identity)
        op.kill(signal.SIGTERM)
        # Show the operator's log of a failed test (pytest prints captured stdout on failure).
        sys.stdout.write(f"--- operator log ({e.op.log_path}) ---\n{e.op.log_tail(200)}\n")
