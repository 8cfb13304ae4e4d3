"""The ingest's reads without a botocore client (engine/s3_get.py): HEAD and GET signed by botocore's
SigV4 signer and sent by botocore's HTTP session, against the real S3 server (SeaweedFS). The server
checks every signature; a relay in front of it (a real HTTP server in this process, forwarding the
signed requests unchanged) answers 503 SlowDown or cuts a body short, for the retries and the
length check. Where the URL is not reproduced, S3Place.reader gives the full S3Backend."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_online_s3_staged import Staged, objects

from mobackup.engine.errors import MobackupError, StorageUnreachableError
from mobackup.engine.online_s3 import S3Place
from mobackup.engine.online_s3_sharded import ingest_shard
from mobackup.engine.repository import RepositoryOptions, open_repository
from mobackup.engine.s3 import S3Backend
from mobackup.engine.s3_get import MAX_ATTEMPTS, S3Reader, fast_url
from mobackup.engine.storage import ObjectNotFound

pytestmark = pytest.mark.s3


@pytest.fixture
def place(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> S3Place:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return S3Place.from_env(f"s3://{s3_server.bucket}/get-{uuid.uuid4().hex[:8]}", "MOBACKUP_STAGING_")


KEYS = ["plain", "dir/with space", "odd+chars~=&?;#%", "unicodé/名前", "a//double"]


def test_reads_match_what_botocore_wrote_for_awkward_keys(place: S3Place) -> None:
    """Every key is signed as the server canonicalises it (quoting of spaces, '+', '?', '#', '%',
    unicode, '//'): SeaweedFS refuses a signature over any other path."""
    writer = place.backend()
    data = {key: hashlib.sha256(key.encode()).digest() * (i + 1) for i, key in enumerate(KEYS)}
    for key, value in data.items():
        writer.write(key, value)
    reader = place.reader()
    assert isinstance(reader, S3Reader)
    for key, value in data.items():
        assert reader.read(key) == value
        assert reader.size(key) == len(value)
        assert reader.exists(key)
        body = reader.open_read(key)
        assert body.read() == value
        body.close()
    assert reader.size("absent") is None and not reader.exists("absent")
    with pytest.raises(ObjectNotFound, match="absent: missing"):
        reader.read("absent")
    with pytest.raises(ObjectNotFound, match="dir/absent: missing"):
        reader.open_read("dir/absent")


def test_a_wrong_secret_is_refused_and_not_retried(place: S3Place, s3_server: Any) -> None:
    place.backend().write("k", b"v")
    relay = Relay(s3_server.endpoint)
    try:
        root = fast_url(place.bucket, relay.endpoint, place.region, True)
        assert root is not None
        reader = S3Reader(root, place.bucket, place.prefix, region=place.region, ca_bundle=None,
                          access_key_id=place.access_key_id, secret_access_key=place.secret_access_key + "x")
        with pytest.raises(MobackupError, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId") as error:
            reader.read("k")
        assert place.secret_access_key not in str(error.value)
        assert relay.requests == 1, "a refused signature is not worth a retry"
    finally:
        relay.stop()


class Relay:
    """A real HTTP server forwarding each request unchanged (its signed Host header included) to
    `upstream`, after answering the first `fail` of them 503 SlowDown; with `cut`, bodies stop at
    half their Content-Length and the connection closes."""

    def __init__(self, upstream: str, fail: int = 0, cut: bool = False) -> None:
        self.upstream = upstream.split("//", 1)[1]
        self.fail, self.cut, self.requests = fail, cut, 0
        self.length: str | None = None  # a Content-Length of HEAD responses in place of the server's
        self.lock = threading.Lock()
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def relay(self) -> None:
                with relay.lock:
                    relay.requests += 1
                    refuse = relay.fail > 0
                    relay.fail -= refuse
                if refuse:
                    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                upstream = http.client.HTTPConnection(relay.upstream, timeout=30)
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    upstream.putheader(name, value)
                upstream.endheaders()
                response = upstream.getresponse()
                body = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") or str(len(body))
                if self.command == "HEAD" and relay.length is not None:
                    length = relay.length
                if length:
                    self.send_header("Content-Length", length)
                self.end_headers()
                upstream.close()
                if self.command == "HEAD":
                    return
                if relay.cut:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            do_GET = do_HEAD = relay  # http.server's names

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relayed(place: S3Place, s3_server: Any) -> Iterator[tuple[S3Place, Relay]]:
    relay = Relay(s3_server.endpoint)
    try:
        yield S3Place(place.bucket, place.prefix, relay.endpoint, place.region, True, None,
                      place.access_key_id, place.secret_access_key), relay
    finally:
        relay.stop()


def test_throttling_and_5xx_are_retried_then_reported(place: S3Place, relayed: tuple[S3Place, Relay]) -> None:
    through, relay = relayed
    place.backend().write("obj", b"x" * 5000)
    reader = through.reader()
    assert isinstance(reader, S3Reader)
    reader.backoff = 0.01
    relay.fail = 3
    assert reader.read("obj") == b"x" * 5000
    assert relay.requests == 4
    relay.requests, relay.fail = 0, 2
    assert reader.size("obj") == 5000  # HEAD: the status alone (no body) decides
    assert relay.requests == 3
    relay.requests, relay.fail = 0, MAX_ATTEMPTS
    with pytest.raises(MobackupError, match="SlowDown: Please reduce your request rate") as error:
        reader.read("obj")
    assert not isinstance(error.value, ObjectNotFound)
    assert relay.requests == MAX_ATTEMPTS


def test_a_body_cut_short_is_an_error_not_fewer_bytes(place: S3Place, relayed: tuple[S3Place, Relay]) -> None:
    through, relay = relayed
    place.backend().write("obj", b"y" * 100_000)
    relay.cut = True
    with pytest.raises(MobackupError):
        through.reader().read("obj")


@pytest.mark.parametrize("length", ["", "0x10", "-1", "1e3"])
def test_a_size_without_a_valid_content_length_is_refused(place: S3Place, relayed: tuple[S3Place, Relay],
                                                          length: str) -> None:
    through, relay = relayed
    place.backend().write("obj", b"z" * 12)
    relay.length = length
    with pytest.raises(MobackupError, match="no valid Content-Length"):
        through.reader().size("obj")


def test_an_endpoint_that_does_not_answer_is_unreachable(place: S3Place) -> None:
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = S3Place(place.bucket, place.prefix, f"http://127.0.0.1:{port}", place.region, True, None,
                   place.access_key_id, place.secret_access_key)
    reader = dead.reader()
    assert isinstance(reader, S3Reader)
    reader.backoff = 0.01
    with pytest.raises(StorageUnreachableError, match=f"127.0.0.1:{port}"):
        reader.read("obj")
    with pytest.raises(StorageUnreachableError):
        reader.exists("obj")


def test_the_ingest_reads_through_the_relay_and_refuses_an_altered_object(
        place: S3Place, relayed: tuple[S3Place, Relay], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest_shard's reads go through S3Reader (the relay counts them, and fails some): the staged
    objects arrive whole, and one whose bytes differ from its SHA-256 in tae_list is refused."""
    through, relay = relayed
    root = S3Place(place.bucket, place.prefix, place.endpoint, place.region, True, None,
                   place.access_key_id, place.secret_access_key)
    data = objects(6, 5)
    staged = Staged(root, data)
    relayed_root = S3Place(through.bucket, through.prefix, through.endpoint, through.region, True, None,
                           through.access_key_id, through.secret_access_key)
    repo = open_repository(RepositoryOptions(str(tmp_path / "repo")), create=True)
    run_id = staged.run(repo)
    relay.fail = 2
    monkeypatch.setattr("mobackup.engine.s3_get.MAX_BACKOFF", 0.01)
    totals = ingest_shard(repo, run_id, relayed_root, 0, 1)
    assert totals.files == len(data) + 1 and totals.size >= sum(map(len, data.values()))
    # GETs of tae_list (no HEAD first: the GET tells a missing one), of tae_sum, of every object
    # and of hk_data, and the 2 refused
    assert relay.requests == len(data) + 5
    first = next(iter(data))
    staged.place.backend().write(f"tae/{first}", data[first][:-1] + bytes([data[first][-1] ^ 1]))
    run_id = staged.run(repo)
    with pytest.raises(MobackupError, match=f"{first} does not match its SHA-256"):
        ingest_shard(repo, run_id, relayed_root, 0, 1)


