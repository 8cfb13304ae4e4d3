"""The SQL step before a backup, against a real MySQL-protocol server (see tests/sqlserver.py for
what stands in for MatrixOne's `mo_ctl`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobackup.engine.errors import MobackupError
from mobackup.engine.mosql import SqlEndpoint, prepare_backup
from mobackup.sample import generate_mo_data
from sqlserver import SqlServer

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def test_backup_forces_a_checkpoint_and_records_the_version(mysql_server: SqlServer, tmp_path: Path) -> None:
    data = generate_mo_data(tmp_path / "mo-data", seed=1, objects=5)
    before = len(mysql_server.calls())
    env = {**os.environ, "MOBACKUP_SQL_PASSWORD": mysql_server.password}
    result = subprocess.run(
        [MOBACKUP, "backup", "--data-dir", str(data), "--repo", str(tmp_path / "repo"), "--json",
         "--sql-host", mysql_server.host, "--sql-port", str(mysql_server.port), "--sql-user", mysql_server.user,
         "--sql-database", mysql_server.database],
        env=env, capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout)
    assert "MariaDB" in summary["mo_version"]
    assert mysql_server.calls()[before:] == [("dn", "checkpoint")]
    assert mysql_server.password not in result.stdout + result.stderr


def test_refusals_and_bad_credentials_are_clear(mysql_server: SqlServer) -> None:
    endpoint = SqlEndpoint(mysql_server.host, mysql_server.port, mysql_server.user, "not-the-password",
                           mysql_server.database)
    with pytest.raises(MobackupError, match="cannot connect to MatrixOne") as caught:
        prepare_backup(endpoint)
    assert "not-the-password" not in str(caught.value) and "not-the-password" not in repr(endpoint)
    good = SqlEndpoint(mysql_server.host, mysql_server.port, mysql_server.user, mysql_server.password,
                       mysql_server.database)
    assert prepare_backup(good)
