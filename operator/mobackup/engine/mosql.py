"""Talking to MatrixOne over SQL: force a checkpoint, read the version, run BACKUP and tell its
transient failures apart."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import sqlconn
from .errors import MobackupError, mask_secret
from .sqlconn import pymysql

# BACKUP failures that a new statement into a fresh target may not repeat. MatrixOne v1.3 panics
# (pkg/backup/tae.go, execBackup) whenever its TN cannot take the backup checkpoint, as when another
# checkpoint or a flush is still running: the TN then answers "Failed" for its list of checkpoints,
# which BACKUP indexes past. A panic leaves part of a copy behind (config/), so a retry needs a
# fresh target. Later versions pass the TN's own reason on, which is the second.
TRANSIENT_BACKUP_REASONS = ("internal error: panic", "prev checkpoint not finished")
# Seconds to wait before the 2nd and the 3rd attempt (a checkpoint ends in seconds).
BACKUP_RETRY_PAUSES = (2.0, 5.0)


class TransientBackupError(MobackupError):
    """MatrixOne's BACKUP failed in one of the ways a later statement may not (TRANSIENT_BACKUP_REASONS)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = next((line.strip() for line in reason.splitlines() if line.strip()), "no reason given")[:300]


Attempt = TypeVar("Attempt")


def with_backup_retries(attempt: Callable[[list[str]], Attempt]) -> Attempt:
    """`attempt(failures so far)`, run again after each TransientBackupError (its target removed by
    the attempt itself, as it unwinds), after the pauses of BACKUP_RETRY_PAUSES; once they are spent,
    the failure is raised as a MobackupError that counts the attempts."""
    failures: list[str] = []
    while True:
        try:
            return attempt(failures)
        except TransientBackupError as failure:
            failures.append(failure.reason)
            if len(failures) > len(BACKUP_RETRY_PAUSES):
                raise MobackupError(f"{failure} (MatrixOne's BACKUP failed in a way that may pass on its own "
                                    f"{len(failures)} times in a row; giving up)") from None
            time.sleep(BACKUP_RETRY_PAUSES[len(failures) - 1])


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
            message = f"MatrixOne at {self.where} refused BACKUP into {where_to}: {reason}"
            if any(known in reason for known in TRANSIENT_BACKUP_REASONS):
                raise TransientBackupError(message, reason) from None
            raise MobackupError(message) from None

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> MatrixOneSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
