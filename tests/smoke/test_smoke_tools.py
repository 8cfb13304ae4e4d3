"""Smoke tests of the chart tools the suite builds: the real helm against the real API server,
and kubeconform validating offline against a local schema."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cluster import paths
from cluster.kube_api import ApiError
from cluster.kube_cluster import KubeCluster

pytestmark = pytest.mark.cluster


def tool(name: str) -> str:
    binary = paths.binary(name)
    if not binary.exists():
        pytest.fail(f"{binary} missing: run tests/cluster/build {name}", pytrace=False)
    return str(binary)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          check=False, timeout=120)


def test_helm_install_and_uninstall_a_trivial_chart(kube_cluster: KubeCluster, kube_namespace: str,
                                                    tmp_path: Path) -> None:
    chart = tmp_path / "trivial"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: trivial\nversion: 0.1.0\nkubeVersion: '>=1.33.0-0'\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        "  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n")
    helm = tool("helm")
    env = {"KUBECONFIG": str(kube_cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data")}
    out = run([helm, "install", "smoke", str(chart), "-n", kube_namespace, "--set", "greeting=hi",
               "--wait", "--timeout", "60s"], env)
    assert out.returncode == 0, out.stderr
    cm = kube_cluster.api().get(f"/api/v1/namespaces/{kube_namespace}/configmaps/smoke-cm")
    # The Capabilities come from the live API server: the version ldflags of the build matter here.
    assert cm["data"] == {"greeting": "hi", "kubeVersion": "v1.34.4"}
    listed = run([helm, "list", "-n", kube_namespace, "-o", "json"], env)
    assert [r["status"] for r in json.loads(listed.stdout)] == ["deployed"]
    out = run([helm, "uninstall", "smoke", "-n", kube_namespace, "--wait"], env)
    assert out.returncode == 0, out.stderr
    with pytest.raises(ApiError) as err:
        kube_cluster.api().get(f"/api/v1/namespaces/{kube_namespace}/configmaps/smoke-cm")
    assert err.value.status == 404


def test_helm_rejects_chart_needing_a_newer_kubernetes(kube_cluster: KubeCluster, kube_namespace: str,
                                                       tmp_path: Path) -> None:
    chart = tmp_path / "future"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: future\nversion: 0.1.0\nkubeVersion: '>=1.99.0'\n")
    (chart / "templates" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: f\n")
    out = run([tool("helm"), "install", "future", str(chart), "-n", kube_namespace],
              {"KUBECONFIG": str(kube_cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "c"),
               "HELM_CONFIG_HOME": str(tmp_path / "g"), "HELM_DATA_HOME": str(tmp_path / "d")})
    assert out.returncode != 0
    assert "v1.34.4" in out.stderr and "incompatible" in out.stderr


def test_kubeconform_validates_offline_against_local_schemas(tmp_path: Path) -> None:
    kubeconform = tool("kubeconform")
    version = run([kubeconform, "-v"])
    assert version.stdout.strip() == "v0.7.0"
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "widget-smoke-v1.json").write_text(json.dumps({
        "type": "object", "required": ["spec"],
        "properties": {"spec": {"type": "object", "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}}}},
    }))
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("apiVersion: smoke/v1\nkind: Widget\nmetadata: {name: a}\nspec: {size: 2}\n")
    bad.write_text("apiVersion: smoke/v1\nkind: Widget\nmetadata: {name: b}\nspec: {size: zero}\n")
    loc = str(schemas / "{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json")
    ok = run([kubeconform, "-strict", "-summary", "-schema-location", loc, str(good)])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = run([kubeconform, "-strict", "-schema-location", loc, str(bad)])
    assert ko.returncode == 1 and "size" in ko.stdout, ko.stdout + ko.stderr
