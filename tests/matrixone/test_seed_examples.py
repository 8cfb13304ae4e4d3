"""The seed document's two examples, literally, on the real MatrixOne (`mo-service`), through the
`mobackup` CLI: a cold copy of mo-data (MatrixOne stopped), restored into an emptied mo-data.

Example 1: db1 and db2 -> full backup -> drop db1, create db3 -> restore -> db1 and db2 are back with
their rows, db3 is gone. Example 2: the same with an incremental on top of the full, restoring the
incremental's ID. After every restore, new writes, a checkpoint and two restarts must keep all data:
that is where a restore that lost the WAL or the ID allocator would show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mo_server import (
    DEFAULT_VERSION,
    REPO,
    VERSIONS,
    Checksums,
    MatrixOne,
    checksums,
    create_db,
    insert_rows,
    user_databases,
)

MOBACKUP = REPO / ".venv" / "bin" / "mobackup"


def mobackup(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))}
    proc = subprocess.run([str(MOBACKUP), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, f"mobackup {' '.join(map(str, args))}: rc {proc.returncode}\n{proc.stderr}"
    return proc


def backup(mo: MatrixOne, repo: Path, *extra: str) -> dict[str, Any]:
    return json.loads(mobackup("backup", "--data-dir", mo.data_dir, "--repo", repo, "--source", "mo",
                               "--json", "--quiet", *extra).stdout)


def restore(mo: MatrixOne, repo: Path, backup_id: str, *extra: str) -> None:
    shutil.rmtree(mo.data_dir)
    mobackup("restore", backup_id, "--repo", repo, "--target", mo.data_dir, "--json", "--quiet", *extra)


def newest_checkpoint_end(data_dir: Path) -> str:
    """The end timestamp of the newest `ckp/meta_<start>_<end>.ckp`, as `physical-logical`."""
    ends = [m.group(1) for p in data_dir.glob("shared/ckp/meta_*_*.ckp")
            if (m := re.fullmatch(r"meta_[\d-]+_(\d+-\d+)\.ckp", p.name))]
    return max(ends, key=lambda ts: tuple(int(x) for x in ts.split("-")))


def assert_survives_writes_and_restarts(mo: MatrixOne, expected: Checksums) -> None:
    """New writes work after a restore, and everything survives a checkpoint and two restarts."""
    insert_rows(mo, "db2", 1_000_001, 50)
    mo.sql("create database db9", "create table db9.t (id bigint primary key, v varchar(64), n double)")
    insert_rows(mo, "db9", 1, 10)
    mo.checkpoint()
    after = checksums(mo, [*expected, "db9"])
    mo.restart()
    mo.restart()
    assert checksums(mo, [*expected, "db9"]) == after
    assert after["db2"][0] == expected["db2"][0] + 50


@pytest.mark.parametrize("version", VERSIONS)
def test_seed_example_1_full_backup_then_restore(
        version: str, matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    mo = matrixone_factory(version)
    repo = tmp_path / "repo"
    mo.start()
    create_db(mo, "db1", 2000)
    create_db(mo, "db2", 3000)
    mo.checkpoint()
    at_backup = checksums(mo, ["db1", "db2"])
    mo.stop()

    full = backup(mo, repo)
    assert full["type"] == "full"
    assert full["backup_ts"] == newest_checkpoint_end(mo.data_dir)

    mo.start()
    mo.sql("drop database db1")
    create_db(mo, "db3", 10)
    assert user_databases(mo) == {"db2", "db3"}
    mo.stop()

    restore(mo, repo, full["id"])
    mo.start()
    assert user_databases(mo) == {"db1", "db2"}
    assert checksums(mo, ["db1", "db2"]) == at_backup
    assert_survives_writes_and_restarts(mo, at_backup)


@pytest.mark.parametrize("version", VERSIONS)
def test_seed_example_2_incremental_backup_then_restore(
        version: str, matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    mo = matrixone_factory(version)
    repo = tmp_path / "repo"
    mo.start()
    create_db(mo, "db1", 2000)
    create_db(mo, "db2", 2000)
    mo.checkpoint()
    mo.stop()
    full = backup(mo, repo)

    mo.start()
    insert_rows(mo, "db1", 100_001, 1500)
    create_db(mo, "db4", 500)
    mo.checkpoint()
    at_incremental = checksums(mo, ["db1", "db2", "db4"])
    mo.stop()
    incremental = backup(mo, repo)
    assert incremental["type"] == "incremental" and incremental["base_id"] == full["id"]
    # Only what changed is stored: far less than the full backup's size.
    assert incremental["new_bytes"] < full["new_bytes"] / 2
    assert incremental["backup_ts"] == newest_checkpoint_end(mo.data_dir)
    assert incremental["backup_ts"] > full["backup_ts"]

    mo.start()
    mo.sql("drop database db1", "drop database db4")
    create_db(mo, "db3", 10)
    mo.stop()

    restore(mo, repo, incremental["id"])
    mo.start()
    assert user_databases(mo) == {"db1", "db2", "db4"}
    assert checksums(mo, ["db1", "db2", "db4"]) == at_incremental
    assert_survives_writes_and_restarts(mo, at_incremental)


def test_restore_under_another_hostname_is_refused_because_matrixone_cannot_start_on_it(
        matrixone_factory: Callable[..., MatrixOne], tmp_path: Path) -> None:
    """What the host-name guard prevents, shown on the real server: rows committed after the last
    checkpoint live only in the log service's WAL, which is kept under the host name. Restored
    under the same host name they are all there; under another one MatrixOne does not start at all
    (dragonboat: "shard not bootstrapped"). So `restore --hostname` refuses the mismatch up front."""
    repo = tmp_path / "repo"
    mo = matrixone_factory(DEFAULT_VERSION, hostname="mo-0")
    mo.start()
    create_db(mo, "db1", 1000)
    mo.checkpoint()
    insert_rows(mo, "db1", 5001, 234)  # after the checkpoint: only in the WAL
    mo.stop()
    taken = backup(mo, repo)

    refused = mobackup("restore", taken["id"], "--repo", repo, "--target", tmp_path / "other" / "mo-data",
                       "--hostname", "mo-1", check=False)
    assert refused.returncode == 1
    assert "mo-0" in refused.stderr and "mo-1" in refused.stderr
    assert not (tmp_path / "other" / "mo-data").exists() or not any((tmp_path / "other" / "mo-data").iterdir())

    restore(mo, repo, taken["id"], "--hostname", "mo-0")
    mo.start()
    assert checksums(mo, ["db1"])["db1"][0] == 1234
    mo.stop()

    # The same data under another host name (what the guard refuses): the server never answers.
    other = matrixone_factory(DEFAULT_VERSION, workdir=tmp_path / "other", hostname="mo-1")
    mobackup("restore", taken["id"], "--repo", repo, "--target", other.data_dir)
    with pytest.raises(RuntimeError, match="exited before SQL answered"):
        other.start(timeout=90)
    assert "shard not bootstrapped" in other.log_path.read_text(errors="replace")
