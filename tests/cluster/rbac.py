"""The operator's identity for the tests: a ServiceAccount with exactly the RBAC of our Helm chart.

The chart (charts/mo-backup-operator) is rendered with the real helm (`helm template`); its
ServiceAccounts, (Cluster)Roles and (Cluster)RoleBindings are applied as they are, and the
operator's kubeconfig carries a TokenRequest token of the ServiceAccount that the chart's
Deployment runs as. If the chart is absent, the first-version rule list of the team context is
used instead (and `source` says so).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster import paths
from cluster.kube_api import ApiError, KubeApi, object_path

CHART_DIR = paths.REPO_ROOT / "charts" / "mo-backup-operator"
RELEASE = "mo-backup-operator"
NAMESPACE = "mobackup-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
TOKEN_SECONDS = 48 * 3600


@dataclass
class OperatorIdentity:
    namespace: str
    service_account: str
    kubeconfig: Path
    source: str              # "chart" or "fallback (no chart)"
    objects: list[dict[str, Any]]


def render_chart(values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
                 release: str = RELEASE) -> list[dict[str, Any]]:
    paths.ensure_built("helm")
    # --skip-tests: the `helm test` hook's own ServiceAccount and Role are not the operator's.
    cmd = [str(paths.binary("helm")), "template", release, str(CHART_DIR), "--namespace", namespace, "--skip-tests"]
    for key, value in (values or {}).items():
        cmd += ["--set-json", f"{key}={json.dumps(value)}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"helm template {CHART_DIR} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _fallback_objects(namespace: str) -> list[dict[str, Any]]:
    """The chart's operator rules, repeated (used only while the chart does not exist)."""
    kinds = ["mobackupstorages", "mobackups", "morestores", "mobackupschedules", "morestoredrills"]
    rules = [
        {"apiGroups": ["mobackup.io"], "resources": ["mobackups"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["mobackup.io"], "resources": ["morestores"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["mobackup.io"], "resources": ["morestoredrills"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["mobackup.io"], "resources": ["mobackupstorages", "mobackupschedules"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["mobackup.io"], "resources": [k + "/status" for k in kinds], "verbs": ["get", "patch"]},
        {"apiGroups": ["mobackup.io"], "resources": ["mobackups/finalizers", "morestores/finalizers",
                                                     "morestoredrills/finalizers"],
         "verbs": ["update"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets/scale", "deployments/scale"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create", "delete"]},
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"],
         "verbs": ["get", "create", "delete"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": RELEASE, "namespace": namespace}}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": RELEASE},
            "rules": rules}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": RELEASE},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE},
               "subjects": [{"kind": "ServiceAccount", "name": RELEASE, "namespace": namespace}]}
    return [sa, role, binding]


def ensure_namespace(api: KubeApi, name: str) -> None:
    try:
        api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except ApiError as e:
        if e.status != 409:
            raise


def install_operator_identity(api: KubeApi, api_url: str, ca_file: Path, out_dir: Path,
                              values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
                              release: str = RELEASE) -> OperatorIdentity:
    """Apply the chart's RBAC objects and write a kubeconfig for the operator's ServiceAccount.
    Another release name gives a separate identity (e.g. with values {"watchNamespaces": [...]})."""
    from cluster.control_plane import write_kubeconfig

    if (CHART_DIR / "Chart.yaml").exists():
        docs = render_chart(values, namespace, release)
        deployments = [d for d in docs if d.get("kind") == "Deployment"]
        sa_name = (deployments[0]["spec"]["template"]["spec"].get("serviceAccountName") if deployments
                   else None) or RELEASE
        objects = [d for d in docs if d.get("kind") in RBAC_KINDS]
        source = "chart"
    else:
        objects, sa_name, source = _fallback_objects(namespace), RELEASE, "fallback (no chart)"
    ensure_namespace(api, namespace)
    for obj in objects:
        ns = obj.get("metadata", {}).get("namespace")
        if ns:
            ensure_namespace(api, ns)
        api.apply(object_path(obj, default_namespace=namespace), obj)
    token = api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa_name}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": TOKEN_SECONDS}})["status"]["token"]
    file_name = "operator.kubeconfig" if release == RELEASE else f"operator-{release}.kubeconfig"
    kubeconfig = write_kubeconfig(out_dir / file_name, api_url, ca_file, token,
                                  f"system:serviceaccount:{namespace}:{sa_name}", namespace)
    return OperatorIdentity(namespace, sa_name, kubeconfig, source, objects)
