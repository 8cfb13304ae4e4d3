"""The chart's alert rules, unit-tested with the real `promtool test rules` (Debian's prometheus).

Each alert is rendered by helm as users get it, then fed series that make it fire and series that
make it resolve, with promtool's simulated clock (the `for:` waits of 10 and 15 minutes included).
The annotations' templates are checked by `promtool check rules`; the unit tests compare labels only.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ship.test_chart import by_kind, render

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="tests/setup.sh installs prometheus")

NS, SOURCE = "db", "db/mo-data"
FIRES = {"severity": "warning"}


def rendered_rules(*values: str) -> dict[str, Any]:
    docs = render("--set", "metrics.prometheusRule.enabled=true", *values)
    return {"groups": by_kind(docs, "PrometheusRule")[0]["spec"]["groups"]}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60)


def alert(name: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": {**FIRES, **labels}} for labels in fired]}


def series(selector: str, values: str) -> dict[str, str]:
    return {"series": selector, "values": values}


# Each case: the series (one sample a minute unless `interval`), then what each alert does when.
SOURCE_LABELS = {"namespace": NS, "source": SOURCE}
CASES: dict[str, dict[str, Any]] = {
    "MOBackupStale": {  # 26 h without a successful backup, for 10 m; a new backup resolves it
        "interval": "1m",
        "input_series": [series(f'mobackup_last_success_timestamp_seconds{{namespace="{NS}",source="{SOURCE}"}}',
                                "0x1600 96000x100")],
        "alert_rule_test": [alert("MOBackupStale", "1565m"),  # over 26 h for 5 m only: pending
                            alert("MOBackupStale", "1590m", SOURCE_LABELS),
                            alert("MOBackupStale", "1620m")],
    },
    "MOBackupFailed": {  # a failure fires at once and resolves an hour (failedBackupWindow) later
        "interval": "1m",
        "input_series": [series(f'mobackup_failures_total{{kind="MOBackup",namespace="{NS}"}}', "0x10 1x200"),
                         series(f'mobackup_failures_total{{kind="MORestore",namespace="{NS}"}}', "0x210")],
        "alert_rule_test": [alert("MOBackupFailed", "5m"), alert("MOBackupFailed", "15m", {"namespace": NS}),
                            alert("MOBackupFailed", "80m"), alert("MORestoreFailed", "15m")],
    },
    "MOBackupFailed, first of its namespace": {  # the series appears at 1: increase() alone sees nothing
        "interval": "1m",
        "input_series": [series(f'mobackup_failures_total{{kind="MOBackup",namespace="{NS}"}}', "_x10 1x200")],
        "alert_rule_test": [alert("MOBackupFailed", "5m"), alert("MOBackupFailed", "15m", {"namespace": NS}),
                            alert("MOBackupFailed", "80m")],
    },
    "MOBackupFailed, after an operator restart": {  # the old series went stale; the new one starts at 1
        "interval": "1m",
        "input_series": [series(f'mobackup_failures_total{{kind="MOBackup",namespace="{NS}"}}',
                                "3x100 _x20 1x100")],
        "alert_rule_test": [alert("MOBackupFailed", "90m"), alert("MOBackupFailed", "125m", {"namespace": NS}),
                            alert("MOBackupFailed", "190m")],
    },
    "MORestoreFailed": {
        "interval": "1m",
        "input_series": [series(f'mobackup_failures_total{{kind="MORestore",namespace="{NS}"}}', "0x10 1x200")],
        "alert_rule_test": [alert("MORestoreFailed", "15m", {"namespace": NS}), alert("MORestoreFailed", "80m"),
                            alert("MOBackupFailed", "15m")],
    },
    "MORestoreDrillStale": {  # 8 days without a passing drill, for 10 m
        "interval": "2m",  # within Prometheus's 5 m lookback, or the series would look gone between samples
        "input_series": [series(f'mobackup_last_drill_success_timestamp_seconds{{namespace="{NS}",source="{SOURCE}"}}',
                                "0x6000")],
        "alert_rule_test": [alert("MORestoreDrillStale", "191h"),
                            alert("MORestoreDrillStale", "193h", SOURCE_LABELS)],
    },
    "MORestoreDrillFailed": {
        "interval": "1m",
        "input_series": [series(f'mobackup_drill_failures_total{{namespace="{NS}",source="{SOURCE}"}}',
                                "_x10 1x200")],
        "alert_rule_test": [alert("MORestoreDrillFailed", "15m", SOURCE_LABELS),
                            alert("MORestoreDrillFailed", "80m")],
    },
    "MOBackupStorageUnavailable": {  # unreachable for 15 m; reachable again resolves it
        "interval": "1m",
        "input_series": [series(f'mobackup_storage_available{{namespace="{NS}",storage="s3"}}', "1x5 0x30 1x30")],
        "alert_rule_test": [alert("MOBackupStorageUnavailable", "15m"),
                            alert("MOBackupStorageUnavailable", "25m", {"namespace": NS, "storage": "s3"}),
                            alert("MOBackupStorageUnavailable", "45m")],
    },
    "MOBackupCopyLagging": {  # a backup waits over 6 h for its copy, for 15 m; copied, it resolves
        "interval": "1m",
        "input_series": [series(f'mobackup_copy_lag_seconds{{namespace="{NS}",storage="a",target="b"}}',
                                "0x10 21000x5 22000x30 0x30")],
        "alert_rule_test": [alert("MOBackupCopyLagging", "14m"), alert("MOBackupCopyLagging", "25m"),
                            alert("MOBackupCopyLagging", "35m", {"namespace": NS, "storage": "a", "target": "b"}),
                            alert("MOBackupCopyLagging", "60m")],
    },
    "MOBackupOperatorDown": {  # not scraped (up 0, or no series at all) for 10 m
        "interval": "1m",
        "input_series": [series('up{job="mo-backup-operator-metrics",namespace="mobackup-system"}',
                                "1x10 0x20 1x20")],
        "alert_rule_test": [alert("MOBackupOperatorDown", "5m"), alert("MOBackupOperatorDown", "16m"),
                            alert("MOBackupOperatorDown", "25m", {}),
                            alert("MOBackupOperatorDown", "45m")],
    },
}


def without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    return {"groups": [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                       for g in rules["groups"]]}


def test_the_rendered_rules_are_valid(tmp_path: Path) -> None:
    rules = rendered_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", tmp_path / "rules.yaml")
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    assert {r["alert"] for g in rules["groups"] for r in g["rules"]} == {name.split(",")[0] for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_each_alert_fires_and_resolves(name: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(rendered_rules())))
    case = {k: v for k, v in CASES[name].items()}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                        "tests": [case]}))
    result = promtool("test", "rules", tmp_path / "test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_threshold_moves_the_alert(tmp_path: Path) -> None:
    """The values reach the expression: with staleBackupHours 48 the 26 h case no longer fires."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(
        rendered_rules("--set", "metrics.prometheusRule.staleBackupHours=48"))))
    case = {**CASES["MOBackupStale"], "alert_rule_test": [alert("MOBackupStale", "1590m")]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                        "tests": [case]}))
    result = promtool("test", "rules", tmp_path / "test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_fractional_thresholds_and_the_for_durations_reach_the_rules() -> None:
    """What the e2e drill test renders (seconds instead of hours, `for:` 2 s); the defaults render as
    before (`for:` 10 m / 15 m, whole seconds)."""
    rules = {r["alert"]: r for r in rendered_rules(
        "--set-json", "metrics.prometheusRule.staleBackupHours=0.003",
        "--set", "metrics.prometheusRule.for.staleBackup=2s")["groups"][0]["rules"]}
    assert rules["MOBackupStale"]["expr"].strip().endswith("> 10.8") and rules["MOBackupStale"]["for"] == "2s"
    defaults = {r["alert"]: r for r in rendered_rules()["groups"][0]["rules"]}
    assert defaults["MOBackupStale"]["expr"].strip().endswith("> 93600")
    assert {name: r.get("for") for name, r in defaults.items() if r.get("for")} == {
        "MOBackupStale": "10m", "MORestoreDrillStale": "10m", "MOBackupStorageUnavailable": "15m",
        "MOBackupCopyLagging": "15m", "MOBackupOperatorDown": "10m"}
