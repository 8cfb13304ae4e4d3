"""Argo CD health checks (deploy/argocd/argocd-cm-health.yaml), run the way Argo CD runs them:
gopher-lua with the base, table and package libraries only, the resource decoded from JSON as global
`obj` (numbers are floats), a 1 s limit, the chunk returning {status, message}."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ship import tools
from ship.argocd import KINDS, config, evaluate, health, scripts


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
     "Progressing", "Backup running: 25% of 100 bytes"),
    ("MOBackup", {"phase": "Running", "progress": {"bytesDone": 1, "bytesTotal": 3}}, None,
     "Progressing", "Backup running: 33% of 3 bytes"),
    ("MOBackup", {"phase": "Running", "progress": {"bytesDone": 2 << 40, "bytesTotal": 3 << 40, "percent": 66}},
     None, "Progressing", "Backup running: 66%"),
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
     "Progressing", "Restore running: 25% of 200 bytes"),
    ("MORestore", {"phase": "Running", "progress": {"percent": 99.5}}, None, "Progressing", "Restore running: 99%"),
    ("MORestore", {"phase": "Completed", "backupID": "b1"}, None, "Healthy", "b1"),
    ("MORestore", {"phase": "Failed", "message": "target not empty; set overwrite: true"}, None,
     "Degraded", "overwrite"),
    ("MORestore", {"phase": "Failed", "conditions": FAILED_COND}, None, "Degraded", "access denied"),
    # MORestoreDrill
    ("MORestoreDrill", None, None, "Progressing", "Waiting"),
    ("MORestoreDrill", {"phase": "Running", "message": "Job x restores b1"}, None, "Progressing", "restores b1"),
    ("MORestoreDrill", {"phase": "Completed", "message": "all 7 checks passed"}, None, "Healthy", "7 checks"),
    ("MORestoreDrill", {"phase": "Failed", "message": "query 1: expected '11', got '10'"}, None, "Degraded",
     "expected '11', got '10'"),
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


def test_the_runner_is_argo_cds_sandbox() -> None:
    """The runner itself: string and math are nil without useOpenLibs (the failure Argo CD showed for
    the first scripts), numbers arrive as floats, and a runaway script stops after 1 s."""
    code, _, err = evaluate('return {status = "Healthy", message = string.format("%d", 1)}', {})
    assert code == 1 and "format" in err
    code, out, _ = evaluate('return {status = "Healthy", message = string.format("%d", 1)}', {}, open_libs=True)
    assert code == 0 and '"1"' in out
    code, out, _ = evaluate('return {status = "Healthy", message = tostring(obj.n / 2) .. " " .. obj.n}', {"n": 5})
    assert code == 0 and "2.5 5" in out
    code, _, err = evaluate("while true do end", {})
    assert code == 1 and "deadline" in err


def test_scripts_need_no_open_libs() -> None:
    assert not [k for k in config() if k.startswith("resource.customizations.useOpenLibs.")]
    for kind, script in scripts().items():
        assert "string." not in script and "math." not in script, kind
