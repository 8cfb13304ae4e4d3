"""Fixtures of the engine tests: repositories on both backends (a directory, and the real S3 server (SeaweedFS)
server that `cluster.fixtures.s3_server` builds and starts), and sample MatrixOne data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mobackup.engine.backup import run_backup
from mobackup.engine.repository import Repository, RepositoryOptions, open_repository
from mobackup.sample import generate_mo_data

RepoFactory = Callable[..., Repository]


@pytest.fixture(params=["dir", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def repo_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh repository location; for S3 a new prefix in the test bucket, credentials in the env."""
    if backend == "dir":
        yield str(tmp_path / "repo")
        return
    server = request.getfixturevalue("s3_server")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_REGION", server.region)
    monkeypatch.setenv("MOBACKUP_S3_PATH_STYLE", "true")
    yield f"s3://{server.bucket}/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_repo(repo_url: str) -> RepoFactory:
    def make(**overrides: object) -> Repository:
        options = RepositoryOptions.from_env(repo_url, **overrides)
        return open_repository(options, create=True)

    return make


@pytest.fixture
def mo_data(tmp_path: Path) -> Path:
    return generate_mo_data(tmp_path / "mo-data", seed=int(os.environ.get("MOBACKUP_TEST_SEED", "11")))


def small_backup(tmp_path: Path, **options: object) -> tuple[Repository, str]:
    """A directory repository holding one backup of a three-entry tree (`d/`, `d/f`, `top`)."""
    data = tmp_path / "mo-data"
    (data / "d").mkdir(parents=True)
    (data / "d" / "f").write_bytes(b"f" * 5000)
    (data / "top").write_bytes(os.urandom(3000))
    repo = open_repository(RepositoryOptions.from_env(str(tmp_path / "repo"), **options), create=True)
    return repo, run_backup(repo, data, source="db").id


@pytest.fixture
def plain(tmp_path: Path) -> tuple[Repository, str]:
    """small_backup in a plain repository, whose file lists anyone with write access can rewrite."""
    return small_backup(tmp_path)
