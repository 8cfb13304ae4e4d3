"""Malformed metadata in a repository: one line with the reason and exit code 1, or (for one bad
summary) that backup listed as damaged beside the good ones; never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobackup.sample import generate_mo_data

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def mobackup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MOBACKUP, *args], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")})


@pytest.fixture
def two_backups(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = generate_mo_data(tmp_path / "mo-data", seed=6, objects=10)
    repo = tmp_path / "repo"
    ids = [json.loads(mobackup("backup", "--data-dir", str(data), "--repo", str(repo), "--json", "--type", "full")
                      .stdout)["id"] for _ in range(2)]
    return data, repo, ids


SUMMARIES = {
    "list": [],
    "null": None,
    "string-size": "size_bytes:'12'",
    "bad-time": "completed_at:'yesterday'",
    "missing-field": "-files_digest",
    "other-id": "id:'0000'",
}


def _damage(path: Path, how: object) -> None:
    if not isinstance(how, str):
        path.write_text(json.dumps(how))
        return
    summary = json.loads(path.read_text())
    if how.startswith("-"):
        del summary[how[1:]]
    else:
        name, _, value = how.partition(":")
        summary[name] = value.strip("'")
    path.write_text(json.dumps(summary))


@pytest.mark.parametrize("damage", list(SUMMARIES))
def test_one_bad_summary_is_listed_as_damaged_and_hides_nothing(two_backups: tuple[Path, Path, list[str]],
                                                                damage: str) -> None:
    data, repo, (bad, good) = two_backups
    _damage(repo / "backups" / f"{bad}.json", SUMMARIES[damage])

    listed = mobackup("list", "--repo", str(repo), "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows if not r.get("damaged")] == [good]
    assert [r["id"] for r in rows if r.get("damaged")] == [bad]
    assert "unreadable summary" in rows[1]["problem"] or "names backup" in rows[1]["problem"]
    table = mobackup("list", "--repo", str(repo))
    assert good in table.stdout and f"{bad} | DAMAGED" in table.stdout

    backup = mobackup("backup", "--data-dir", str(data), "--repo", str(repo), "--json")
    assert backup.returncode == 0, backup.stderr
    assert json.loads(backup.stdout)["base_id"] == good  # the damaged one is never a base

    for command in (["prune", "--keep-last", "1"], ["show", bad], ["restore", bad, "--target", str(repo.parent / "t")]):
        result = mobackup(*command, "--repo", str(repo))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert bad in result.stderr


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("version", "1", "not a version number"),
    ("version", None, "not a version number"),
    ("chunk_size", "8388608", "chunk_size '8388608'"),
    ("chunk_size", 0, "chunk_size 0"),
    ("compression", "lz4", "unknown compression"),
    ("encryption", {"cipher": "aes-256-gcm", "salt": 5}, "salt 5 is not hex"),
])
def test_malformed_config_is_one_line_and_exit_1(two_backups: tuple[Path, Path, list[str]], field: str,
                                                 value: object, reason: str) -> None:
    data, repo, _ = two_backups
    config = json.loads((repo / "mobackup.json").read_text())
    config[field] = value
    (repo / "mobackup.json").write_text(json.dumps(config))
    for command in (["list"], ["backup", "--data-dir", str(data)], ["prune", "--keep-last", "1"]):
        result = mobackup(*command, "--repo", str(repo))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and reason in result.stderr


def test_a_damaged_backup_can_be_deleted_on_purpose(two_backups: tuple[Path, Path, list[str]]) -> None:
    """prune refuses to collect garbage while a summary is unreadable; delete --force removes it."""
    _, repo, (bad, good) = two_backups
    _damage(repo / "backups" / f"{bad}.json", [])
    refused = mobackup("delete", bad, "--repo", str(repo))
    assert refused.returncode == 1 and "--force" in refused.stderr
    deleted = mobackup("delete", bad, "--repo", str(repo), "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert [r["id"] for r in json.loads(mobackup("list", "--repo", str(repo), "--json").stdout)] == [good]
    assert mobackup("prune", "--repo", str(repo), "--keep-last", "1").returncode == 0
    assert mobackup("verify", good, "--repo", str(repo)).returncode == 0
