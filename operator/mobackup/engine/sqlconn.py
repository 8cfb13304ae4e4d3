"""One way to open a MySQL-protocol connection: pymysql, minus every path that hands the password over.

The host of a connection is often chosen by whoever wrote a custom resource or a flag, so the server
at the other end may be hostile. Over a connection without TLS it can ask, by an auth switch or
"extra auth data", for:

- `mysql_clear_password` and `dialog`: the password itself;
- `sha256_password`, and `caching_sha2_password` full authentication: the password encrypted with a
  public key that the server itself supplies, i.e. the password again.

pymysql answers all of these. The handlers below refuse them unless the connection is TLS, and keep
the challenge-response methods (`mysql_native_password`, the `caching_sha2_password` fast path),
which never put the password on the wire. MatrixOne authenticates with `mysql_native_password`.
"""

from __future__ import annotations

import sys
from typing import Any


def _import_pymysql_without_rsa() -> Any:
    """pymysql, imported with `cryptography` out of its reach (~60 ms of every command's start-up).
    pymysql uses it for one thing only: encrypting the password with the server's RSA key for
    sha256_password and caching_sha2_password full authentication without TLS, which the handlers
    below refuse anyway (with TLS the password goes over TLS, no RSA). The repository's encryption
    imports cryptography where it needs it, unaffected. A pymysql imported before is taken as it is."""
    if "pymysql" in sys.modules:
        import pymysql

        return pymysql

    class _NoCryptography:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> None:
            if name == "cryptography" or name.startswith("cryptography."):
                raise ImportError(f"{name}: not for pymysql (engine/sqlconn.py)")

    hook = _NoCryptography()
    sys.meta_path.insert(0, hook)  # type: ignore[arg-type]
    try:
        import pymysql
        import pymysql.connections
    finally:
        sys.meta_path.remove(hook)  # type: ignore[arg-type]
    return pymysql


pymysql = _import_pymysql_without_rsa()
from pymysql import _auth  # noqa: E402  (the reference implementations, called when TLS makes them safe)

FAST_AUTH_OK = 3  # caching_sha2_password: "fast auth succeeded" (4 asks for the full password)


def _refusal(plugin: str) -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(
        2059, f"the server asked for the password by {plugin!r} over a connection without TLS: refusing "
              "to send it (mobackup only answers challenge-response authentication without TLS)")


class _Guard:
    plugin = ""

    def __init__(self, connection: Any) -> None:
        self.connection = connection


class _ClearText(_Guard):
    plugin = "mysql_clear_password"

    def authenticate(self, packet: Any) -> Any:
        if not self.connection._secure:
            raise _refusal(self.plugin)
        return _auth._roundtrip(self.connection, self.connection.password + b"\0")


class _Dialog(_Guard):
    plugin = "dialog"

    def authenticate(self, packet: Any) -> Any:
        raise _refusal(self.plugin)  # PAM prompts; nothing of ours answers them


class _Sha256(_Guard):
    plugin = "sha256_password"

    def authenticate(self, packet: Any) -> Any:
        if not self.connection._secure:
            raise _refusal(self.plugin)
        return _auth.sha256_password_auth(self.connection, packet)


class _CachingSha2(_Guard):
    plugin = "caching_sha2_password"

    def authenticate(self, packet: Any) -> Any:
        conn = self.connection
        if conn._secure or not conn.password:
            return _auth.caching_sha2_password_auth(conn, packet)
        if packet.is_auth_switch_request():  # the fast path's scramble, as pymysql sends it
            conn.salt = packet.read_all().removesuffix(b"\0")
            packet = _auth._roundtrip(conn, _auth.scramble_caching_sha2(conn.password, conn.salt))
        if packet.is_extra_auth_data() and packet.get_bytes(1) == bytes([FAST_AUTH_OK]):
            ok = conn._read_packet()
            ok.check_error()
            return ok
        raise _refusal("caching_sha2_password full authentication")


AUTH_PLUGINS: dict[str, type] = {g.plugin: g for g in (_ClearText, _Dialog, _Sha256, _CachingSha2)}


def connect(host: str, port: int, user: str, password: str, **options: Any) -> Any:
    """pymysql.connect with the guarded authentication (module docstring); `options` as pymysql's."""
    return pymysql.connect(host=host, port=port, user=user, password=password, auth_plugin_map=AUTH_PLUGINS,
                           **options)


# ---------------------------------------------------------------------------------- LOAD DATA LOCAL
#
# With LOAD DATA LOCAL the server names the file the client must send, and pymysql (local_infile=True)
# opens whatever name it is given: a hostile server could ask for any file the client can read. A
# StreamingConnection never opens a file. Its owner arms it with a name and a source of bytes for one
# statement (`stream`); the server's request must name exactly that, and gets only those bytes. Any
# other request, or one while nothing is armed, is answered with no data and fails the statement.


class _GuardedResult(pymysql.connections.MySQLResult):  # type: ignore[misc]
    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn = self.connection
        asked = pymysql.connections.LoadLocalPacketWrapper(first_packet).filename
        asked = asked.decode("utf-8", "replace") if isinstance(asked, bytes) else str(asked)
        armed, source = conn.armed_stream, conn.stream_source
        conn.armed_stream, conn.stream_source = None, None  # one request per arming
        error: BaseException | None = None
        try:
            if armed is None or asked != armed or source is None:
                error = pymysql.err.OperationalError(
                    2068, f"the server asked for local file {asked[:100]!r}, which mobackup did not offer: refused")
            else:
                for chunk in source:
                    if chunk:
                        conn.write_packet(chunk)
        except BaseException as caught:  # the source failed: end the statement, then raise its error
            error = caught
        finally:
            conn.write_packet(b"")  # the end of the data: the server answers OK or an error
            answer = conn._read_packet()
        if error is not None:
            raise error
        if not answer.is_ok_packet():
            raise pymysql.err.OperationalError(2014, "Commands Out of Sync")
        self._read_ok_packet(answer)


class StreamingConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """A connection whose LOAD DATA LOCAL sends only the bytes its owner armed (see above)."""

    armed_stream: str | None = None
    stream_source: Any = None

    def _read_query_result(self, unbuffered: bool = False) -> Any:
        self._result = None
        result = _GuardedResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows

    def stream(self, name: str, source: Any) -> None:
        """Arm the next LOAD DATA LOCAL INFILE `name`: `source` (an iterable of bytes) is what it sends."""
        self.armed_stream, self.stream_source = name, source


def connect_streaming(host: str, port: int, user: str, password: str, **options: Any) -> StreamingConnection:
    """A StreamingConnection with the guarded authentication; `options` as pymysql's."""
    return StreamingConnection(host=host, port=port, user=user, password=password, auth_plugin_map=AUTH_PLUGINS,
                               local_infile=True, **options)
