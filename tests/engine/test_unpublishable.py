"""A backup is published only if a restore would accept its file list (issue 18, item 6): the writer
runs restore's own checks first. Before, a list with a path twice, or with chunk lists that do not
fit the repository's chunk size, was published as a success, failed verify, and every later
incremental took it as its base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fake_matrixone import FakeMatrixOne

from mobackup.engine.backup import run_backup
from mobackup.engine.errors import MobackupError
from mobackup.engine.online import run_online_backup
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository


def _repo(tmp_path: Path) -> Repository:
    return open_repository(RepositoryOptions.from_env(str(tmp_path / "repo")), create=True)


def test_a_path_both_staged_and_taken_from_the_base_is_not_published(tmp_path: Path) -> None:
    """MatrixOne lists an object as not to copy (the incremental takes it from its base) yet stages it
    too: the tree's file and the base's record made the same path twice."""
    repo = _repo(tmp_path)
    data = tmp_path / "mo-data"
    data.mkdir()
    objects = {"a": b"a" * 3000, "ckp/meta": b"m" * 100}
    full = run_online_backup(repo, data, FakeMatrixOne(objects), source="mo")
    matrixone = FakeMatrixOne({**objects, "b": b"b" * 10}, reused=frozenset(objects), stage_reused=True)
    with pytest.raises(MobackupError, match=r"same path \(listed twice\).*not published"):
        run_online_backup(repo, data, matrixone, source="mo")
    assert [s.id for s in repo.list_backups()] == [full.id]
    assert not list(data.iterdir()), "the staging directory stays behind"


def test_a_changed_chunk_size_under_an_incremental_is_not_published(tmp_path: Path) -> None:
    """`chunk_size` edited in mobackup.json: the unchanged files' chunks, reused from the base, no
    longer fit it, and the incremental could never be restored."""
    repo = _repo(tmp_path)
    data = tmp_path / "mo-data"
    data.mkdir()
    (data / "unchanged").write_bytes(os.urandom(10_000))
    full = run_backup(repo, data, source="db")
    config_path = Path(repo.location) / "mobackup.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chunk_size": 4096}))
    repo = open_repository(RepositoryOptions.from_env(repo.location))
    (data / "new").write_bytes(b"n")
    with pytest.raises(MobackupError, match=r"'unchanged'.*1 chunks for 10000 bytes.*not published"):
        run_backup(repo, data, source="db")
    assert [s.id for s in repo.list_backups()] == [full.id]

