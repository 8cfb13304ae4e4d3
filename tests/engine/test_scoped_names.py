"""Scoped restores without a server: the names a user gives, where each table goes, and the checks on
SHOW CREATE TABLE's text (it comes from the backup: a hostile one must not get a second statement,
a comment or a foreign key run on the live server). The copy itself runs on the real MatrixOne in
tests/matrixone/test_scoped_restore.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobackup.engine.drill import set_unix_socket
from mobackup.engine.errors import MobackupError
from mobackup.engine.scoped import (
    Selection,
    _check_in_backup,
    create_statement,
    ddl_body,
    parse_selection,
    target_for,
)
from mobackup.sample import generate_mo_data

MOBACKUP = str(Path(sys.executable).with_name("mobackup"))
DDL = ("CREATE TABLE `b` (\n  `region` varchar(16) NOT NULL,\n  `note` varchar(64) DEFAULT 'it''s; -- # /* x */' "
       "COMMENT 'a \\' quote; and `tick`',\n  `we``ird` json DEFAULT NULL,\n  PRIMARY KEY (`region`),\n"
       "  KEY `by_note` (`note`)\n) COMMENT='table; B'")


def test_the_table_s_own_ddl_is_rewritten_under_the_target_name_quoted() -> None:
    body = ddl_body(DDL, "b")
    assert create_statement(("new`db", "b_restored"), body) == "CREATE TABLE `new``db`.`b_restored` (" + DDL.split(
        " (", 1)[1]


@pytest.mark.parametrize("ddl, why", [
    (DDL.replace("`b`", "`other`", 1), "does not start with"),
    (DDL + "; drop database prod", "a statement separator"),
    (DDL.replace("COMMENT='table; B'", "COMMENT='x'; drop database prod"), "a statement separator"),
    (DDL + " /*!50000 drop database prod */", "a comment"),
    (DDL + " -- trailing", "a comment"),
    (DDL + " # trailing", "a comment"),
    (DDL.replace("KEY `by_note` (`note`)", "CONSTRAINT `f` FOREIGN KEY (`note`) REFERENCES `p` (`n`)"), "foreign key"),
    (DDL.replace("DEFAULT NULL", "DEFAULT (mo_ctl('dn', 'checkpoint', ''))"), "side effects"),
    (DDL.replace("DEFAULT NULL", "DEFAULT (SELECT 1)"), "a query"),
    (DDL + " COMMENT='never closed", "unterminated"),
    (DDL.replace("`we``ird`", "`we`ird`"), "unterminated"),
])
def test_hostile_or_unsupported_ddl_is_refused(ddl: str, why: str) -> None:
    with pytest.raises(MobackupError, match=why):
        ddl_body(ddl, "b")


@pytest.mark.parametrize("text, expected", [
    ("shop", Selection("shop")), ("shop.b", Selection("shop", "b")), ("shop.b.c", Selection("shop", "b.c")),
    ("we`ird.t ab", Selection("we`ird", "t ab")),
])
def test_selections(text: str, expected: Selection) -> None:
    assert parse_selection(text) == expected


@pytest.mark.parametrize("text, why", [
    ("", "not a valid name"), ("shop.", "not a valid name"), ("mo_catalog.mo_tables", "system database"),
    ("shop.__mo_index_secondary_x", "hidden tables"), ("sh\nop", "not a valid name"), ("x" * 65, "not a valid"),
    (" shop", "not a valid name"),
])
def test_bad_selections_are_refused(text: str, why: str) -> None:
    with pytest.raises(MobackupError, match=why):
        parse_selection(text)


def test_targets() -> None:
    stamp = "20260102030405"
    table, db = Selection("shop", "b"), Selection("shop")
    assert target_for(("shop", "b"), table, None, None, False, stamp) == ("shop", f"b_restored_{stamp}")
    assert target_for(("shop", "b"), db, None, "_old", False, stamp) == ("shop", "b_old")
    assert target_for(("shop", "b"), table, Selection("x", "y"), None, False, stamp) == ("x", "y")
    assert target_for(("shop", "b"), db, Selection("x"), None, False, stamp) == ("x", "b")
    assert target_for(("shop", "b"), db, Selection("x"), None, True, stamp) == ("x", "b")
    assert target_for(("shop", "b"), table, None, None, True, stamp) == ("shop", "b")
    with pytest.raises(MobackupError, match="not a valid name"):
        target_for(("shop", "b" * 60), table, None, None, False, stamp)


def test_the_scratch_socket_goes_into_the_cn_configuration(tmp_path: Path) -> None:
    launch = tmp_path / "etc" / "launch"
    launch.mkdir(parents=True)
    (launch / "launch.toml").write_text('cnservices = ["./etc/launch/cn.toml"]\n')
    for text in ('[cn]\nport-base = 18000\n', '[cn.frontend]\nport = 6001\n',
                 '[cn.frontend]\nunix-socket = "/tmp/mysql.sock" # shared\nport = 6001\n'):
        (launch / "cn.toml").write_text(text)
        set_unix_socket(tmp_path, tmp_path / "s.sock")
        import tomllib

        config = tomllib.loads((launch / "cn.toml").read_text())
        assert config["cn"]["frontend"]["unix-socket"] == str(tmp_path / "s.sock")
        assert config["cn"].get("port-base", 18000) == 18000
    (launch / "launch.toml").write_text('cnservices = ["../../../outside.toml"]\n')
    with pytest.raises(MobackupError, match="outside etc"):
        set_unix_socket(tmp_path, tmp_path / "s.sock")


def test_the_cli_asks_for_what_a_scoped_restore_needs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data = generate_mo_data(tmp_path / "mo-data", seed=3, objects=2)
    backup = subprocess.run([MOBACKUP, "backup", "--data-dir", str(data), "--repo", str(repo), "--json", "--quiet"],
                            capture_output=True, text=True, check=True)
    backup_id = json.loads(backup.stdout)["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBACKUP_")}
    for args, why in (
        (["--only", "shop.b"], "needs --only DB[.TABLE], --into-sql-host and --mo-service"),
        (["--only", "shop.b", "--into-sql-host", "127.0.0.1", "--mo-service", "/bin/true", "--target", str(tmp_path)],
         "--target, --target-s3, --force and --hostname do not apply"),
        (["--only", "mysql.user", "--into-sql-host", "127.0.0.1", "--mo-service", "/bin/true"], "system database"),
        (["--only", "a", "--only", "b", "--as", "c", "--into-sql-host", "127.0.0.1", "--mo-service", "/bin/true"],
         "--as names one target"),
        (["--only", "a", "--as", "c", "--suffix", "_x", "--into-sql-host", "127.0.0.1", "--mo-service", "/bin/true"],
         "exclude each other"),
    ):
        proc = subprocess.run([MOBACKUP, "restore", backup_id, "--repo", str(repo), *args], capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 1 and why in proc.stderr, (args, proc.stderr)


def test_selections_are_matched_as_the_backup_spells_them() -> None:
    tables = {("shop", "orders"), ("shop", "Mixed"), ("shop", "mixed"), ("crm", "t")}
    databases = {"shop", "crm", "empty"}
    got = _check_in_backup([Selection("SHOP", "Orders"), Selection("Crm"), Selection("shop", "Mixed")], tables,
                           databases, "id")
    assert got == [Selection("shop", "orders"), Selection("crm"), Selection("shop", "Mixed")]
    with pytest.raises(MobackupError, match=r"no table shop.MIXED; database shop has: shop.Mixed, shop.mixed"):
        _check_in_backup([Selection("shop", "MIXED")], tables, databases, "id")  # two candidates: none chosen
    with pytest.raises(MobackupError, match="no database 'nope'; it has: crm, empty, shop"):
        _check_in_backup([Selection("nope")], tables, databases, "id")
