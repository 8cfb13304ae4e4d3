"""The docs this issue owns are current: the CRD reference is regenerated from crds/ and compared;
the operations guide names the metrics the operator exports and the alerts the chart installs."""

from __future__ import annotations

import re

import yaml

from ship import tools

OPERATIONS = tools.REPO / "docs" / "operations.md"


def test_crd_reference_is_current() -> None:
    tools.crd_files()
    proc = tools.run([tools.VENV_PY, tools.DEPLOY / "gen-crd-docs", "--check"], check=False)
    assert proc.returncode == 0, proc.stderr


def test_crd_reference_lists_every_field() -> None:
    text = (tools.REPO / "docs" / "crd-reference.md").read_text()
    for path in tools.crd_files():
        crd = yaml.safe_load(path.read_text())
        assert f"## {crd['spec']['names']['kind']}" in text
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for field in spec["properties"]:
            assert f"`spec.{field}`" in text, field


def test_operations_guide_matches_metrics_and_alerts() -> None:
    from mobackup.k8s.metrics import HELP

    text = OPERATIONS.read_text()
    documented = set(re.findall(r"`(mobackup_[a-z_]+)`", text))
    assert documented == set(HELP), f"undocumented: {set(HELP) - documented}, stale: {documented - set(HELP)}"
    rules = (tools.CHART / "templates" / "prometheusrule.yaml").read_text()
    alerts = set(re.findall(r"alert: (\w+)", rules))
    assert alerts and all(f"`{a}`" in text for a in alerts), alerts
    for section in ("Consistency modes", "Retention", "Encryption keys", "Metrics and alerts", "Troubleshooting"):
        assert f"## {section}" in text
    for mode in ("`Stop`", "`Snapshot`", "`None`"):
        assert mode in text
