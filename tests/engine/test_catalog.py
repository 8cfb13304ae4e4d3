"""The catalog a cold backup with --sql-host records for restore drills (extra["catalog"]), against a
real MySQL-protocol server (MariaDB; MatrixOne itself: tests/matrixone/test_drill.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mobackup.engine.catalog import read_catalog
from mobackup.sample import generate_mo_data
from sqlserver import SqlServer

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))


def _seed(server: SqlServer) -> None:
    with server.connect() as root, root.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS drill_shop")
        cursor.execute("DROP DATABASE IF EXISTS `drill empty`")
        cursor.execute("CREATE DATABASE drill_shop")
        cursor.execute("CREATE TABLE drill_shop.orders (id INT PRIMARY KEY)")
        cursor.execute("INSERT INTO drill_shop.orders VALUES (1), (2), (3)")
        cursor.execute("CREATE TABLE drill_shop.`odd``name` (id INT)")
        cursor.execute("CREATE VIEW drill_shop.big AS SELECT id FROM drill_shop.orders WHERE id > 1")
        cursor.execute("CREATE DATABASE `drill empty`")
        for db in ("drill_shop", "drill empty"):
            cursor.execute(f"GRANT ALL ON `{db}`.* TO '{server.user}'@'%'")
        root.commit()


def test_cold_backup_with_sql_records_databases_tables_and_row_counts(mysql_server: SqlServer, tmp_path: Path) -> None:
    _seed(mysql_server)
    data = generate_mo_data(tmp_path / "mo-data", seed=1, objects=3)
    env = {**os.environ, "MOBACKUP_SQL_PASSWORD": mysql_server.password}
    result = subprocess.run(
        [MOBACKUP, "backup", "--data-dir", str(data), "--repo", str(tmp_path / "repo"), "--json", "--quiet",
         "--sql-host", mysql_server.host, "--sql-port", str(mysql_server.port), "--sql-user", mysql_server.user,
         "--sql-database", mysql_server.database],
        env=env, capture_output=True, text=True, check=True)
    catalog = json.loads(result.stdout)["extra"]["catalog"]
    # System databases (mo_catalog, information_schema, ...) are left out; an empty database is kept.
    assert catalog["databases"] == {
        "drill_shop": {"orders": {"type": "table", "rows": 3}, "odd`name": {"type": "table", "rows": 0},
                       "big": {"type": "view", "rows": None}},
        "drill empty": {},
    }
    assert catalog["rows_exact"] is False and catalog["truncated"] is False and catalog["counted_tables"] == 2
    assert mysql_server.password not in result.stdout + result.stderr
    # The catalog stays in the repository's summary (what `show` and a drill read).
    shown = subprocess.run([MOBACKUP, "show", json.loads(result.stdout)["id"], "--repo", str(tmp_path / "repo"),
                            "--json"], capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["extra"]["catalog"]["databases"] == catalog["databases"]


def test_catalog_limits_and_refusals_are_recorded_not_raised(mysql_server: SqlServer) -> None:
    _seed(mysql_server)
    connection = mysql_server.connect()
    truncated = read_catalog(connection, max_tables=1)
    assert truncated["truncated"] is True
    assert sum(len(t) for t in truncated["databases"].values()) == 1
    no_time = read_catalog(connection, count_budget=0)
    assert no_time["counted_tables"] == 0
    assert no_time["databases"]["drill_shop"]["orders"] == {"type": "table", "rows": None}
    connection.close()
    broken = read_catalog(connection)  # a connection that is gone: recorded, the backup goes on
    assert set(broken) == {"error", "taken_at"}
