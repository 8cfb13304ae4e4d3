"""Encryption keys: a downgrade of an encrypted repository to plaintext is refused, an empty key is
never taken for "no encryption", and an explicit key file wins over the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobackup.sample import generate_mo_data

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def mobackup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}
    return subprocess.run([MOBACKUP, *args], capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp.")}


def test_config_edited_to_plaintext_is_refused_with_the_key(tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=6, objects=5)
    repo = tmp_path / "repo"
    key = {"MOBACKUP_ENCRYPTION_KEY": "correct horse"}
    assert mobackup("backup", "--data-dir", str(data), "--repo", str(repo), env=key).returncode == 0
    config = json.loads((repo / "mobackup.json").read_text())
    config["encryption"] = None  # the attacker's edit: the next backup would store plaintext
    (repo / "mobackup.json").write_text(json.dumps(config))
    before = _files(repo)
    (data / "shared" / "new-object").write_bytes(b"secret table data" * 1000)
    refused = mobackup("backup", "--data-dir", str(data), "--repo", str(repo), env=key)
    assert refused.returncode == 1 and "not encrypted" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _files(repo) == before  # not one blob written
    assert all(b"secret table data" not in (repo / f).read_bytes() for f in before)


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_key_file_is_refused_at_init(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)
    result = mobackup("init", "--repo", str(tmp_path / "repo"), "--encryption-key-file", str(key_file))
    assert result.returncode == 1 and "is empty" in result.stderr
    assert not (tmp_path / "repo" / "mobackup.json").exists()


def test_white_space_key_in_the_environment_is_refused(tmp_path: Path) -> None:
    result = mobackup("init", "--repo", str(tmp_path / "repo"), env={"MOBACKUP_ENCRYPTION_KEY": "   "})
    assert result.returncode == 1 and "white space" in result.stderr
    assert not (tmp_path / "repo" / "mobackup.json").exists()


def test_explicit_key_file_wins_over_the_environment(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    key_file = tmp_path / "key"
    key_file.write_text("from the file\n")
    created = mobackup("init", "--repo", repo, "--encryption-key-file", str(key_file),
                       env={"MOBACKUP_ENCRYPTION_KEY": "from the env"})
    assert created.returncode == 0, created.stderr
    assert mobackup("list", "--repo", repo, env={"MOBACKUP_ENCRYPTION_KEY": "from the file"}).returncode == 0
    wrong = mobackup("list", "--repo", repo, env={"MOBACKUP_ENCRYPTION_KEY": "from the env"})
    assert wrong.returncode == 1 and "wrong encryption key" in wrong.stderr
    listed = mobackup("list", "--repo", repo, "--encryption-key-file", str(key_file),
                      env={"MOBACKUP_ENCRYPTION_KEY": "from the env"})
    assert listed.returncode == 0, listed.stderr
