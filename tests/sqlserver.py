"""A real MySQL-protocol server for the tests: MariaDB (Debian `mariadb-server`) in a temporary data
directory on a loopback port.

MatrixOne itself cannot be built here within a test budget, so its SQL control function is given to
MariaDB as a stored function `mo_catalog.mo_ctl(service, method, arg)` that answers as MatrixOne does
(`{"method":"Checkpoint","result":[{"returnStr":"OK"}]}`) and records each call in
`mo_catalog.ctl_calls`, so that a test can see what the backup asked for and in which order.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

MO_CTL = """
CREATE FUNCTION mo_ctl(service VARCHAR(16), method VARCHAR(64), arg TEXT) RETURNS TEXT
MODIFIES SQL DATA
BEGIN
  INSERT INTO ctl_calls (service, method, arg) VALUES (service, method, arg);
  IF LOWER(method) IN ('checkpoint', 'globalcheckpoint', 'flush') THEN
    RETURN CONCAT('{"method":"', method, '","result":[{"returnStr":"OK"}]}');
  END IF;
  RETURN CONCAT('{"method":"', method, '","result":[{"returnStr":"', (SELECT answer FROM ctl_answers LIMIT 1), '"}]}');
END
"""


@dataclass
class SqlServer:
    host: str
    port: int
    user: str
    password: str
    database: str = "mo_catalog"

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(host=self.host, port=self.port, user="root", password="", database=self.database,
                               unix_socket=None, autocommit=True)

    def calls(self) -> list[tuple[str, str]]:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT service, method FROM ctl_calls ORDER BY id")
            return [(str(a), str(b)) for a, b in cursor.fetchall()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[SqlServer]:
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = shutil.which("mariadb-install-db")
    if not Path(mariadbd).exists() or not install:
        pytest.fail("MariaDB is missing: install Debian's mariadb-server (tests/setup.sh does)")
    workdir = Path(tempfile.mkdtemp(prefix="mobackup-mariadb-"))
    data = workdir / "data"
    subprocess.run([install, "--no-defaults", f"--datadir={data}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], check=True, capture_output=True)
    port = _free_port()
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={workdir}/s",
                                f"--port={port}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin"],
                               stdout=log, stderr=subprocess.STDOUT)
    server = SqlServer("127.0.0.1", port, "dump", "dump-password-for-tests")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                root = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", autocommit=True)
                break
            except pymysql.MySQLError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MariaDB did not start: {(workdir / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        with root, root.cursor() as cursor:
            cursor.execute("CREATE DATABASE mo_catalog")
            cursor.execute("USE mo_catalog")
            cursor.execute("CREATE TABLE ctl_calls (id INT AUTO_INCREMENT PRIMARY KEY, service TEXT, method TEXT, "
                           "arg TEXT)")
            cursor.execute("CREATE TABLE ctl_answers (answer TEXT)")
            cursor.execute("INSERT INTO ctl_answers VALUES ('OK')")
            cursor.execute(MO_CTL)
            cursor.execute(f"CREATE USER '{server.user}'@'%' IDENTIFIED BY '{server.password}'")
            cursor.execute(f"GRANT ALL ON mo_catalog.* TO '{server.user}'@'%'")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