@pytest.mark.parametrize(("bucket", "endpoint", "region", "path_style", "expected"), [
    ("b", "http://127.0.0.1:9000", "us-east-1", True, "http://127.0.0.1:9000/b"),
    ("bucket-1", "https://minio.example:9000/base/", "eu-west-1", True, "https://minio.example:9000/base/bucket-1"),
    ("bucket-1", "https://minio.example:9000", "eu-west-1", False, "https://bucket-1.minio.example:9000"),
    ("bucket-1", "http://127.0.0.1:9000", "us-east-1", False, None),  # botocore goes by path to an IP
    ("a.b.c", "https://minio.example", "us-east-1", False, None),  # not a plain DNS label
    ("Upper", "https://minio.example", "us-east-1", False, None),
    ("bucket-1", None, "us-east-1", False, "https://bucket-1.s3.amazonaws.com"),
    ("bucket-1", None, "eu-central-1", False, "https://bucket-1.s3.eu-central-1.amazonaws.com"),
    ("bucket-1", None, "eu-central-1", True, "https://s3.eu-central-1.amazonaws.com/bucket-1"),
    ("bucket-1", None, "cn-north-1", False, None),  # another partition
    ("bucket-1", "ftp://host", "us-east-1", True, None),
    ("bucket-1", "https://user:pw@host", "us-east-1", True, None),
])
def test_fast_url_reproduces_botocore_or_declines(bucket: str, endpoint: str | None, region: str, path_style: bool,
                                                  expected: str | None, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_USE_FIPS_ENDPOINT", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert fast_url(bucket, endpoint, region, path_style) == expected


def test_settings_botocore_would_read_send_the_reads_through_the_client(
        place: S3Place, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert isinstance(place.reader(), S3Reader)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    assert isinstance(place.reader(), S3Backend)
    monkeypatch.delenv("AWS_USE_FIPS_ENDPOINT")
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\ns3 =\n  addressing_style = virtual\n")
    assert isinstance(place.reader(), S3Backend)
    (tmp_path / ".aws" / "config").unlink()
    keyless = S3Place(place.bucket, place.prefix, place.endpoint, place.region, True, None, "", "")
    assert isinstance(keyless.reader(), S3Backend)  # botocore's credential chain decides
