"""MOBackupStorage status.stats.bytesByRetentionClass and its metric: the retention of the schedules
that back each source up into the storage gives the classes (engine/stats.py), on a repository
whose sizes are known. The repository is a directory opened in the operator's place (the operator
opens S3 ones: that path is test_e2e_copies.py's)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine.backup import run_backup
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.k8s import controller, metrics, retention
from mobackup.k8s import storage as storage_mod
from mobackup.k8s.controller import Ctx

TEMPLATE = {"source": {"name": "db", "pvc": {"claimName": "mo-data"}, "workload": {"name": "mo"}},
            "storageRef": {"name": "main"}}


def schedule(name: str, storage: str, source: str, rules: dict[str, Any], limit: int = 10) -> dict[str, Any]:
    spec = {"fullSchedule": "0 1 * * *", "retention": rules, "successfulBackupsHistoryLimit": limit,
            "template": {"spec": {**TEMPLATE, "source": {**TEMPLATE["source"], "name": source},
                                 "storageRef": {"name": storage}}}}
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}


def test_the_schedules_backing_a_source_up_into_the_storage_give_its_policy() -> None:
    found = retention.policies_of_storage([
        schedule("nightly", "main", "db", {"keepDaily": 7}),
        schedule("elsewhere", "other", "web", {"keepDaily": 1}),  # another storage: not counted
        schedule("plain", "main", "web", {}, limit=3),  # no rules: its history limit as keep-last
        schedule("twin-a", "main", "logs", {"keepLast": 1}),
        schedule("twin-b", "main", "logs", {"keepLast": 2}),  # two retentions of one source: none
        {"metadata": {"name": "broken", "namespace": "ns"}, "spec": {"fullSchedule": "nope"}},
    ], "main")
    assert {k: (v.keep_daily, v.keep_last) if v else None for k, v in found.items()} == {
        "db": (7, None), "web": (None, 3), "logs": None}


def test_status_and_metric_by_retention_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = open_repository(RepositoryOptions(url=str(tmp_path / "repo")), create=True)
    ids = []
    for n, (source, size) in enumerate((("db", 3000), ("db", 5000), ("web", 700))):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "f").write_bytes(os.urandom(size))
        ids.append(run_backup(repo, tmp_path / str(n), source=source).id)
    meta = {p.stem: 0 for p in (tmp_path / "repo" / "backups").iterdir()}
    for p in (tmp_path / "repo" / "backups").iterdir():
        meta[p.stem] += p.stat().st_size
    monkeypatch.setattr(storage_mod, "open_repo", lambda *a, **k: repo)
    policies = retention.policies_of_storage([schedule("nightly", "main", "db", {"keepLast": 1})], "main")
    stats = storage_mod.repo_stats(None, "ns", None, (), policies)  # type: ignore[arg-type]
    assert stats is not None
    # db: the second backup is its last, the first beyond it; web has no schedule
    assert stats["bytesByRetentionClass"] == {
        "monthly": None, "weekly": None, "daily": None, "within": None, "newest": None, "locked": None,
        "last": 5000 + meta[ids[1]], "prunable": 3000 + meta[ids[0]], "unmanaged": 700 + meta[ids[2]]}
    registry = metrics.Registry()
    ctx = Ctx(kube=None, metrics=registry)  # type: ignore[arg-type]
    controller.export_class_bytes(ctx, "ns", "main", stats["bytesByRetentionClass"])
    labels = {"namespace": "ns", "storage": "main"}
    assert registry.get("mobackup_storage_retention_class_bytes", **labels, **{"class": "last"}) == 5000 + meta[ids[1]]
    assert registry.get("mobackup_storage_retention_class_bytes", **labels, **{"class": "daily"}) is None
    controller.export_class_bytes(ctx, "ns", "main", {**stats["bytesByRetentionClass"], "prunable": None})
    assert registry.get("mobackup_storage_retention_class_bytes", **labels, **{"class": "prunable"}) is None
