"""The Helm chart, with the real helm and kubeconform: lint, render, validate against the real
API server's schemas and the CRDs, least-privilege RBAC, values schema, CRDs in step."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ship import tools
from ship.validate import kubeconform

CHART_CRDS = tools.CHART / "crds"
BASE_CRDS = tools.DEPLOY / "base" / "crds"

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "monitoring": ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
                   "--set", "metrics.prometheusRule.staleBackupHours=48",
                   "--set", "metrics.grafanaDashboard.enabled=true"],
    "peering-cluster": ["--set", "replicaCount=2"],
    "peering-namespaced": ["--set", "replicaCount=3", "--set", "watchNamespaces={team-a}"],
    "overrides": ["--set", "image.digest=sha256:" + "a" * 64, "--set", "agentImage.repository=registry.local/agent",
                  "--set", "nodeSelector.disk=ssd", "--set", "tolerations[0].key=dedicated",
                  "--set", "tolerations[0].operator=Exists", "--set", "logLevel=DEBUG",
                  "--set", "jobServiceAccount.namespaces={db1,db2}", "--set", "metrics.enabled=false",
                  "--set", "jobDefaults.nodeSelector.pool=backup"],
    "conventions": ["--set", "replicaCount=2", "--set", "networkPolicy.enabled=true",
                    "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
                    "--set", "imagePullSecrets[0].name=regcred", "--set", "jobDefaults.env[0].name=HTTPS_PROXY",
                    "--set", "jobDefaults.env[0].value=http://proxy:3128",
                    "--set", "jobOverrides.allowedImages={registry.local/mobackup:*}"],
}


def helm(*args: str, check: bool = True) -> str:
    proc = tools.run([tools.built_tool("helm"), *args], check=check, timeout=120)
    return proc.stdout if check else proc.stdout + proc.stderr


def render(*values: str, namespace: str = "mobackup-system", crds: bool = False) -> list[dict[str, Any]]:
    out = helm("template", "mo-backup-operator", str(tools.CHART), "--namespace", namespace,
               *(["--include-crds"] if crds else []), *values)
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    out = helm("lint", "--strict", str(tools.CHART), *VALUE_SETS[name])
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_template_is_valid_under_kubeconform(name: str, schema_dir: Path) -> None:
    manifests = helm("template", "mo-backup-operator", str(tools.CHART), "--namespace", "mobackup-system",
                     "--include-crds", *VALUE_SETS[name])
    kinds = kubeconform(manifests, schema_dir)
    assert kinds["CustomResourceDefinition"] >= 4
    assert kinds["Deployment"] == 1


def test_chart_crds_are_exact_copies_of_crds_dir() -> None:
    """charts/sync-crds keeps these in step; this fails when someone forgot to run it."""
    for copy_dir in (CHART_CRDS, BASE_CRDS):
        src = {p.name for p in tools.crd_files()}
        dst = {p.name for p in copy_dir.glob("*.yaml")}
        assert dst == src, f"{copy_dir}: {sorted(dst ^ src)} differ; run charts/sync-crds"
        _, mismatch, errors = filecmp.cmpfiles(tools.CRDS, copy_dir, sorted(src), shallow=False)
        assert not mismatch and not errors, f"{copy_dir}: {mismatch + errors} differ from crds/; run charts/sync-crds"
    # and helm actually ships them
    crds = by_kind(render(crds=True), "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in tools.crd_files())


# The operator's rules: only the verbs its code calls (docs/operations.md repeats them). No verb on
# StatefulSets/Deployments themselves (only /scale), no `update` of status or scale, no PVC `list`,
# no Lease `list`/`watch`, create/delete only on the kinds it creates and deletes.
OPERATOR_RULES = {
    ("mobackup.io", "mobackups"): {"get", "list", "watch", "create", "patch", "delete"},
    ("mobackup.io", "morestores"): {"get", "list", "watch", "patch"},
    ("mobackup.io", "morestoredrills"): {"get", "list", "watch", "create", "patch", "delete"},
    ("mobackup.io", "mobackupstorages"): {"get", "list", "watch"},
    ("mobackup.io", "mobackupschedules"): {"get", "list", "watch"},
    **{("mobackup.io", f"{r}/status"): {"get", "patch"}
       for r in ("mobackupstorages", "mobackups", "morestores", "mobackupschedules", "morestoredrills")},
    **{("mobackup.io", f"{r}/finalizers"): {"update"} for r in ("mobackups", "morestores", "morestoredrills")},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"list"},
    ("", "events"): {"create"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("apps", "statefulsets/scale"): {"get", "patch"},
    ("apps", "deployments/scale"): {"get", "patch"},
    ("", "secrets"): {"get"},
    ("", "configmaps"): {"get"},
    ("", "persistentvolumeclaims"): {"get", "create", "delete"},
    ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "create", "delete"},
    ("core.matrixorigin.io", "matrixoneclusters"): {"get"},
}
CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for verb_list in (rule.get("verbs", []),):
            assert "*" not in verb_list, f"wildcard verb in {rule}"
        for group in rule.get("apiGroups", []):
            for res in rule.get("resources", []):
                assert "*" not in (group, res), f"wildcard in {rule}"
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_cluster_wide_rbac_is_exactly_the_operator_rule_list() -> None:
    docs = render("--skip-tests")  # the `helm test` hook's Role: test_helm_test_hook_checks_crds_and_readiness
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    assert flatten(roles["mo-backup-operator"]["rules"]) == OPERATOR_RULES
    assert flatten(roles["mo-backup-operator-cluster"]["rules"]) == CLUSTER_RULES
    assert not by_kind(docs, "Role") or all(r["metadata"]["name"].endswith("-job") for r in by_kind(docs, "Role"))
    sa = by_kind(docs, "ServiceAccount")
    binding = {b["metadata"]["name"]: b for b in by_kind(docs, "ClusterRoleBinding")}["mo-backup-operator"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mo-backup-operator",
                                    "namespace": "mobackup-system"}]
    assert {s["metadata"]["name"] for s in sa} == {"mo-backup-operator", "mo-backup-operator-job"}


def test_namespaced_rbac_grants_nothing_cluster_wide_but_discovery() -> None:
    docs = render("--set", "watchNamespaces={team-a,team-b}", "--skip-tests")
    cluster_roles = by_kind(docs, "ClusterRole")
    assert [r["metadata"]["name"] for r in cluster_roles] == ["mo-backup-operator-cluster"]
    assert flatten(cluster_roles[0]["rules"]) == CLUSTER_RULES
    operator_roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "mo-backup-operator"]
    assert sorted(r["metadata"]["namespace"] for r in operator_roles) == ["team-a", "team-b"]
    for role in operator_roles:
        assert flatten(role["rules"]) == OPERATOR_RULES
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["operator", "--standalone", "--namespace=team-a", "--namespace=team-b"]
    # Job pods' ServiceAccount in each watched namespace, with no rights at all (issue 18: a Job that
    # could patch statuses could steer the operator; the pods mount no token either).
    job_sas = [s for s in by_kind(docs, "ServiceAccount") if s["metadata"]["name"] == "mo-backup-operator-job"]
    assert sorted(s["metadata"]["namespace"] for s in job_sas) == ["team-a", "team-b"]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRoleBinding")
                and "mo-backup-operator-job" in json.dumps(d)]


def test_deployment_runs_the_operator_hardened() -> None:
    docs = render()
    dep = by_kind(docs, "Deployment")[0]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["mobackup"] and c["args"] == ["operator", "--standalone"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["port"] == "health" and ports["health"] == 8080
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MOBACKUP_METRICS_PORT"] == str(ports["metrics"]) == "9090"
    assert env["MOBACKUP_HEALTH_PORT"] == "8080"
    assert env["MOBACKUP_AGENT_IMAGE"] == "ghcr.io/matrixorigin/mo-backup-operator:0.1.0"
    assert env["MOBACKUP_JOB_SERVICE_ACCOUNT"] == "mo-backup-operator-job"
    # No secret ever on the command line or in plain env values.
    assert not any(k in json.dumps(c).lower() for k in ("secret_access", "password"))


def test_job_defaults_reach_the_operator_as_it_parses_them() -> None:
    """The chart's MOBACKUP_JOB_DEFAULTS/agent image/SA env, read by the operator's own parser."""
    from mobackup.k8s.jobs import OperatorDefaults

    docs = render("--set", "agentImage.repository=registry.local/agent", "--set", "agentImage.tag=1.2.3",
                  "--set", "jobDefaults.backoffLimit=3", "--set", "jobDefaults.nodeSelector.pool=backup")
    env = {e["name"]: e["value"] for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
           ["containers"][0]["env"] if "value" in e}
    d = OperatorDefaults.from_env(env)
    assert d.image == "registry.local/agent:1.2.3"
    assert d.service_account == "mo-backup-operator-job"
    assert d.job_defaults["backoffLimit"] == 3
    assert d.job_defaults["nodeSelector"] == {"pool": "backup"}
    assert d.job_defaults["resources"]["limits"]["memory"] == "1Gi"
    assert d.job_defaults["activeDeadlineSeconds"] == 21600
    assert (d.allowed_priority_classes, d.allowed_annotations) == ((), ())
    docs = render("--set", "jobOverrides.allowedPriorityClasses={backup-*}",
                  "--set", "jobOverrides.allowedAnnotations={cluster-autoscaler.kubernetes.io/*}")
    d = OperatorDefaults.from_env({e["name"]: e["value"] for e in by_kind(docs, "Deployment")[0]["spec"]["template"]
                                   ["spec"]["containers"][0]["env"] if "value" in e})
    assert d.allowed_priority_classes == ("backup-*",)
    assert d.allowed_annotations == ("cluster-autoscaler.kubernetes.io/*",)


def test_grafana_dashboard_configmap() -> None:
    """Off by default; when on, the dashboard JSON under the sidecar's label, every query on the
    operator's own metrics (each is also run against a real Prometheus: test_e2e_drill.py)."""
    from mobackup.k8s.metrics import HELP

    assert not [d for d in by_kind(render(), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    docs = render("--set", "metrics.grafanaDashboard.enabled=true",
                  "--set", "metrics.grafanaDashboard.namespace=grafana")
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "grafana" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["mo-backup-operator.json"])
    assert dashboard == json.loads((tools.CHART / "dashboards" / "mobackup.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(mobackup_[a-z_]+?)(?:_bucket)?\b", e)}
    assert used == set(HELP), f"not on the dashboard: {set(HELP) - used}, unknown: {used - set(HELP)}"


def test_monitoring_objects() -> None:
    docs = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
                  "--set", "metrics.prometheusRule.staleBackupHours=48")
    svc = by_kind(docs, "Service")[0]
    sm = by_kind(docs, "ServiceMonitor")[0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True  # the runs' namespace, not the operator's
    rules = {r["alert"]: r for g in by_kind(docs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    assert "mobackup_last_success_timestamp_seconds" in rules["MOBackupStale"]["expr"]
    assert "> 172800" in rules["MOBackupStale"]["expr"]
    assert 'mobackup_failures_total{kind="MOBackup"}' in rules["MOBackupFailed"]["expr"]
    # The metric names alerted on are the ones the operator exports.
    from mobackup.k8s.metrics import HELP

    assert "mobackup_storage_available" in rules["MOBackupStorageUnavailable"]["expr"]
    assert {"mobackup_last_success_timestamp_seconds", "mobackup_failures_total",
            "mobackup_storage_available"} <= set(HELP)
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PrometheusRule")


BAD_VALUES = [
    (["--set", "networkPolicy.s3.ports={70000}"], "/networkPolicy/s3/ports/0", "maximum"),
    (["--set", "networkPolicy.apiServer.cidrs={10.0.0.1}"], "/networkPolicy/apiServer/cidrs/0",
     "does not match pattern"),
    (["--set", "jobDefaults.tmpSizeLimit=lots"], "/jobDefaults/tmpSizeLimit", "does not match pattern"),
    (["--set", "jobOverrides.allowImages={x}"], "additional properties 'allowImages' not allowed", ""),
    (["--set", "logLevel=LOUD"], "/logLevel", "must be one of"),
    (["--set", "replicaCount=-1"], "/replicaCount", "minimum"),
    (["--set", "watchNamespaces={Team_A}"], "/watchNamespaces/0", "does not match pattern"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy", "must be one of"),
    (["--set", "image.digest=md5:abc"], "/image/digest", "does not match pattern"),
    (["--set", "metrics.port=70000"], "/metrics/port", "maximum"),
    (["--set", "jobDefaults.backoffLimit=-2"], "/jobDefaults/backoffLimit", "minimum"),
    (["--set", "jobDefaults.activeDeadlineSeconds=five"], "/jobDefaults/activeDeadlineSeconds", "integer"),
    (["--set", "metrics.prometheusRule.failedBackupWindow=soon"], "/metrics/prometheusRule/failedBackupWindow",
     "does not match pattern"),
    (["--set", "watchNamespace={a}"], "additional properties 'watchNamespace' not allowed", ""),
    (["--set", "jobDefaults.retries=3"], "additional properties 'retries' not allowed", ""),
]


@pytest.mark.parametrize(("values", "where", "why"), BAD_VALUES, ids=[v[0][1] for v in BAD_VALUES])
def test_values_schema_rejects_bad_values_clearly(values: list[str], where: str, why: str) -> None:
    out = helm("template", "x", str(tools.CHART), *values, check=False)
    assert "values don't meet the specifications of the schema" in out, out
    assert where in out and why in out, out


def test_values_yaml_is_valid_and_documented() -> None:
    """Every default passes the schema (helm lint does this) and the schema names every key."""
    values = yaml.safe_load((tools.CHART / "values.yaml").read_text())
    schema = json.loads((tools.CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


# ------------------------------------------------------------------------ chart conventions (issue 13)

def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    c = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def test_pull_secrets_and_job_defaults_reach_the_jobs() -> None:
    """The chart's values, through the operator's own parser and Job builder, onto the Job pod."""
    from mobackup.k8s import jobs, models

    docs = render("--set", "imagePullSecrets[0].name=regcred", "--set", "jobDefaults.imagePullSecrets[0].name=jobcred",
                  "--set", "jobDefaults.env[0].name=HTTPS_PROXY", "--set", "jobDefaults.env[0].value=http://p:3128",
                  "--set", "jobDefaults.envFrom[0].configMapRef.name=proxy",
                  "--set", "jobDefaults.priorityClassName=backup", "--set", "jobDefaults.podLabels.team=dba",
                  "--set", "jobDefaults.podAnnotations.note=x",
                  "--set", "jobOverrides.allowedImages={registry.local/mobackup:*}",
                  "--set", "jobOverrides.allowedServiceAccounts={backup-*}")
    d = jobs.OperatorDefaults.from_env(_operator_env(docs))
    assert d.allowed_images == ("registry.local/mobackup:*",) and d.allowed_service_accounts == ("backup-*",)
    spec = models.parse_backup({"source": {"pvc": {"claimName": "mo-data"}}, "consistency": "None",
                                "storageRef": {"name": "s3"}, "job": {"image": "registry.local/mobackup:2"}}, "ns")
    storage = models.parse_storage({"pvc": {"claimName": "repo"}})
    job = jobs.backup_job(jobs.Owner("MOBackup", "b", "ns", "u"), spec, storage, base_id=None, defaults=d)
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "jobcred"}]
    c = pod["containers"][0]
    assert {"name": "HTTPS_PROXY", "value": "http://p:3128"} in c["env"]
    assert c["envFrom"] == [{"configMapRef": {"name": "proxy"}}] and pod["priorityClassName"] == "backup"
    assert c["image"] == "registry.local/mobackup:2"
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "dba" and meta["annotations"]["note"] == "x"
    assert c["resources"]["requests"]["ephemeral-storage"] == "128Mi"
    assert next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"] == {"sizeLimit": "1Gi"}
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/instance",
                "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
        assert key in job["metadata"]["labels"] and key in meta["labels"]
    # Default values: no override allowed, no pull Secret.
    d0 = jobs.OperatorDefaults.from_env(_operator_env(render()))
    assert d0.allowed_images == () and d0.allowed_service_accounts == ()
    assert "imagePullSecrets" not in d0.job_defaults


def test_disruption_budget_and_spread_only_with_several_replicas() -> None:
    one = render()
    assert not by_kind(one, "PodDisruptionBudget")
    assert "topologySpreadConstraints" not in by_kind(one, "Deployment")[0]["spec"]["template"]["spec"]
    two = render("--set", "replicaCount=2")
    dep = by_kind(two, "Deployment")[0]
    pdb = by_kind(two, "PodDisruptionBudget")[0]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] for c in spread)
    custom = render("--set", "replicaCount=2", "--set", "topologySpreadConstraints[0].maxSkew=2",
                    "--set", "topologySpreadConstraints[0].topologyKey=rack",
                    "--set", "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule")
    assert [c["topologyKey"] for c in by_kind(custom, "Deployment")[0]["spec"]["template"]["spec"][
        "topologySpreadConstraints"]] == ["rack"]


def test_network_policy() -> None:
    assert not by_kind(render(), "NetworkPolicy")
    docs = render("--set", "networkPolicy.enabled=true", "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
                  "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring")
    np = by_kind(docs, "NetworkPolicy")[0]["spec"]
    dep = by_kind(docs, "Deployment")[0]
    assert np["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    assert np["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]},  # probes
                             {"ports": [{"port": 9090, "protocol": "TCP"}], "from": [
                                 {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}]
    egress = {tuple(p["port"] for p in rule["ports"]): rule.get("to") for rule in np["egress"]}
    assert egress[(443, 6443)] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]  # API server
    assert egress[(443, 9000)] is None  # S3: any address on its ports
    assert (6001,) in egress and (53, 53) in egress  # MatrixOne SQL, DNS


def test_helm_test_hook_checks_crds_and_readiness() -> None:
    docs = render()
    hooks = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    assert sorted(d["kind"] for d in hooks) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    pod = by_kind(hooks, "Pod")[0]
    role = by_kind(hooks, "Role")[0]
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments"],
                              "resourceNames": ["mo-backup-operator"], "verbs": ["get"]}]
    assert pod["spec"]["serviceAccountName"] == by_kind(hooks, "ServiceAccount")[0]["metadata"]["name"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    script = c["args"][0]
    compile(script, "helm-test", "exec")  # valid Python for the image's interpreter
    for kind in ("mobackupstorages", "mobackups", "morestores", "mobackupschedules"):
        assert kind in script
    assert '"mo-backup-operator", "mobackup-system"' in script and "ready_replicas" in script
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # The RBAC the operator identity and deploy/base are made from excludes the hook.
    assert not [d for d in render("--skip-tests") if d["metadata"]["name"].endswith("-test")]


def _values_rows() -> dict[str, str]:
    rows = {}
    for line in (tools.CHART / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows[cells[0].strip("`")] = cells[1][1:-1]
    return rows


def test_chart_readme_values_table_matches_values_yaml() -> None:
    """Every key of values.yaml is in the README's table (itself or an ancestor) with its default,
    and the table names no key that values.yaml lacks."""
    values = yaml.safe_load((tools.CHART / "values.yaml").read_text())
    rows = _values_rows()
    assert len(rows) > 50

    def lookup(path: str) -> Any:
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"README names {path}, which values.yaml lacks"
            node = node[part]
        return node

    for key, default in rows.items():
        assert json.loads(default) == lookup(key), f"README's default of {key} is {default}"

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [p for k, v in node.items() for p in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    undocumented = [p for p in leaves(values) if not any(p == k or p.startswith(k + ".") for k in rows)]
    assert undocumented == [], f"values.yaml keys missing from charts/mo-backup-operator/README.md: {undocumented}"
