"""The operator's metrics facade over prometheus-client: names, labels, values as scraped."""

from __future__ import annotations

import urllib.request

import pytest

from mobackup.k8s import metrics


def test_metrics_render() -> None:
    r = metrics.Registry()
    r.inc("mobackup_failures_total", kind="MOBackup", namespace="ns")
    r.set("mobackup_last_success_timestamp_seconds", 1700000000, namespace="ns", source='a"b')
    r.observe("mobackup_run_duration_seconds", 12.5, kind="MOBackup")
    text = r.render()
    # Numbers as prometheus-client writes them (1.0, 1.7e+09, le="15.0"): compare parsed values.
    got = metrics_samples(text)
    assert got[("mobackup_failures_total", (("kind", "MOBackup"), ("namespace", "ns")))] == 1
    assert got[("mobackup_last_success_timestamp_seconds", (("namespace", "ns"), ("source", 'a"b')))] == 1700000000
    assert got[("mobackup_run_duration_seconds_bucket", (("kind", "MOBackup"), ("le", "15.0")))] == 1
    assert got[("mobackup_run_duration_seconds_bucket", (("kind", "MOBackup"), ("le", "5.0")))] == 0
    assert "# TYPE mobackup_run_duration_seconds histogram" in text
    assert "# TYPE mobackup_active_runs gauge" in text  # every metric is listed before its first sample
    assert r.get("mobackup_failures_total", kind="MOBackup", namespace="ns") == 1
    assert r.get("mobackup_last_success_size_bytes", namespace="ns", source="x") is None
    with pytest.raises(ValueError):  # a label set the metric does not declare
        r.inc("mobackup_runs_total", kind="MOBackup")


def metrics_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_served_over_http() -> None:
    r = metrics.Registry()
    r.set("mobackup_storage_available", 0, namespace="ns", storage="s3")
    server = metrics.serve(0, r, host="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            got = metrics_samples(resp.read().decode())
    finally:
        server.shutdown()
    assert got[("mobackup_storage_available", (("namespace", "ns"), ("storage", "s3")))] == 0


def test_operations_guide_lists_each_metric_with_its_labels() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    rows = {m[1]: (m[2], tuple(x.strip() for x in m[3].split(",")))
            for m in re.finditer(r"^\| `(mobackup_[a-z_]+)` \| (\w+) \| ([a-z, ]+) \|", doc, re.M)}
    assert rows == {name: (kind, labels) for name, (kind, _, labels) in metrics.HELP.items()}


def test_storage_gauges_are_exported_from_the_last_check_between_checks() -> None:
    """An operator just started sees each storage before its next check is due: the gauge says what
    the last check found (else MOBackupStorageUnavailable resolved on every restart)."""
    from mobackup.k8s import controller

    ctx = controller.Ctx(kube=None, metrics=metrics.Registry())  # type: ignore[arg-type]
    for phase, value in (("Unavailable", 0.0), ("Available", 1.0)):
        controller.export_from_status(ctx, {"metadata": {"namespace": "ns", "name": "s"}, "status": {
            "phase": phase, "stats": {"storedBytes": 7, "bytesByRetentionClass": {"last": 5, "prunable": None}}}})
        assert ctx.metrics.get("mobackup_storage_available", namespace="ns", storage="s") == value
    assert ctx.metrics.get("mobackup_storage_stored_bytes", namespace="ns", storage="s") == 7
    labels = {"namespace": "ns", "storage": "s"}
    by_class = {c: ctx.metrics.get("mobackup_storage_retention_class_bytes", **labels, **{"class": c})
                for c in ("last", "prunable")}
    assert by_class == {"last": 5, "prunable": None}
    controller.export_from_status(ctx, {"metadata": {"namespace": "ns", "name": "new"}, "status": {}})
    assert ctx.metrics.get("mobackup_storage_available", namespace="ns", storage="new") is None
