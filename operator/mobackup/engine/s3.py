"""The S3 backend (AWS, MinIO and other S3-compatible servers), through botocore.

boto3 is not imported: it and s3transfer cost about 60 modules (0.05 s warm, more from a cold cache)
of every command's start, for nothing the backend needs (multipart uploads: write_parts). An online
ingest shard's reads (HEAD and GET of the staging) do not create this client at all where they can:
engine/s3_get.py signs them with botocore's signer and sends them through botocore's HTTP session."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MobackupError, StorageUnreachableError
from .s3_body import collector_paused as _collector_paused
from .storage import ObjectInfo, ObjectNotFound

with _collector_paused():
    import botocore.exceptions
    import botocore.session
    from botocore.config import Config

MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 16 << 20
MIN_PART = 5 << 20  # S3's smallest part (but the last)
MAX_PARTS = 10_000  # S3's most parts in one upload
PART_CONCURRENCY = 2  # parts of one upload in flight (a restore uploads several objects at once)


class _ViewReader(io.RawIOBase):
    """A seekable, read-only file over a buffer, so that botocore streams (and on a retry re-reads)
    a blob without first copying all of it into a new bytes object."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self.view = view.cast("B")
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), len(self.view) - self.position)
        buffer[:n] = self.view[self.position : self.position + n]
        self.position += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def __len__(self) -> int:
        return len(self.view)


# The endpoint is down or the network between: a reason of its own (StorageUnreachableError), so
# the operator and the CLI can say "unreachable" rather than a generic error.
UNREACHABLE = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
               botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)


_LOADER_LOCK = threading.Lock()
_LOADER: Any = None  # the data loader of this process's first session (it caches S3's service model)


def _new_session(access_key_id: str | None, secret_access_key: str | None) -> botocore.session.Session:
    """A session of its own (credentials resolved afresh, as each backend's may differ), sharing one
    data loader per process: loading and parsing S3's service model takes 0.15-0.5 s here, paid once
    instead of once per client (an online S3 backup opens several). Explicit keys are set as boto3's
    Session sets them; without them botocore's chain resolves (environment, files, web identity...)."""
    global _LOADER
    session = botocore.session.get_session()
    if access_key_id or secret_access_key:
        session.set_credentials(access_key_id, secret_access_key)
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = _quick_loader(session.get_config_variable("data_path"))
        session.register_component("data_loader", _LOADER)
    return session


def _quick_loader(search_path: str | None) -> Any:
    """botocore's data loader (as botocore.loaders.create_loader makes it), except that its check that
    a service exists lists the data directories' names only. botocore's own opens every service's
    directory (about 400) and looks for a model file in each (900 more lookups), twice per client:
    0.24 s of an S3 client's 0.6 s here, more with a cold cache. A name listed without the model asked
    for fails when the model is loaded instead (DataNotFoundError)."""
    from botocore.loaders import Loader, instance_cache

    class QuickLoader(Loader):  # type: ignore[misc]
        @instance_cache  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> list[str]:
            names: set[str] = set()
            for path in self._potential_locations():
                names.update(os.listdir(path))
            return sorted(names)

    if search_path is None:
        return QuickLoader()
    return QuickLoader(extra_search_paths=[os.path.expanduser(os.path.expandvars(path))
                                           for path in search_path.split(os.pathsep)])


