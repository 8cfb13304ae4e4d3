"""Argo CD health checks (deploy/argocd/argocd-cm-health.yaml), run with the real Lua 5.4
interpreter the way Argo CD runs them: the script is a chunk with the resource as global `obj`,
returning {status, message}."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ship import tools
from ship.argocd import KINDS, health, scripts


def _obj(kind: str, status: dict | None = None, spec: dict | None = None) -> dict:
    o: dict[str, Any] = {"apiVersion": "mobackup.io/v1alpha1", "kind": kind,
                         "metadata": {"name": "x", "namespace": "db"}, "spec": spec or {}}
    if status is not None:
        o["status"] = status
    return o


def test_every_kind_has_a_health_check() -> None:
    assert sorted(scripts()) == sorted(KINDS)
    # The CRDs define exactly these kinds (once they exist).
    kinds = set()
    for path in tools.crd_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                kinds.add(doc["spec"]["names"]["kind"])
    assert kinds == set(KINDS)


FAILED_COND = [{"type": "Ready", "status": "False", "reason": "JobFailed", "message": "agent: access denied"}]

CASES = [
    # MOBackup / MORestore by phase
    ("MOBackup", None, None, "Progressing", "Waiting for the operator"),
    ("MOBackup", {"phase": "Pending", "message": "waiting for the lease of source db/mo"}, None,
     "Progressing", "waiting for the lease"),
    ("MOBackup", {"phase": "Running", "progress": {"bytesDone": 25, "bytesTotal": 100}}, None,
     "Progressing", "25%"),
    ("MOBackup", {"phase": "Running", "progress": {"percent": 40, "bytesDone": 1, "bytesTotal": 9}}, None,
     "Progressing", "40%"),
    ("MOBackup", {"phase": "Running"}, None, "Progressing", "Backup running"),
    ("MOBackup", {"phase": "Completed", "backupID": "20260101T000000Z-ab12",
                  "size": "1.0 KiB", "sizeBytes": 1024}, None, "Healthy", "1.0 KiB"),
    ("MOBackup", {"phase": "Failed", "message": "base backup belongs to another source"}, None,
     "Degraded", "another source"),
    ("MOBackup", {"phase": "Failed", "conditions": FAILED_COND}, None, "Degraded", "access denied"),
    ("MORestore", None, None, "Progressing", ""),
    ("MORestore", {"phase": "Pending"}, None, "Progressing", "Pending"),
    ("MORestore", {"phase": "Running", "progress": {"bytesDone": 50, "bytesTotal": 200}}, None,
     "Progressing", "25%"),
    ("MORestore", {"phase": "Completed", "backupID": "b1"}, None, "Healthy", "b1"),
    ("MORestore", {"phase": "Failed", "message": "target not empty; set overwrite: true"}, None,
     "Degraded", "overwrite"),
    ("MORestore", {"phase": "Failed", "conditions": FAILED_COND}, None, "Degraded", "access denied"),
    # MOBackupStorage
    ("MOBackupStorage", None, None, "Progressing", "not checked"),
    ("MOBackupStorage", {"phase": "Available"}, None, "Healthy", ""),
    ("MOBackupStorage", {"phase": "Unavailable", "message": "bucket does not exist"}, None,
     "Degraded", "bucket does not exist"),
    ("MOBackupStorage", {"conditions": [{"type": "Available", "status": "True"}]}, None, "Healthy", ""),
    ("MOBackupStorage", {"conditions": [{"type": "Available", "status": "False",
                                         "message": "InvalidAccessKeyId"}]}, None,
     "Degraded", "InvalidAccessKeyId"),
    # MOBackupSchedule
    ("MOBackupSchedule", None, {"suspend": True}, "Suspended", "suspended"),
    ("MOBackupSchedule", {"lastSuccessfulBackup": "mo-nightly-full-1"}, {"suspend": True}, "Suspended", ""),
    ("MOBackupSchedule", None, {"suspend": False}, "Healthy", "first run"),
    ("MOBackupSchedule", {"nextScheduleTime": "2026-01-02T00:00:00Z", "lastSuccessfulBackup": "b",
                          "conditions": [{"type": "Ready", "status": "True", "reason": "BackupCreated"}]},
     {}, "Healthy", "2026-01-02T00:00:00Z"),
    ("MOBackupSchedule", {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                          "message": "fullSchedule: bad cron"}]}, {}, "Degraded", "bad cron"),
    ("MOBackupSchedule", {"conditions": [{"type": "LastBackupFailed", "status": "True",
                                          "message": "backup nightly-1 failed"}]}, {},
     "Degraded", "nightly-1"),
]


@pytest.mark.parametrize(("kind", "status", "spec", "want", "message"), CASES,
                         ids=[f"{c[0]}-{(c[1] or {}).get('phase') or (c[2] or {}) or 'nostatus'}-{c[3]}"
                              for c in CASES])
def test_health(kind: str, status: dict | None, spec: dict | None, want: str, message: str) -> None:
    got, msg = health(kind, _obj(kind, status, spec))
    assert got == want, f"{kind} {status}: {got} ({msg})"
    assert message in msg
