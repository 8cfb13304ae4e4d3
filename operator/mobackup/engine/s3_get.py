"""Signed HEAD and GET requests to S3 without a botocore client: the reads of an online backup's
ingest step (`backup --online --run ID --shard I/N`, online_s3_sharded.ingest_shard), nothing else. This
module never writes, lists or deletes; everything else goes through S3Backend (engine/s3.py).

Why: a botocore client costs the ingest about 0.3 s before its first byte (importing botocore.client
pulls in its waiters and their documentation modules; creating the client loads and parses S3's
service model and endpoint rules), while `rclone copy` starts in 0.05 s. Here the library still does
the parts that matter:

- signing: botocore's own SigV4 signer (botocore.auth.S3SigV4Auth) over a botocore.awsrequest.AWSRequest,
  with botocore.credentials.Credentials made from the keys S3Place has (environment or Secret, as for
  S3Backend); the empty body's SHA-256 is signed;
- transport: botocore's own HTTP session (botocore.httpsession.URLLib3Session, which the client uses),
  built as botocore's EndpointCreator builds it: the same TLS verification and CA bundle
  (ca_bundle, else REQUESTS_CA_BUNDLE, else the default bundle), proxies from the environment, pool
  size and timeouts; its errors are botocore's (EndpointConnectionError...);
- bodies: botocore.response.StreamingBody, which checks a body's length against its Content-Length.

What is done here: the object's URL (`fast_url`: path-style, or virtual-hosted for a bucket that is a
plain DNS label on a named host, as botocore's endpoint rules give them), retries (as botocore's
"standard" mode, `MAX_ATTEMPTS` attempts: connection errors, 429/5xx, throttling and transient
error codes, exponential backoff with jitter, each attempt signed afresh), and the error mapping of
S3Backend._call (404/NoSuchKey/NotFound: ObjectNotFound; unreachable: StorageUnreachableError).
A configuration this module cannot reproduce exactly (no explicit keys, so botocore's credential
chain; an AWS config file; FIPS or dual-stack endpoints; a bucket name that is not a plain DNS label
without path-style addressing; a non-`aws` partition) returns None from `fast_url`, and the caller
uses S3Backend."""

from __future__ import annotations

import os
import random
import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import MobackupError, StorageUnreachableError
from .s3_body import collector_paused
from .storage import ObjectNotFound

with collector_paused():
    import botocore.exceptions
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.httpsession import DEFAULT_TIMEOUT, URLLib3Session
    from botocore.response import StreamingBody
    from botocore.utils import get_environ_proxies

MAX_ATTEMPTS = 8  # as S3Backend's client ({"max_attempts": 8, "mode": "standard"})
MAX_BACKOFF = 20.0  # seconds, botocore's standard mode's cap
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# botocore.retries.standard: its throttling and transient error codes.
RETRY_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown",
    "PriorRequestNotComplete", "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
})
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})  # as s3._is_not_found
ERROR_BODY_MAX = 64 << 10  # bytes of an error response read for its code and message
# Settings botocore reads from the environment that change an S3 request's endpoint or signing:
# with any of them set, the client (S3Backend) decides.
BOTOCORE_ENDPOINT_ENV = ("AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_USE_FIPS_ENDPOINT",
                         "AWS_USE_DUALSTACK_ENDPOINT", "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "AWS_SESSION_TOKEN",
                         "AWS_S3_DISABLE_EXPRESS_SESSION_AUTH")
_DNS_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_IP_HOST = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_AWS_REGION = re.compile(r"(?!cn-|us-gov-|us-iso)[a-z]{2}(-[a-z]+)+-\d{1,2}")
_DIGITS = re.compile(r"[0-9]{1,20}")
_XML_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]{0,512})</Message>")


def fast_url(bucket: str, endpoint: str | None, region: str, path_style: bool) -> str | None:
    """The URL of the bucket's root (a key is appended to it, quoted) as botocore's S3 endpoint
    rules give it, or None where this module does not reproduce them (the caller then uses S3Backend)."""
    if any(os.environ.get(name) for name in BOTOCORE_ENDPOINT_ENV):
        return None
    if os.path.exists(os.path.expanduser("~/.aws/config")):
        return None
    plain = bool(_DNS_LABEL.fullmatch(bucket))
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
                or parts.username or parts.password:
            return None
        path = parts.path.rstrip("/")
        if path_style:
            return f"{parts.scheme}://{parts.netloc}{path}/{quote(bucket, safe='~')}"
        if not plain or _IP_HOST.fullmatch(parts.hostname) or ":" in parts.hostname:
            return None  # botocore addresses a server on an IP address (or a bucket like "a.b") by path
        return f"{parts.scheme}://{bucket}.{parts.netloc}{path}"
    if not _AWS_REGION.fullmatch(region or "") and region != "us-east-1":
        return None
    host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"  # botocore's legacy global
    if path_style:
        return f"https://{host}/{quote(bucket, safe='~')}"
    return f"https://{bucket}.{host}" if plain else None