def _is_not_found(error: botocore.exceptions.ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("404", "NoSuchKey", "NotFound")


def _lock_args(retain: tuple[str, datetime] | None) -> dict[str, object]:
    """A write under Object Lock: the retention, and a checksum (AWS requires one with it)."""
    if retain is None:
        return {}
    return {"ObjectLockMode": retain[0], "ObjectLockRetainUntilDate": retain[1], "ChecksumAlgorithm": "CRC32"}


def _reason(error: Exception) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        return f"{info.get('Code', '?')}: {info.get('Message', '')}".strip()
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class S3Backend:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        ca_bundle: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_connections: int = 16,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(
            region_name=region,
            retries={"max_attempts": 8, "mode": "standard"},
            max_pool_connections=max_connections,
            # Over TLS the transport already protects the body; signing its SHA-256 as well costs a
            # pass over every byte (measured: 7% of an upload). Over plain HTTP the signed hash is the
            # only end-to-end check the server makes, so it stays.
            s3={"addressing_style": "path" if path_style else "auto",
                "payload_signing_enabled": not (endpoint or "https://").startswith("https://")},
            # Checksums only when the operation requires them: S3-compatible servers differ.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # Credentials: given explicitly (the operator reads them from a Secret), or botocore's chain
        # (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a shared credentials file, a web identity...).
        with _collector_paused():
            session = _new_session(access_key_id, secret_access_key)
            self.client = session.create_client(
                "s3", region_name=region, endpoint_url=endpoint, config=config, verify=ca_bundle if ca_bundle else None
            )
        self.versioned = False  # delete every version of a key (a repository with Object Lock)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, func, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(**kwargs)
        except botocore.exceptions.ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFound(f"{self.location}/{what}: missing") from None
            raise MobackupError(f"{self.location}/{what}: {_reason(error)}") from None
        except UNREACHABLE as error:
            raise StorageUnreachableError(f"{self.location}: {_reason(error)}") from None
        except botocore.exceptions.BotoCoreError as error:
            raise MobackupError(f"{self.location}: {_reason(error)}") from None

    def read(self, key: str) -> bytes:
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read()

    def open_read(self, key: str) -> BinaryIO:
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"]  # type: ignore[no-any-return]

    def write(self, key: str, data: bytes | memoryview, retain: tuple[str, datetime] | None = None) -> None:
        """`retain`: (Object Lock mode, date) the bucket keeps this version until (objectlock.py)."""
        view = memoryview(data).cast("B")
        if len(view) >= MULTIPART_THRESHOLD:
            step = max(MULTIPART_CHUNK, -(-len(view) // MAX_PARTS))
            self.write_parts(key, (view[i:i + step] for i in range(0, len(view), step)), retain)
        else:
            self._put(key, data, retain)

    def _put(self, key: str, data: bytes | memoryview, retain: tuple[str, datetime] | None = None) -> None:
        # bytes go as they are (signed and sent in one call each); a view is read through _ViewReader
        # (http.client sends a file 16 KiB at a time, each piece copied once more).
        body: bytes | _ViewReader = data if isinstance(data, bytes) else _ViewReader(memoryview(data))
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=body,
                   ContentLength=len(body), **_lock_args(retain))

    def write_parts(self, key: str, parts: Iterable[bytes | memoryview],
                    retain: tuple[str, datetime] | None = None) -> int:
        """One object from `parts` (in order; each but the last at least MIN_PART bytes, at most
        MAX_PARTS of them) by a multipart upload through botocore, PART_CONCURRENCY parts in flight
        while the caller produces the next (`parts` is consumed in this thread, so a restore reads
        the next blobs while the last are sent). Any failure, the caller's included, aborts the
        upload: nothing appears under `key`. Returns the object's size."""
        from .workers import BoundedWorkers

        full = self._key(key)
        lock = _lock_args(retain)
        upload = self._call(key, self.client.create_multipart_upload, Bucket=self.bucket, Key=full, **lock)
        upload_id = upload["UploadId"]
        sent: dict[int, dict[str, Any]] = {}
        size = 0

        def send(number: int, part: bytes | memoryview) -> None:
            body: bytes | _ViewReader = part if isinstance(part, bytes) else _ViewReader(memoryview(part))
            extra = {"ChecksumAlgorithm": lock["ChecksumAlgorithm"]} if lock else {}
            response = self._call(key, self.client.upload_part, Bucket=self.bucket, Key=full, UploadId=upload_id,
                                  PartNumber=number, Body=body, ContentLength=len(body), **extra)
            done = {"PartNumber": number, "ETag": response["ETag"]}
            if "ChecksumCRC32" in response:  # an Object Lock write: the completion lists each part's
                done["ChecksumCRC32"] = response["ChecksumCRC32"]
            sent[number] = done

        try:
            with BoundedWorkers(PART_CONCURRENCY, "mobackup-s3-parts") as workers:
                for number, part in enumerate(parts, 1):
                    if workers.failed:
                        break
                    if number > MAX_PARTS:
                        raise MobackupError(f"{self.location}/{key}: more than {MAX_PARTS} parts")
                    size += len(part)
                    workers.submit(send, number, part)
            self._call(key, self.client.complete_multipart_upload, Bucket=self.bucket, Key=full, UploadId=upload_id,
                       MultipartUpload={"Parts": [sent[n] for n in sorted(sent)]})
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        return size

    def write_new(self, key: str, data: bytes) -> bool:
        """Conditional create (If-None-Match: *), supported by AWS S3 and MinIO."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise MobackupError(f"{self.location}/{key}: {_reason(error)}") from None

    def write_file(self, key: str, path: Path, retain: tuple[str, datetime] | None = None) -> None:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < MULTIPART_THRESHOLD:
                self._put(key, file.read(), retain)
                return
            step = max(MULTIPART_CHUNK, -(-size // MAX_PARTS))
            self.write_parts(key, iter(lambda: file.read(step), b""), retain)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        try:
            head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return None
        return int(head["ContentLength"])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]), item["LastModified"].timestamp())
        except UNREACHABLE as error:
            raise StorageUnreachableError(f"{self.location}: cannot list {prefix}: {_reason(error)}") from None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise MobackupError(f"{self.location}: cannot list {prefix}: {_reason(error)}") from None

    # ----- Object Lock (a versioned bucket; objectlock.py) --------------------------------------------

    def retention(self, key: str) -> tuple[str, datetime] | None:
        """(mode, retain-until date) of the object's current version, None without retention."""
        head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        if not mode or not isinstance(until, datetime):
            return None
        return str(mode), until

    def retain(self, key: str, mode: str, until: datetime) -> None:
        """Extend the current version's retention to `until`. A bucket refuses to shorten one: a
        version retained longer already is left as it is."""
        try:
            self.client.put_object_retention(Bucket=self.bucket, Key=self._key(key),
                                             Retention={"Mode": mode, "RetainUntilDate": until},
                                             ChecksumAlgorithm="CRC32")
        except botocore.exceptions.ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFound(f"{self.location}/{key}: missing") from None
            current = self.retention(key)
            if current is None or current[1] < until:
                raise MobackupError(f"{self.location}/{key}: cannot set its retention: {_reason(error)}") from None
        except UNREACHABLE as error:
            raise StorageUnreachableError(f"{self.location}: {_reason(error)}") from None

    def has_noncurrent_versions(self, key: str) -> bool:
        full = self._key(key)
        response = self._call(key, self.client.list_object_versions, Bucket=self.bucket, Prefix=full)
        return any(v.get("Key") == full and not v.get("IsLatest") for v in response.get("Versions", []))

    def _versions(self, keys: list[str]) -> list[dict[str, str]]:
        """Every version and delete marker of these keys: in a versioned bucket a delete without a
        version only adds a marker, and the data stays (and is billed) for good."""
        found: list[dict[str, str]] = []
        paginator = self.client.get_paginator("list_object_versions")
        for key in keys:
            full = self._key(key)
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                    for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                        if item.get("Key") == full:
                            found.append({"Key": full, "VersionId": item["VersionId"]})
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                raise MobackupError(f"{self.location}: cannot list the versions of {key}: {_reason(error)}") from None
        return found

    def delete(self, keys: Iterable[str]) -> int:
        count = 0
        batch: list[str] = []

        def flush_batch() -> None:
            nonlocal count
            if not batch:
                return
            objects = self._versions(batch) if self.versioned else [{"Key": self._key(k)} for k in batch]
            if not objects:
                batch.clear()
                return
            response = self._call(
                "delete", self.client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": objects, "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise MobackupError(f"{self.location}: cannot delete {first.get('Key')}: {first.get('Message')}")
            count += len(batch)
            batch.clear()

        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                flush_batch()
        flush_batch()
        return count

    def flush(self) -> None:
        """S3 writes are durable when they return."""

    def object_lock_enabled(self) -> bool:
        try:
            response = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except botocore.exceptions.ClientError:
            return False  # ObjectLockConfigurationNotFoundError: the bucket was created without it
        return response.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def check_access(self) -> None:
        self._call("", self.client.head_bucket, Bucket=self.bucket)
        list(self._call("", self.client.list_objects_v2, Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1))
