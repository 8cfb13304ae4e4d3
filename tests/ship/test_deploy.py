"""deploy/: the kustomize base (rendered by the real kustomize, the engine of `kubectl kustomize`),
the examples of every kind and the Argo CD manifests, validated by kubeconform against the test
API server's schemas, the project's CRDs and Argo CD's own Application CRD."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ship import tools
from ship.validate import kubeconform

EXAMPLES = tools.DEPLOY / "examples"
KINDS = {"MOBackupStorage", "MOBackup", "MORestore", "MOBackupSchedule", "MORestoreDrill"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_base_is_generated_from_the_chart() -> None:
    tools.built_tool("helm")
    proc = tools.run([tools.VENV_PY, tools.DEPLOY / "gen-base", "--check"], check=False)
    assert proc.returncode == 0, proc.stderr


def test_kustomize_renders_the_base(schema_dir: Path) -> None:
    out = tools.run([tools.kustomize(), "build", tools.DEPLOY / "base"]).stdout
    kinds = kubeconform(out, schema_dir)
    assert kinds["CustomResourceDefinition"] == 5
    assert kinds["Namespace"] == 1 and kinds["Deployment"] == 1
    assert kinds["ClusterRole"] == 2 and kinds["ServiceAccount"] == 2
    for doc in yaml.safe_load_all(out):
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "mobackup-system", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mo-backup-operator"
    crds = sorted(d["metadata"]["name"] for d in yaml.safe_load_all(out) if d["kind"] == "CustomResourceDefinition")
    assert crds == sorted(_docs(p)[0]["metadata"]["name"] for p in tools.crd_files())


def test_examples_cover_every_kind_and_are_valid(schema_dir: Path) -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    docs = [d for f in files for d in _docs(f)]
    assert {d["kind"] for d in docs} >= KINDS
    backups = [d for d in docs if d["kind"] == "MOBackup"]
    assert {b["spec"]["type"] for b in backups} == {"Full", "Incremental"}
    schedule = next(d for d in docs if d["kind"] == "MOBackupSchedule")
    assert schedule["spec"]["retention"] and schedule["spec"].get("incrementalSchedule")
    kubeconform("---\n".join(f.read_text() for f in files), schema_dir)
    # The examples refer to each other by name.
    storages = {d["metadata"]["name"] for d in docs if d["kind"] == "MOBackupStorage"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for d in docs:
        spec = d.get("spec", {})
        ref = spec.get("storageRef") or spec.get("template", {}).get("spec", {}).get("storageRef")
        if ref:
            assert ref["name"] in storages, d["metadata"]
    for s in (d for d in docs if d["kind"] == "MOBackupStorage"):
        assert s["spec"]["s3"]["credentialsSecretRef"]["name"] in secrets
        assert s["spec"]["encryption"]["keySecretRef"]["name"] in secrets
    names = {b["metadata"]["name"] for b in backups}
    restore = next(d for d in docs if d["kind"] == "MORestore")
    assert restore["spec"]["backupName"] in names
    incr = next(b for b in backups if b["spec"]["type"] == "Incremental")
    assert incr["spec"]["baseBackupName"] in names


def test_argocd_manifests_are_valid(schema_dir: Path) -> None:
    app_file = tools.DEPLOY / "argocd" / "application.yaml"
    cm_file = tools.DEPLOY / "argocd" / "argocd-cm-health.yaml"
    kinds = kubeconform(app_file.read_text() + "\n---\n" + cm_file.read_text(), schema_dir)
    assert kinds == {"Application": 1, "ConfigMap": 1}
    app = _docs(app_file)[0]
    source = app["spec"]["source"]
    assert (tools.REPO / source["path"] / "Chart.yaml").exists()
    # The Application's values pass the chart's values schema.
    values = yaml.safe_dump(source["helm"]["valuesObject"])
    tools.run([tools.built_tool("helm"), "template", "x", tools.CHART, "-f", "-"], input=values)


def _dry_run_apply(api: Any, doc: dict[str, Any], namespace: str | None = None) -> None:
    from cluster.kube_api import object_path

    api.request("PATCH", object_path(doc, default_namespace=namespace), doc,
                content_type="application/apply-patch+yaml",
                query={"fieldManager": "ship-dry-run", "force": "true", "dryRun": "All"})


def test_base_and_examples_pass_the_real_api_server(kube_cluster: Any) -> None:
    """Server-side dry-run apply of everything `kubectl apply -k deploy/base` and
    `kubectl apply -f deploy/examples/...` would send: the real API server's validation,
    defaulting, CEL rules of the CRDs and RBAC escalation checks, without changing anything."""
    api = kube_cluster.api()
    base = [d for d in yaml.safe_load_all(tools.run([tools.kustomize(), "build", tools.DEPLOY / "base"]).stdout) if d]
    for doc in base:
        _dry_run_apply(api, doc)
    # The custom resources of the examples need the CRDs served: install them (as helm would).
    for path in tools.crd_files():
        kube_cluster.apply(path)
    for crd in tools.crd_files():
        name = _docs(crd)[0]["metadata"]["name"]
        deadline = time.monotonic() + 60
        while not any(c["type"] == "Established" and c["status"] == "True" for c in (api.get(
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").get("status") or {})
                .get("conditions") or []):
            assert time.monotonic() < deadline, f"CRD {name} not established"
            time.sleep(0.2)
    ns = kube_cluster.create_namespace("ship-dry")
    try:
        for path in sorted(EXAMPLES.glob("*.yaml")):
            for doc in _docs(path):
                _dry_run_apply(api, doc, ns)
        # ...and the same call does reject a bad object (so the passes above mean something).
        from cluster.kube_api import ApiError

        bad = _docs(EXAMPLES / "backup-full.yaml")[0]
        bad["spec"]["type"] = "Differential"
        with pytest.raises(ApiError) as rejected:
            _dry_run_apply(api, bad, ns)
        assert rejected.value.status == 422 and "Differential" in str(rejected.value)
    finally:
        kube_cluster.delete_namespace(ns)
