"""A server chosen by whoever wrote a flag or a custom resource never gets the SQL password.

The hostile server here is the adversary itself, not a stand-in for a dependency: a few lines of the
MySQL handshake that ask the client for the password the ways pymysql would answer (an auth switch to
`mysql_clear_password` or `dialog`, `caching_sha2_password` full authentication with the server's own
RSA key, `sha256_password`). The real MariaDB checks that challenge-response logins still work.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pymysql
import pytest

from mobackup.engine import sqlconn

PASSWORD = "s3cr3t-do-not-send"
# CLIENT_PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | PLUGIN_AUTH_LENENC_CLIENT_DATA | LONG_PASSWORD
CAPABILITIES = 0x200 | 0x8000 | 0x80000 | 0x200000 | 0x1
SALT = b"abcdefghijklmnopqrst"
OK = b"\x00\x00\x00\x02\x00\x00\x00"


def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def _read_packet(conn: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 4:
        chunk = conn.recv(4 - len(header))
        if not chunk:
            raise EOFError
        header += chunk
    length = int.from_bytes(header[:3], "little")
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return header[3], body


def _handshake(plugin: bytes) -> bytes:
    return (b"\x0a" + b"8.0.30-hostile\0" + struct.pack("<I", 1) + SALT[:8] + b"\0"
            + struct.pack("<H", CAPABILITIES & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
            + struct.pack("<H", CAPABILITIES >> 16) + bytes([21]) + b"\0" * 10 + SALT[8:] + b"\0"
            + plugin + b"\0")


class OneClientServer:
    """A loopback port that serves one client with `_serve` in a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        raise NotImplementedError


class HostileServer(OneClientServer):
    """Accepts one login, sends `plugin`'s handshake, then `after(seq)` packets, and records every
    packet the client sent until it hangs up."""

    def __init__(self, plugin: bytes, after: Callable[[int], list[bytes]], answer_ok: bool = False) -> None:
        self.packets: list[bytes] = []
        self.plugin, self.after, self.answer_ok = plugin, after, answer_ok
        super().__init__()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            conn.sendall(_packet(0, _handshake(self.plugin)))
            seq, body = _read_packet(conn)
            self.packets.append(body)
            for payload in self.after(seq + 1):
                conn.sendall(payload)
            try:
                while True:
                    seq, body = _read_packet(conn)
                    self.packets.append(body)
                    if self.answer_ok:  # to the session's first statements
                        conn.sendall(_packet(seq + 1, OK))
            except (EOFError, OSError):
                pass

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


def _switch_to(plugin: bytes) -> Callable[[int], list[bytes]]:
    return lambda seq: [_packet(seq, b"\xfe" + plugin + b"\0" + SALT + b"\0")]


