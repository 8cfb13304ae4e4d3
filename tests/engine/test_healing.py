"""Damage that heals: a damaged blob is noticed by the next backup that reads its file (by size, or
read back with check_existing) and stored again; verify --repair stores it again from the source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RepoFactory
from mobackup.engine.backup import run_backup
from mobackup.engine.repository import Repository, blob_key
from mobackup.engine.restore import run_restore
from mobackup.engine.verify import verify_backup
from mobackup.sample import snapshot_tree

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def _damage(repo: Repository, backup_id: str, how: str) -> str:
    """Damage the first blob of the backup's first file of 256 KiB or more (kernel-copied when plain)."""
    entries = repo.entries(repo.load_summary(backup_id))
    record = next(r for r in entries if r["type"] == "file" and r["size"] >= 256 << 10)
    key = blob_key(record["chunks"][0])
    stored = repo.backend.read(key)
    if how == "flip":
        repo.backend.write(key, stored[:100] + bytes([stored[100] ^ 0xFF]) + stored[101:])
    elif how == "truncate":
        repo.backend.write(key, stored[: len(stored) // 2])
    else:
        repo.backend.delete([key])
    return record["chunks"][0]


@pytest.mark.parametrize(("how", "check_existing"), [("truncate", False), ("remove", False), ("flip", True)])
@pytest.mark.parametrize("options", [{}, {"compression": "zstd", "encryption_key": "k"}], ids=["plain", "sealed"])
def test_full_backup_after_damage_restores(make_repo: RepoFactory, mo_data: Path, tmp_path: Path, how: str,
                                           check_existing: bool, options: dict[str, str]) -> None:
    repo = make_repo(**options)
    first = run_backup(repo, mo_data, source="db")
    if how == "truncate" and "compression" in options:
        check_existing = True  # compressed blobs have no exact size: a truncation is found by reading
    _damage(repo, first.id, how)
    assert not verify_backup(repo, first.id).ok
    second = run_backup(repo, mo_data, source="db", backup_type="full", check_existing=check_existing)
    assert second.new_blob_count >= 1  # the damaged blob was stored again
    assert verify_backup(repo, second.id).ok and verify_backup(repo, first.id).ok  # same name: both heal
    run_restore(repo, second.id, tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == snapshot_tree(mo_data)


def test_flipped_bit_needs_check_existing(make_repo: RepoFactory, mo_data: Path) -> None:
    """A bit flip keeps the size: only reading the blob back notices it."""
    repo = make_repo()
    first = run_backup(repo, mo_data, source="db")
    _damage(repo, first.id, "flip")
    unchecked = run_backup(repo, mo_data, source="db", backup_type="full")
    assert not verify_backup(repo, unchecked.id).ok
    checked = run_backup(repo, mo_data, source="db", backup_type="full", check_existing=True)
    assert verify_backup(repo, checked.id).ok and verify_backup(repo, unchecked.id).ok


@pytest.mark.parametrize("how", ["flip", "truncate", "remove"])
def test_verify_repair_stores_damaged_blobs_again(make_repo: RepoFactory, mo_data: Path, tmp_path: Path,
                                                  how: str) -> None:
    repo = make_repo()
    summary = run_backup(repo, mo_data, source="db")
    _damage(repo, summary.id, how)
    result = verify_backup(repo, summary.id, repair_from=mo_data)
    assert result.ok and result.repaired_blobs == 1, result.problems
    run_restore(repo, summary.id, tmp_path / "restored")
    assert snapshot_tree(tmp_path / "restored") == snapshot_tree(mo_data)


def test_cli_verify_repair(tmp_path: Path, mo_data: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MOBACKUP, *args], capture_output=True, text=True, env=env, timeout=300)

    repo = tmp_path / "repo"
    backup_id = json.loads(run("backup", "--data-dir", str(mo_data), "--repo", str(repo), "--json").stdout)["id"]
    for blob in (repo / "blobs").rglob("*"):
        if blob.is_file() and blob.stat().st_size >= 256 << 10:
            blob.write_bytes(b"x" + blob.read_bytes()[1:])  # same size: a bit flip
            break
    assert run("verify", backup_id, "--repo", str(repo)).returncode == 1
    assert run("backup", "--data-dir", str(mo_data), "--repo", str(repo), "--check-existing", "--type", "full",
               ).returncode == 0
    assert run("verify", backup_id, "--repo", str(repo)).returncode == 0  # healed by --check-existing
    for blob in (repo / "blobs").rglob("*"):
        if blob.is_file() and blob.stat().st_size >= 256 << 10:
            blob.unlink()
            break
    refused = run("verify", backup_id, "--repo", str(repo), "--repair")
    assert refused.returncode == 1 and "go together" in refused.stderr
    repaired = run("verify", backup_id, "--repo", str(repo), "--repair", "--data-dir", str(mo_data), "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["repaired_blobs"] == 1