def _clean(text: bytes) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", " ", text.decode("utf-8", "replace")).strip()


class S3Reader:
    """HEAD and GET of one bucket prefix's objects (read, open_read, exists, size: the subset of
    S3Backend an ingest uses). Make it with `S3Place.reader()`, which falls back to S3Backend."""

    def __init__(self, root_url: str, bucket: str, prefix: str, *, region: str, ca_bundle: str | None,
                 access_key_id: str, secret_access_key: str, max_connections: int = 16) -> None:
        if not access_key_id or not secret_access_key:
            raise MobackupError("S3Reader needs an access key (S3Place.reader falls back to S3Backend without one)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.root_url = root_url
        # One signer for all threads: add_auth keeps its state in each request (botocore sets the
        # signer's attributes in __init__ only).
        self.signer = S3SigV4Auth(Credentials(access_key_id, secret_access_key), "s3", region)
        verify: str | bool = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or True
        self.http = URLLib3Session(verify=verify, proxies=get_environ_proxies(root_url), timeout=DEFAULT_TIMEOUT,
                                   max_pool_connections=max_connections)
        self.backoff = MAX_BACKOFF  # the longest wait between attempts (tests shorten it)

    def _url(self, key: str) -> str:
        full = f"{self.prefix}/{key}" if self.prefix else key
        return f"{self.root_url}/{quote(full, safe='/~')}"

    def _send(self, method: str, key: str) -> Any:
        """A 2xx response (a GET's body unread), after up to MAX_ATTEMPTS attempts."""
        url = self._url(key)
        for attempt in range(MAX_ATTEMPTS):
            last = attempt == MAX_ATTEMPTS - 1
            request = AWSRequest(method=method, url=url, headers={"User-Agent": "mobackup"},
                                 stream_output=method == "GET")
            self.signer.add_auth(request)
            try:
                response = self.http.send(request.prepare())
            except botocore.exceptions.SSLError as error:  # a certificate refused: not retried (the client would)
                raise StorageUnreachableError(f"{self.location}: {_first_line(error)}") from None
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as error:
                if last:
                    raise StorageUnreachableError(f"{self.location}: {_first_line(error)}") from None
                self._wait(attempt)
                continue
            if 200 <= response.status_code < 300:
                return response
            body = b"" if method == "HEAD" else self._error_body(response)
            found = _XML_CODE.search(body)
            code = _clean(found.group(1)) if found else str(response.status_code)
            if code in NOT_FOUND:
                raise ObjectNotFound(f"{self.location}/{key}: missing")
            if (response.status_code in RETRY_STATUS or code in RETRY_CODES) and not last:
                self._wait(attempt)
                continue
            message = _XML_MESSAGE.search(body)
            text = f"{code}: {_clean(message.group(1))}" if message else code
            raise MobackupError(f"{self.location}/{key}: {text} (HTTP {response.status_code})")
        raise AssertionError("unreachable")  # pragma: no cover (the last attempt returns or raises)

    def _error_body(self, response: Any) -> bytes:
        raw = response.raw
        try:
            return bytes(raw.read(ERROR_BODY_MAX) or b"")
        except Exception:  # the status decides; a broken error body only loses its text
            return b""
        finally:  # a connection with unread bytes is closed; its pool slot goes back either way
            raw.close()
            raw.release_conn()

    def _wait(self, attempt: int) -> None:
        time.sleep(min(random.random() * (2 ** attempt), self.backoff))  # jitter, not secrecy

    def _length(self, response: Any, key: str, required: bool) -> int | None:
        """The response's Content-Length (the server's word, so checked: digits only)."""
        length = response.headers.get("content-length")
        length = length.strip() if isinstance(length, str) else length
        if length is None and not required:
            return None
        if length is None or not _DIGITS.fullmatch(length):
            response.raw.close()
            raise MobackupError(f"{self.location}/{key}: the server sent no valid Content-Length ({length!r:.40})")
        return int(length)

    def open_read(self, key: str) -> Any:
        """A GET's body (botocore's StreamingBody, which checks its length against Content-Length;
        s3_body.read_full reads it straight from the socket, and the caller checks size and SHA-256)."""
        response = self._send("GET", key)
        return StreamingBody(response.raw, self._length(response, key, required=False))

    def read(self, key: str) -> bytes:
        body = self.open_read(key)
        try:
            return bytes(body.read())
        except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                botocore.exceptions.ReadTimeoutError) as error:
            raise StorageUnreachableError(f"{self.location}/{key}: {_first_line(error)}") from None
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        try:
            response = self._send("HEAD", key)
        except ObjectNotFound:
            return None
        return self._length(response, key, required=True)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def close(self) -> None:
        self.http.close()


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