CASES = {
    "clear text by auth switch": (b"mysql_native_password", _switch_to(b"mysql_clear_password")),
    "PAM dialog by auth switch": (b"mysql_native_password", _switch_to(b"dialog")),
    "sha256_password by auth switch": (b"mysql_native_password", _switch_to(b"sha256_password")),
    "caching_sha2 full authentication": (b"caching_sha2_password", lambda seq: [_packet(seq, b"\x01\x04")]),
    "caching_sha2 switch, then full authentication": (
        b"mysql_native_password",
        lambda seq: [_packet(seq, b"\xfe" + b"caching_sha2_password\0" + SALT + b"\0"),
                     _packet(seq + 2, b"\x01\x04")]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_server_never_gets_the_password(case: str) -> None:
    plugin, after = CASES[case]
    server = HostileServer(plugin, after)
    try:
        with pytest.raises(pymysql.err.OperationalError, match="without TLS: refusing to send it"):
            sqlconn.connect("127.0.0.1", server.port, "root", PASSWORD, connect_timeout=5, read_timeout=5)
    finally:
        server.close()
    assert not any(PASSWORD.encode() in packet for packet in server.packets)
    # Nor the step before an RSA-encrypted password: asking the server for its public key.
    assert b"\x02" not in server.packets


def test_every_connection_of_the_engine_goes_through_the_guard() -> None:
    """No module but sqlconn calls pymysql.connect: a new one would skip the guard."""
    from pathlib import Path

    import mobackup

    root = Path(mobackup.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "pymysql.connect(" in p.read_text())
    assert callers == ["engine/sqlconn.py"], callers


def test_pymysql_alone_would_send_it() -> None:
    """The hostile server works: without the guard, pymysql sends the clear-text password."""
    plugin, after = CASES["clear text by auth switch"]
    server = HostileServer(plugin, after)
    try:
        with pytest.raises(pymysql.err.MySQLError):
            pymysql.connect(host="127.0.0.1", port=server.port, user="root", password=PASSWORD,
                            connect_timeout=5, read_timeout=2)
    finally:
        server.close()
    assert any(PASSWORD.encode() in packet for packet in server.packets)


def test_the_caching_sha2_fast_path_still_works() -> None:
    """Fast authentication is a scramble; only the full one would need the password."""
    server = HostileServer(b"caching_sha2_password",
                           lambda seq: [_packet(seq, b"\x01\x03"), _packet(seq + 1, OK)], answer_ok=True)
    try:
        connection = sqlconn.connect("127.0.0.1", server.port, "root", PASSWORD, connect_timeout=5, read_timeout=5)
        connection.close()
    finally:
        server.close()
    assert not any(PASSWORD.encode() in packet for packet in server.packets)


def test_challenge_response_logins_still_work(mysql_server) -> None:
    """The real MariaDB: mysql_native_password (what MatrixOne uses) passes the guard, in both the
    right and the wrong password."""
    with mysql_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute("CREATE USER IF NOT EXISTS 'guarded'@'%' IDENTIFIED VIA mysql_native_password "
                       "USING PASSWORD('pw-1')")
        cursor.execute("GRANT SELECT ON *.* TO 'guarded'@'%'")
    connection = sqlconn.connect(mysql_server.host, mysql_server.port, "guarded", "pw-1", connect_timeout=5)
    with connection, connection.cursor() as cursor:
        cursor.execute("select current_user()")
        assert str(cursor.fetchone()[0]).startswith("guarded@")
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        sqlconn.connect(mysql_server.host, mysql_server.port, "guarded", "wrong", connect_timeout=5)


# ------------------------------------------------------------------------------- LOAD DATA LOCAL


class FileAskingServer(OneClientServer):
    """Accepts one login, then answers the client's first statement with a LOAD DATA LOCAL request for
    `asked` (what a hostile server may name: any file of the client), records what the client sends
    for it until its empty packet, and answers OK."""

    def __init__(self, asked: str) -> None:
        self.asked = asked.encode()
        self.data: list[bytes] = []
        super().__init__()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            conn.sendall(_packet(0, _handshake(b"mysql_native_password")))
            seq, _ = _read_packet(conn)
            conn.sendall(_packet(seq + 1, OK))
            while True:  # the session's first statements (SET NAMES, SET AUTOCOMMIT), then the LOAD
                seq, body = _read_packet(conn)
                if b"load data" in body.lower():
                    break
                conn.sendall(_packet(seq + 1, OK))
            conn.sendall(_packet(1, b"\xfb" + self.asked))
            while True:
                seq, body = _read_packet(conn)
                if not body:
                    break
                self.data.append(body)
            conn.sendall(_packet(seq + 1, OK))

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


def _load(server: FileAskingServer, arm: tuple[str, list[bytes]] | None) -> None:
    connection = sqlconn.connect_streaming("127.0.0.1", server.port, "root", PASSWORD, connect_timeout=5,
                                           read_timeout=5)
    try:
        if arm is not None:
            connection.stream(*arm)
        with connection.cursor() as cursor:
            cursor.execute("load data local infile 'mobackup-scoped-stream' into table t")
    finally:
        connection.close()
        server.close()


@pytest.mark.parametrize("armed", [False, True])
def test_a_hostile_server_gets_no_file_by_load_data_local(armed: bool, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"do-not-send")
    server = FileAskingServer(str(secret))
    with pytest.raises(pymysql.err.OperationalError, match="which mobackup did not offer"):
        _load(server, ("mobackup-scoped-stream", [b"1,2\n"]) if armed else None)
    assert server.data == []  # neither the file nor the batch armed for another name


def test_load_data_local_sends_exactly_the_armed_batch() -> None:
    server = FileAskingServer("mobackup-scoped-stream")
    _load(server, ("mobackup-scoped-stream", [b"1,", b"2\n", b"3,4\n"]))
    assert b"".join(server.data) == b"1,2\n3,4\n"


def test_pymysql_alone_would_send_the_file(tmp_path) -> None:
    """The hostile server works: pymysql with local_infile sends whatever file it is asked for."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"do-not-send")
    server = FileAskingServer(str(secret))
    connection = pymysql.connect(host="127.0.0.1", port=server.port, user="root", password=PASSWORD,
                                 local_infile=True, connect_timeout=5, read_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("load data local infile 'x' into table t")
    finally:
        connection.close()
        server.close()
    assert b"".join(server.data) == b"do-not-send"
