"""Talking to MatrixOne over SQL before a backup: force a checkpoint, read the version."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import sqlconn
from .errors import MobackupError, mask_secret
from .sqlconn import pymysql


@dataclass(frozen=True)
class SqlEndpoint:
    host: str
    port: int
    user: str
    password: str  # from the environment or a Secret, never the command line
    database: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_env(cls, host: str, port: int, user: str, database: str | None = None) -> SqlEndpoint:
        return cls(host, port, user, os.environ.get("MOBACKUP_SQL_PASSWORD", ""), database)

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"SqlEndpoint({self.user}@{self.host}:{self.port})"


def _mo_ctl_ok(raw: object) -> bool:
    """mo_ctl answers JSON such as {"method":"Checkpoint","result":[{"returnStr":"OK"}]}."""
    try:
        doc = json.loads(str(raw))
        return any(item.get("returnStr") == "OK" for item in doc.get("result", []))
    except (ValueError, AttributeError, TypeError):
        return False


def connect(endpoint: SqlEndpoint) -> pymysql.connections.Connection:
    """An autocommit session; MobackupError with the server's reason when it cannot be had."""
    try:
        return sqlconn.connect(endpoint.host, endpoint.port, endpoint.user, endpoint.password,
                               database=endpoint.database, connect_timeout=endpoint.timeout,
                               read_timeout=endpoint.timeout, autocommit=True)  # control calls, no transaction
    except pymysql.MySQLError as error:
        raise MobackupError(f"cannot connect to MatrixOne at {endpoint.host}:{endpoint.port}: "
                            f"{error.args[-1]}") from None


def prepare_backup(endpoint: SqlEndpoint) -> str:
    """Force a checkpoint (so the newest `ckp/meta_*` covers all committed data) and return the server
    version. Raises MobackupError with the server's reason when it refuses."""
    connection = connect(endpoint)
    try:
        with connection.cursor() as cursor:
            cursor.execute("select version()")
            version = str(cursor.fetchone()[0])
            cursor.execute("select mo_ctl('dn', 'checkpoint', '')")
            answer = cursor.fetchone()[0]
            if not _mo_ctl_ok(answer):
                raise MobackupError(f"MatrixOne refused the checkpoint: {answer}")
            return version
    except pymysql.MySQLError as error:
        raise MobackupError(f"MatrixOne at {endpoint.host}:{endpoint.port}: {error.args[-1]}") from None
    finally:
        connection.close()


class MatrixOneSession:
    """One SQL session with a running MatrixOne for an online backup (the sys account's BACKUP)."""

    def __init__(self, endpoint: SqlEndpoint) -> None:
        self.endpoint = endpoint
        self.where = f"{endpoint.host}:{endpoint.port}"
        try:
            self.connection = sqlconn.connect(
                endpoint.host, endpoint.port, endpoint.user, endpoint.password,
                connect_timeout=endpoint.timeout, read_timeout=None, autocommit=True)
        except pymysql.MySQLError as error:
            raise MobackupError(f"cannot connect to MatrixOne at {self.where}: {error.args[-1]}") from None
        self.version = str(self.query("select version()"))
        try:
            account = str(self.query("select current_account_name()"))
        except MobackupError as error:
            self.close()
            raise MobackupError(f"the server at {self.where} ({self.version}) does not support online backups "
                                f"(MatrixOne's BACKUP statement): {error}") from None
        if account != "sys":
            self.close()
            raise MobackupError(f"MatrixOne's BACKUP needs the sys account; user {endpoint.user!r} is in account "
                                f"{account!r} (use root or dump, or another sys user)")

    def query(self, statement: str) -> object:
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(statement)
                row = cursor.fetchone()
                return row[0] if row else None
        except pymysql.MySQLError as error:
            raise MobackupError(f"MatrixOne at {self.where}: {error.args[-1]}") from None

    def backup_to_directory(self, path: str, parallelism: int, since_ts: str | None = None) -> None:
        """`BACKUP ... FILESYSTEM` into `path` (as the server sees it); incremental from `since_ts`."""
        if "'" in path or "\\" in path:
            raise MobackupError(f"refusing a staging path with quotes or backslashes: {path!r}")
        self.run_backup(f"filesystem '{path}' parallelism '{int(parallelism)}'", since_ts, path)

    def run_backup(self, target: str, since_ts: str | None, where_to: str, secret: str | None = None) -> None:
        """`BACKUP '0' <target>` (FILESYSTEM or S3OPTION), incremental from `since_ts`. `secret` (in an
        S3OPTION) is masked in any error; the statement itself is never logged."""
        statement = f"backup '0' {target}"
        if since_ts is not None:
            physical, _, logical = since_ts.partition("-")
            if not (physical.isdigit() and logical.isdigit()):  # a malformed TIMESTAMP crashes the statement
                raise MobackupError(f"base BACKUPTS {since_ts!r} is not physical-logical")
            statement += f" type 'incremental' timestamp '{since_ts}'"
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(statement)
        except pymysql.MySQLError as error:
            reason = mask_secret(str(error.args[-1]), secret)
            if error.args and error.args[0] == 1064:  # syntax error: a server without BACKUP
                reason = f"this server ({self.version}) does not support the BACKUP statement: {reason}"
            raise MobackupError(f"MatrixOne at {self.where} refused BACKUP into {where_to}: {reason}") from None

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> MatrixOneSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
