"""S3 going away under a running command (issue 11, faults): the error says the storage is
unreachable and names the endpoint (StorageUnreachableError), and is not replaced by the failure
to release the repository lock on the same dead endpoint; a restore leaves the target as it was."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cluster import procs
from cluster.s3 import start_s3
from mobackup.engine.backup import run_backup
from mobackup.engine.errors import MobackupError, StorageUnreachableError
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.engine.restore import run_restore
from mobackup.sample import generate_mo_data, snapshot_tree


def test_restore_with_s3_gone_says_unreachable_and_leaves_the_target(tmp_path: Path) -> None:
    server = start_s3(tmp_path / "s3", bucket="gone")
    try:
        options = RepositoryOptions(url=f"s3://{server.bucket}/r", s3_endpoint=server.endpoint,
                                    s3_region=server.region, s3_path_style=True,
                                    s3_access_key_id=server.access_key, s3_secret_access_key=server.secret_key)
        repo = open_repository(options, create=True)
        data = generate_mo_data(tmp_path / "mo-data", seed=7, objects=10)
        summary = run_backup(repo, data, source="db")
        target = tmp_path / "target"
        generate_mo_data(target, seed=8, objects=3)
        before = snapshot_tree(target, include_transient=True)
        os.kill(server.pid, signal.SIGKILL)
        while procs.pid_alive(server.pid):
            time.sleep(0.05)
        with pytest.raises(StorageUnreachableError) as err:
            run_restore(repo, summary.id, target, force=True)
        message = str(err.value)
        assert server.endpoint.split("//")[1] in message, message
        assert "delete" not in message, f"the lock release replaced the real error: {message}"
        assert snapshot_tree(target, include_transient=True) == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mobackup-")) == []
    finally:
        server.stop()


def test_lock_release_failure_does_not_hide_the_error(tmp_path: Path) -> None:
    repo = open_repository(RepositoryOptions(url=str(tmp_path / "repo")), create=True)

    def dead_delete(keys: object) -> int:
        raise MobackupError("cannot delete the lock")

    repo.backend.delete = dead_delete  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="the real error"), repo.lock(exclusive=False, purpose="restore"):
        raise ValueError("the real error")
    with pytest.raises(MobackupError, match="cannot delete the lock"), repo.lock(exclusive=False, purpose="x"):
        pass  # without another error, a failed release is still reported
