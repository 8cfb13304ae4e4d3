"""The CRD files: generated from crdgen, every field described, the columns the issue asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mobackup.k8s import crdgen

CRDS = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("name", sorted(crdgen.ALL))
def test_crd_file_is_up_to_date(name: str) -> None:
    assert (CRDS / name).read_text() == crdgen.render(name), (
        f"crds/{name} is stale: run `python -m mobackup.k8s.crdgen crds/`")


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    if path and not schema.get("description") and path not in {".metadata"}:
        missing.append(path)
    for key, sub in schema.get("properties", {}).items():
        missing += _walk(sub, f"{path}.{key}")
    if "items" in schema and schema["items"].get("type") == "object":
        missing += _walk({**schema["items"], "description": "x"}, f"{path}[]")
    return missing


@pytest.mark.parametrize("name", sorted(crdgen.ALL))
def test_every_field_is_described(name: str) -> None:
    doc = yaml.safe_load((CRDS / name).read_text())
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert _walk(version["schema"]["openAPIV3Schema"], "") == []
    names = doc["spec"]["names"]
    # kubectl expands a category before resource names: it must differ from every kind's names.
    assert names["categories"] == ["matrixone-backup"]
    every = {n for f in crdgen.ALL for n in _names(f)}
    assert not set(names["categories"]) & every


def _names(name: str) -> set[str]:
    n = yaml.safe_load((CRDS / name).read_text())["spec"]["names"]
    return {n["plural"], n["singular"], *n["shortNames"]}


def test_no_future_time_column_renders_as_date() -> None:
    """kubectl shows a `date` column as an age: a future time prints <invalid>."""
    doc = yaml.safe_load((CRDS / "mobackupschedules.yaml").read_text())
    cols = {c["name"]: c for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Next"]["type"] == "string" and cols["Next"]["jsonPath"] == ".status.nextScheduleTime"


def test_mobackup_columns_and_short_names() -> None:
    doc = yaml.safe_load((CRDS / "mobackups.yaml").read_text())
    cols = [c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert cols == ["Phase", "Type", "Backup ID", "Size", "BackupTS", "Duration", "Recoverable To", "Age"]
    shorts = {yaml.safe_load((CRDS / n).read_text())["spec"]["names"]["shortNames"][0] for n in crdgen.ALL}
    assert shorts == {"mob", "mor", "mobs", "mobsched", "modrill"}


def test_status_fields_the_operator_writes_are_in_the_schema() -> None:
    """The API server prunes unknown status fields silently: every field a builder emits must exist."""
    from mobackup.k8s import status

    def props(name: str) -> set[str]:
        doc = yaml.safe_load((CRDS / name).read_text())
        return set(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"])

    backup, restore = props("mobackups.yaml"), props("morestores.yaml")
    patch = status.phase_patch({"startTime": "2026-01-01T00:00:00Z"}, "Completed", "R", "m", 1)
    summary = {"id": "a", "type": "full", "base_id": "b", "backup_ts": "1-0", "size_bytes": 1, "new_bytes": 1,
               "file_count": 1, "source": "s", "mobackup_version": "v", "location": "l", "duration_seconds": 1}
    assert set(patch) | set(status.backup_result_fields(summary)) <= backup
    assert set(patch) | set(status.restore_result_fields({"backup_id": "a", "size_bytes": 1, "file_count": 1,
                                                          "backup_ts": "1-0"})) <= restore
    progress = yaml.safe_load((CRDS / "mobackups.yaml").read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["status"]["properties"]["progress"]["properties"]
    assert set(status.progress_fields(1, 2, 1, 2)) <= set(progress)
    extra = {"jobName", "attempts", "location", "scaledWorkload", "storage", "source", "moVersion",
             "checkpoint", "snapshot", "progress"}
    assert extra <= backup
    assert {"jobName", "attempts", "target", "storage", "sqlCheck", "sqlCheckSince", "scaledWorkload"} <= restore
