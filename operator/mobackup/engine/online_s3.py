"""Online backups of a MatrixOne whose table data lives in S3 (a distributed `MatrixOneCluster`, or
any MatrixOne whose SHARED file service is S3/MinIO). Restores into a bucket prefix: engine/s3_restore.py.

Backup: MatrixOne's `BACKUP '0' S3OPTION {...}` writes a consistent, GC-protected copy into a
staging prefix of a bucket (`<staging>/mobackup-staging-<run>/`): `tae/` (objects, `ckp/`, `gc/`,
`tae_list`, `tae_sum`), `hakeeper/hk_data`, `mo_meta`, `config/`. Unlike the FILESYSTEM form, the
objects there are PLAIN (no DISK framing): `tae_list` sizes and SHA-256s are of the objects as
stored, and they are exactly what MatrixOne's S3 file service keeps under its key prefix. The staged
objects are streamed straight into the repository (no local copy, no volume): each is checked
against `tae_list` (size, SHA-256) while it is chunked, hashed and stored, so dedup, compression and
encryption are the repository's as for any backup. The backup lists them as `shared/<tae path>`, and
`local/hk_data` (the ID allocator state) in DISK framing: the log service reads `hk_data` at its
first start from the root of its LOCAL DISK file service (seen: "file hk_data is not found" from
local_fs.go when absent, and then new table IDs start over and collide with restored ones).
Summary `extra`: kind "online", resident "s3".

Scale-out, the ingest as N shards of one staged run: engine/online_s3_sharded.py.

Memory: tae_list, the file records and the checks over them live in SQLite in a scratch directory
(engine/online_index.py, engine/online_s3_index.py), part records are framed lists streamed both
ways, so a run's memory does not grow with the number of objects.

Staging: a run holds a lease object beside its staging prefix, refreshed while it runs; a later run
removes staging prefixes whose lease expired, is missing, or names a process known to be dead (of
this boot and PID namespace, as for repository locks). A lease it cannot read protects its prefix
until it is older than any lease a writer sets.

Credentials for MatrixOne's s3option must go into the statement text: that statement is never
logged, and every error message has the secret masked.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CorruptDataError, MobackupError
from .guards import check_shared_prefix, check_staging_root
from .manifest import UNPUBLISHED, ManifestChecker
from .model import BackupSummary, iso, parse_iso, utc_now
from .online import StagedBackup, StagedFile, StagedList, _lines, _tae_list_rows, choose_online_base, parse_tae_sum
from .online_index import StagedIndex
from .online_s3_index import PathListedTwice, RunRecords
from .progress import NullProgress, Progress
from .repository import FileListWriter, Repository, lock_holder_is_gone, process_identity
from .s3_body import read_full
from .storage import ObjectNotFound
from .workers import BoundedWorkers

STAGING_NAME = "mobackup-staging-"
STAGING_RUN = re.compile(rf"{STAGING_NAME}[0-9a-f]{{16}}")  # the name staging_prefix gives a run's prefix
LEASE_SECONDS = float(os.environ.get("MOBACKUP_STAGING_LEASE_SECONDS", "300"))
LEASE_REFRESH = max(1.0, LEASE_SECONDS / 5)
# The longest lease any writer sets: a sharded run's staging outlives its first step (stage_run).
STAGED_RUN_LEASE_SECONDS = 86400.0
LEASE_CLOCK_SKEW_SECONDS = 120.0  # how far ahead of ours another clock may be and still be believed
HK_DATA = "local/hk_data"
DISK_BLOCK, DISK_CRC = 2048, 4
SINGLE_PUT_MAX = 64 << 20  # larger restored objects are uploaded in parts, streamed blob by blob
# hk_data (HAKeeper's state, a few MB) is restored from memory: a file list may claim any size.
MAX_HK_DATA_SIZE = 1 << 30


# ---- where: a bucket prefix and how to reach it ---------------------------------------------------

@dataclass(frozen=True)
class S3Place:
    """A prefix in a bucket, and how both mobackup and MatrixOne reach it."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    path_style: bool
    ca_bundle: str | None = None
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def under(self, name: str) -> S3Place:
        prefix = f"{self.prefix}/{name}" if self.prefix else name
        return S3Place(self.bucket, prefix, self.endpoint, self.region, self.path_style, self.ca_bundle,
                       self.access_key_id, self.secret_access_key)

    def backend(self, connections: int = 16) -> Any:
        from .s3 import S3Backend

        return S3Backend(self.bucket, self.prefix, endpoint=self.endpoint, region=self.region,
                         path_style=self.path_style, ca_bundle=self.ca_bundle,
                         access_key_id=self.access_key_id or None, secret_access_key=self.secret_access_key or None,
                         max_connections=connections)

    def reader(self, connections: int = 16) -> Any:
        """For reading only (HEAD and GET: an ingest shard): engine/s3_get.py's S3Reader, which signs
        with botocore's signer and skips creating a botocore client (0.2-0.3 s of start-up), where it
        reproduces S3Backend's addressing exactly (explicit keys, no AWS config file...); else S3Backend."""
        if self.access_key_id and self.secret_access_key:
            from .s3_get import S3Reader, fast_url

            root = fast_url(self.bucket, self.endpoint, self.region, self.path_style)
            if root is not None:
                return S3Reader(root, self.bucket, self.prefix, region=self.region, ca_bundle=self.ca_bundle,
                                access_key_id=self.access_key_id, secret_access_key=self.secret_access_key,
                                max_connections=connections)
        return self.backend(connections)

    @classmethod
    def from_env(cls, url: str, env_prefix: str, endpoint: str | None = None, region: str | None = None,
                 path_style: bool | None = None, ca_bundle: str | None = None) -> S3Place:
        """`s3://bucket/prefix`; credentials from `<env_prefix>ACCESS_KEY_ID` / `..SECRET_ACCESS_KEY`,
        else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (never the command line); endpoint, region
        and path style from the arguments, else `<env_prefix>ENDPOINT`, AWS_ENDPOINT_URL, AWS_REGION,
        MOBACKUP_S3_PATH_STYLE."""
        env = os.environ
        if not url.startswith("s3://"):
            raise MobackupError(f"{url}: not an s3://BUCKET/PREFIX URL")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        prefix = prefix.strip("/")
        if not bucket:
            raise MobackupError(f"{url}: no bucket (s3://BUCKET/PREFIX)")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise MobackupError(f"{url}: the prefix has an empty, '.' or '..' component")
        key_id = env.get(f"{env_prefix}ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID") or ""
        secret = env.get(f"{env_prefix}SECRET_ACCESS_KEY") or env.get("AWS_SECRET_ACCESS_KEY") or ""
        if path_style is None:
            path_style = (env.get(f"{env_prefix}PATH_STYLE") or env.get("MOBACKUP_S3_PATH_STYLE") or "").lower() \
                in ("1", "true", "yes")
        return cls(bucket, prefix,
                   endpoint or env.get(f"{env_prefix}ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3")
                   or env.get("AWS_ENDPOINT_URL") or None,
                   region or env.get(f"{env_prefix}REGION") or env.get("AWS_REGION") or "us-east-1",
                   bool(path_style), ca_bundle or env.get("AWS_CA_BUNDLE") or None, key_id, secret)


# ---- MatrixOne's BACKUP into a bucket -----------------------------------------------------------------

def _quote(value: str, what: str) -> str:
    if "'" in value or "\\" in value or "\n" in value:
        raise MobackupError(f"refusing a {what} with quotes, backslashes or newlines")
    return value


def backup_to_s3(session: Any, place: S3Place, parallelism: int, since_ts: str | None,
                 server_endpoint: str | None = None) -> None:
    """`BACKUP '0' S3OPTION {...}` into `place` (its prefix is MatrixOne's `filepath`). The statement
    carries the secret key, so it is never logged and errors are masked."""
    if not place.access_key_id or not place.secret_access_key:
        raise MobackupError("MatrixOne's BACKUP into S3 needs an access key: set MOBACKUP_STAGING_ACCESS_KEY_ID and "
                            "MOBACKUP_STAGING_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    endpoint = server_endpoint or place.endpoint or f"https://s3.{place.region}.amazonaws.com"
    options = {
        "endpoint": _quote(endpoint, "staging endpoint"),
        "access_key_id": _quote(place.access_key_id, "staging access key id"),
        "secret_access_key": _quote(place.secret_access_key, "staging secret key"),
        "bucket": _quote(place.bucket, "staging bucket"),
        "filepath": _quote(place.prefix, "staging prefix"),
        "region": _quote(place.region, "staging region"),
        "is_minio": "true" if place.path_style else "false",
        "parallelism": str(int(parallelism)),
    }
    target = "s3option {" + ", ".join(f"'{k}'='{v}'" for k, v in options.items()) + "}"
    session.run_backup(target, since_ts, place.url, secret=place.secret_access_key)


# ---- the staged copy ---------------------------------------------------------------------------------

def read_staged(staging: Any, index: StagedIndex, missing: str | None = None) -> tuple[StagedBackup, str]:
    """tae_sum, and tae_list streamed into `index` (on disk: memory stays flat with millions of
    objects), every line checked as parse_staged_text checks it. Returns the staged backup (its files
    read back from `index`, in path order) and tae_list's SHA-256 (what a sharded run pins).
    `missing`: the error when either is absent (default: MatrixOne wrote none)."""
    sha = hashlib.sha256()
    try:
        backup_ts, kind = parse_tae_sum(staging.read("tae/tae_sum").decode())
        with contextlib.closing(staging.open_read("tae/tae_list")) as stream:
            count = index.add_staged(_tae_list_rows(_lines(_hashed(stream, sha))))
    except UnicodeDecodeError:
        raise MobackupError("MatrixOne's backup tae_sum/tae_list is not text") from None
    except ValueError:
        raise MobackupError("MatrixOne's backup list tae_list names a file twice") from None
    except ObjectNotFound as error:
        raise MobackupError(missing or f"MatrixOne wrote no backup list into {staging.location} ({error})") from None
    if not count:
        raise MobackupError("MatrixOne's backup list tae_list is empty")
    return StagedBackup(backup_ts, kind, StagedList(index)), sha.hexdigest()


def _hashed(stream: BinaryIO, sha: Any) -> Iterator[bytes]:
    """`stream` in pieces of 1 MiB, each added to `sha` as it passes."""
    while piece := stream.read(1 << 20):
        sha.update(piece)
        yield piece


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as MatrixOne's DISK file service frames blocks with (checked on its
    files). Pure Python: only hk_data, tens of bytes, is framed here."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def disk_unframe(framed: bytes) -> bytes:
    """The content of a DISK-framed file, each block's CRC-32C checked."""
    out = []
    for start in range(0, len(framed), DISK_BLOCK):
        block = framed[start:start + DISK_BLOCK]
        content = block[DISK_CRC:]
        if len(block) <= DISK_CRC or int.from_bytes(block[:DISK_CRC], "little") != crc32c(content):
            raise CorruptDataError(f"DISK frame at byte {start} fails its CRC-32C")
        out.append(content)
    return b"".join(out)


def disk_frame(content: bytes) -> bytes:
    """`content` in MatrixOne's DISK framing: 2048-byte blocks, each a little-endian CRC-32C of its
    content followed by up to 2044 content bytes."""
    step = DISK_BLOCK - DISK_CRC
    return b"".join(crc32c(content[i:i + step]).to_bytes(4, "little") + content[i:i + step]
                    for i in range(0, len(content), step)) or b""


# ---- staging prefixes: leased, removed always ---------------------------------------------------------

def lease_is_live(raw: bytes, written: float, now: float) -> bool:
    """Whether a staging lease (its bytes, and when the storage last saw it written) still protects
    its prefix. A holder known dead (lock_holder_is_gone: this boot and PID namespace only; host
    names say nothing, containers share them) frees it at once; otherwise its expiry decides. A
    lease that cannot be read, or whose expiry is implausibly far ahead (a wrong clock, a forged
    record), says nothing: it protects until it is older than the longest lease a writer sets."""
    try:
        lease = json.loads(raw)
    except (ValueError, RecursionError):
        lease = None
    if isinstance(lease, dict):
        if lock_holder_is_gone(lease):
            return False
        expires = lease.get("expires")
        if isinstance(expires, (int, float)) and not isinstance(expires, bool) and \
                expires <= now + STAGED_RUN_LEASE_SECONDS + LEASE_CLOCK_SKEW_SECONDS:  # NaN fails too
            return expires > now
    return now - written < STAGED_RUN_LEASE_SECONDS


def remove_stale_staging(root: S3Place) -> list[str]:
    """Removes `mobackup-staging-*` prefixes under `root` whose run is gone: its lease is missing
    (a run writes it before anything else and deletes it last) or no longer live (lease_is_live).
    A lease that cannot be read now (storage error) leaves its prefix to a later run."""
    backend = root.backend()
    names: set[str] = set()
    written: dict[str, float] = {}  # staging name -> its lease's modification time, by the storage's clock
    for info in backend.list(STAGING_NAME):
        top = info.key.split("/", 1)[0]
        if top == info.key and top.endswith(".lease"):
            top = top[:-len(".lease")]
            written[top] = info.modified
        names.add(top)
    removed: list[str] = []
    now = time.time()
    for name in sorted(names):
        try:
            raw = backend.read(f"{name}.lease")
        except ObjectNotFound:
            raw = None
        except MobackupError:
            continue  # unreachable or refused: no reason to think its run is gone
        # A lease read but not listed was written after the listing: as fresh as can be.
        if raw is not None and lease_is_live(raw, written.get(name, now), now):
            continue
        backend.delete(i.key for i in backend.list(f"{name}/"))  # streamed: a staging holds millions
        backend.delete([f"{name}.lease"])
        removed.append(name)
    return removed


@contextlib.contextmanager
def staging_prefix(root: S3Place, keep: bool = False) -> Iterator[S3Place]:
    """A fresh staging prefix under `root`, leased for the run; leftovers of gone runs are removed
    first. Removed at the end (success or failure) unless `keep` (a sharded run's later steps)."""
    remove_stale_staging(root)
    name = f"{STAGING_NAME}{uuid.uuid4().hex[:16]}"
    backend = root.backend()
    stop = threading.Event()

    # Who holds it, as repository locks record it: a later run may judge it by PID only within the
    # same boot and PID namespace.
    holder = {"host": socket.gethostname(), **process_identity()}

    def write_lease() -> None:
        backend.write(f"{name}.lease", json.dumps({**holder, "expires": time.time() + LEASE_SECONDS}).encode())

    write_lease()

    def refresh() -> None:
        while not stop.wait(LEASE_REFRESH):
            with contextlib.suppress(MobackupError):
                write_lease()

    refresher = threading.Thread(target=refresh, name="mobackup-staging-lease", daemon=True)
    refresher.start()
    ok = False
    try:
        yield root.under(name)
        ok = True
    finally:
        stop.set()
        refresher.join()
        if not (keep and ok):
            remove_staging(root, name)


def remove_staging(root: S3Place, name: str) -> None:
    backend = root.backend()
    backend.delete(i.key for i in backend.list(f"{name}/"))  # streamed: a staging holds millions
    backend.delete([f"{name}.lease"])


# ---- the ingest: staged objects -> repository blobs ---------------------------------------------------

@dataclass
class PartTotals:
    size: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    files: int = 0
    chunks: int = 0
    new_blobs: int = 0

    def add(self, other: PartTotals) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def shard_items(staged: StagedBackup, shard: int, shards: int) -> Iterator[StagedFile | None]:
    """The staged files shard `shard` of `shards` ingests (None stands for hk_data, shard 0's), read
    as they are needed: positions shard, shard + shards, ... of the needCopy files in path order."""
    if shard == 0:
        yield None
    yield from itertools.islice((f for f in staged.files if f.need_copy), shard, None, shards)


HASH_SLICE = 1 << 20  # bytes of a response hashed as soon as they arrived


def _fill(stream: BinaryIO, view: memoryview, hashers: tuple[Any, ...]) -> int:
    """Fills `view` from a GET's body (fewer bytes only at its end), each slice of HASH_SLICE bytes
    fed to every hasher as soon as it is in: the slice is still in the CPU's cache, and while
    hashlib and blake3 hash it (both release the GIL) the kernel receives the next one into the
    socket's buffer, so hashing costs no pass over memory and little wall time of its own."""
    have = 0
    while have < len(view):
        want = min(HASH_SLICE, len(view) - have)
        got = read_full(stream, view[have:have + want])
        if got:
            piece = view[have:have + got]
            for hasher in hashers:
                hasher.update(piece)
            have += got
        if got < want:
            break
    return have


class _SizeDiffers(MobackupError):
    """An object's content is not of the size its list gives."""


class _Ingest:
    """Streams objects of `staging` (MatrixOne's staged copy, under `tae/`) into the repository. With
    `history` the objects are the live SHARED prefix's (engine/pitr_history_s3.py): keys as listed,
    and one that vanished or changed since the listing is left out (counted), not a failure."""

    def __init__(self, repo: Repository, staging: Any, progress: Progress, check_existing: bool = False,
                 history: bool = False, records: RunRecords | None = None) -> None:
        """`records`: where the file records go (on disk); by default a list."""
        self.repo, self.staging, self.progress = repo, staging, progress
        self.totals = PartTotals()
        self.records: Any = records if records is not None else []
        self.lock = threading.Lock()
        self.check_existing = check_existing
        self.buffers = threading.local()
        self.history = history
        self.left_out = 0

    def _store(self, data: bytes | memoryview, digest: str | None = None) -> str:
        """Stores a chunk unless a sound blob of it is there; `digest`: its name, when the caller
        hashed it already (as it arrived)."""
        digest = digest or self.repo.codec.digest(data)
        if not self.repo.blob_is_sound(digest, len(data), read=self.check_existing):
            stored = self.repo.put_blob(digest, data)
            with self.lock:
                self.totals.new_bytes += len(data)
                self.totals.stored_bytes += stored
                self.totals.new_blobs += 1
        return digest

    def _chunks(self, stream: BinaryIO, expected_sha: str, expected_size: int, what: str) -> tuple[list[str], int]:
        buffer = getattr(self.buffers, "buffer", None)
        if buffer is None:  # one per worker thread, filled straight from the socket (s3.read_full)
            buffer = self.buffers.buffer = bytearray(self.repo.chunk_size)
        view = memoryview(buffer)
        chunks: list[str] = []
        sha = hashlib.sha256()
        done = 0
        while True:  # whole chunks (fixed boundaries, so dedup works), read as the response streams
            name = self.repo.codec.hasher()
            have = _fill(stream, view, (sha, name))
            if not have:
                break
            chunks.append(self._store(view[:have], name.hexdigest()))
            done += have
            self.progress.advance(have, 0)
            if have < len(view):
                break
        # The SHA-256 decides where tae_list has one: for some objects (tombstones under frequent
        # checkpoints) its size is not the object's, while its SHA-256 is of the whole object.
        if expected_sha and sha.hexdigest() != expected_sha:
            raise MobackupError(f"MatrixOne's backup file {what} does not match its SHA-256 in tae_list")
        if not expected_sha and done != expected_size:
            raise _SizeDiffers(f"MatrixOne's backup file {what} has {done} bytes, tae_list says {expected_size}")
        return chunks, done

    def ingest(self, item: StagedFile | None) -> None:
        if item is None:  # hk_data: stored in the DISK framing the log service's LOCAL file service reads
            try:
                plain = self.staging.read("hakeeper/hk_data")
            except MobackupError:
                raise MobackupError("MatrixOne's backup has no hakeeper/hk_data (the ID allocator state)") from None
            framed = disk_frame(plain)
            step = self.repo.chunk_size
            chunks = [self._store(framed[i:i + step]) for i in range(0, len(framed), step)]
            record = {"path": HK_DATA, "type": "file", "mode": 0o600, "mtime_ns": 0, "size": len(framed),
                      "chunks": chunks}
        else:
            try:
                stream = self.staging.open_read(item.path if self.history else f"tae/{item.path}")
            except ObjectNotFound:
                if self.history:  # deleted by the cleaner since the listing: garbage
                    self._leave_out()
                    return
                raise MobackupError(f"MatrixOne's backup is incomplete: {item.path} is listed but was not written "
                                    "(an object that vanished during BACKUP); the backup was not stored") from None
            except MobackupError:
                if self.history:
                    raise
                raise MobackupError(f"MatrixOne's backup is incomplete: {item.path} is listed but was not written "
                                    "(an object that vanished during BACKUP); the backup was not stored") from None
            with contextlib.closing(stream):
                try:
                    chunks, size = self._chunks(stream, item.sha256, item.size, item.path)
                except _SizeDiffers:
                    if not self.history:
                        raise
                    self._leave_out()  # rewritten since the listing: newer than BACKUPTS
                    return
            record = {"path": f"shared/{item.path}", "type": "file", "mode": 0o644, "mtime_ns": 0,
                      "size": size, "chunks": chunks}
        with self.lock:
            self.records.append(record)
            self.totals.size += record["size"]
            self.totals.files += 1
            self.totals.chunks += len(record["chunks"])
        self.progress.advance(0, 1)

    def _leave_out(self) -> None:
        with self.lock:
            self.left_out += 1
        self.progress.advance(0, 1)

    def run(self, items: Iterable[StagedFile | None]) -> None:
        with BoundedWorkers(self.repo.parallelism, "mobackup-ingest") as workers:
            for item in items:
                if workers.failed:
                    break
                workers.submit(self.ingest, item)


def ingest_part(repo: Repository, staging: Any, staged: StagedBackup, shard: int = 0, shards: int = 1,
                progress: Progress | None = None, check_existing: bool = False,
                records: RunRecords | None = None) -> tuple[Any, PartTotals]:
    """Streams shard `shard` of `shards` of the staged files into the repository; returns its file
    records (`records`, or a list) and totals."""
    progress = progress or NullProgress()
    if not isinstance(progress, NullProgress):
        size = count = 0
        for item in shard_items(staged, shard, shards):
            size, count = size + (item.size if item is not None else 0), count + 1
        progress.start(size, count)
    run = _Ingest(repo, staging, progress, check_existing, records=records)
    run.run(shard_items(staged, shard, shards))
    if records is not None:
        records.flush()
    return run.records, run.totals


def _file_list(repo: Repository, backup_id: str, scratch: Path, records: Iterable[dict[str, Any]]) -> FileListWriter:
    """Directories first where needed, then files, all sorted by path (`records` come so): the same
    list whatever the shard count, checked as a restore will check it."""
    writer = FileListWriter(repo.codec, backup_id, scratch)
    checker = ManifestChecker(scratch, repo.chunk_size, f"backup {backup_id}", UNPUBLISHED)
    previous = ""
    try:
        for record in records:
            parts = record["path"].split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                parent = "/".join(parts[:depth])
                # In path order the paths below a directory come together: it was listed before
                # exactly when the previous record lies below it.
                if not previous.startswith(parent + "/"):
                    directory = {"path": parent, "type": "dir", "mode": 0o755, "mtime_ns": 0}
                    checker.check(directory)
                    writer.add(directory)
            clean = {k: record[k] for k in ("path", "type", "mode", "mtime_ns", "size", "chunks")}
            checker.check(clean)
            writer.add(clean)
            previous = record["path"]
        checker.finish()
    finally:
        checker.close()
        writer.close()
    return writer


@dataclass
class RunInfo:
    """What the commit needs about one online S3 backup run (kept in `runs/<run>/run.json` for a
    sharded run)."""

    run_id: str
    source: str
    staging_url: str
    backup_ts: str
    base_id: str | None
    started_at: str
    mo_version: str | None
    matrixone_backup_seconds: float
    staged_files: int
    staged_bytes: int
    # A run record written before tae_list was pinned lists the paths (still read): `inherit`, the
    # base paths not staged again; `staged_paths`, what the shards must store, hk_data included.
    inherit: list[str]
    staged_paths: list[str] = field(default_factory=list)
    # Since: tae_list's SHA-256 as the run was staged; the shards and the commit read tae_list again
    # (from the staging, which stays until the commit) and refuse one that differs.
    tae_list_sha256: str = ""
    inherited_files: int = 0  # needCopy false in tae_list: taken from the base
    # MatrixOne's transient BACKUP failures before the statement that passed (mosql.with_backup_retries).
    backup_retries: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for name in ("inherit", "staged_paths") if self.tae_list_sha256 else ("tae_list_sha256", "inherited_files"):
            del data[name]
        return data


def _reused_paths(staged: StagedBackup) -> Iterator[str]:
    """The file-list paths an incremental takes from its base: tae_list's needCopy false."""
    return (f"shared/{f.path}" for f in staged.files if not f.need_copy)


def _expected_paths(staged: StagedBackup) -> Iterator[str]:
    """The file-list paths the ingest stores: tae_list's needCopy true, and hk_data."""
    yield HK_DATA
    yield from (f"shared/{f.path}" for f in staged.files if f.need_copy)


_NONE = type(None)
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,), "type": (str,), "mode": (int,), "mtime_ns": (int,), "size": (int,), "chunks": (list,),
}


def _check_fields(data: dict[str, Any], types: dict[str, tuple[type, ...]], what: str) -> None:
    """Every field there with its JSON type (a bool is no number); CorruptDataError naming `what`."""
    for name, allowed in types.items():
        value = data.get(name, _NONE)
        if value is _NONE or not isinstance(value, allowed) or isinstance(value, bool):
            raise CorruptDataError(f"{what} is malformed: field {name!r} is {str(value)[:100]!r}")


def _check_record(record: Any, what: str) -> None:
    """A file record with every field of its JSON type and text chunk digests (a repository is
    untrusted input); CorruptDataError naming `what`."""
    if not isinstance(record, dict):
        raise CorruptDataError(f"{what} is malformed: a record is {str(record)[:100]!r}")
    _check_fields(record, _RECORD_TYPES, what)
    if not all(isinstance(c, str) for c in record["chunks"]):
        raise CorruptDataError(f"{what} is malformed: a chunk of {record['path'][:200]!r} is not a digest")


def commit_backup(repo: Repository, run: RunInfo, records: RunRecords, totals: PartTotals,
                  clock: float | None = None, shards: int = 1, extra: dict[str, Any] | None = None) -> BackupSummary:
    """Writes the file list and the summary (the commit point) of an ingested run: its `records`
    (on disk), with the base's records of the paths `records` is to inherit (RunRecords.add_inherit)
    added. `extra`: more to record in the summary (the PITR record)."""
    base = repo.load_summary(run.base_id) if run.base_id else None
    inherited_files = inherited_size = inherited_chunks = 0
    to_inherit, _ = records.not_taken()
    if to_inherit:
        if base is None:
            raise MobackupError("MatrixOne staged an incremental backup without a base")
        what = f"base backup {base.id}'s file list"
        try:
            for record in repo.entries(base):
                path = record.get("path") if isinstance(record, dict) else None
                if isinstance(path, str) and record.get("type") == "file" and records.wants(path):
                    _check_record(record, what)
                    records.take(record)
                    inherited_files += 1
                    inherited_size += record["size"]
                    inherited_chunks += len(record["chunks"])
            records.flush()
        except PathListedTwice:
            raise MobackupError(f"a file to take from base backup {base.id} is also staged: {UNPUBLISHED}") from None
        missing, first = records.not_taken()
        if missing:
            raise MobackupError(f"{missing} files to take from base backup {base.id} are not in it, e.g. "
                                f"{first}: the base does not match this cluster")
    backup_id = run.run_id
    with tempfile.TemporaryDirectory(prefix="mobackup-") as scratch:
        writer = _file_list(repo, backup_id, Path(scratch), records.sorted())
        size = totals.size + inherited_size
        started = parse_iso(run.started_at)
        completed = utc_now()
        summary = BackupSummary(
            id=backup_id, type="incremental" if base else "full", base_id=base.id if base else None,
            source=run.source, backup_ts=run.backup_ts, backup_ts_source="matrixone-backup",
            started_at=run.started_at, completed_at=iso(completed),
            duration_seconds=round(time.monotonic() - clock if clock is not None
                                   else (completed - started).total_seconds(), 3),
            size_bytes=size, new_bytes=totals.new_bytes, stored_bytes=totals.stored_bytes,
            file_count=totals.files + inherited_files, read_file_count=totals.files,
            chunk_count=totals.chunks + inherited_chunks, new_blob_count=totals.new_blobs,
            data_dir=run.staging_url, host=socket.gethostname(), layout="disk", location=repo.location,
            files_digest=writer.hasher.hexdigest(), files_frames=writer.frames, entry_count=writer.count,
            mo_version=run.mo_version,
            extra={"kind": "online", "resident": "s3", "objects": "plain", "staged_bytes": run.staged_bytes,
                   "staged_files": run.staged_files, "matrixone_backup_seconds": run.matrixone_backup_seconds,
                   "shards": shards, **({"backup_retries": run.backup_retries} if run.backup_retries else {}),
                   **(extra or {})},
        )
        from .. import __version__

        summary.mobackup_version = __version__
        repo.publish(summary, writer.path)
    return summary


@contextlib.contextmanager
def staged_run(repo: Repository, session: Any, staging_root: S3Place, *, source: str, backup_type: str | None,
               base_id: str | None, server_endpoint: str | None = None,
               keep: bool = False) -> Iterator[tuple[S3Place, RunInfo, StagedBackup, Path]]:
    """BACKUP into a fresh staging prefix, tae_list read into an index in a scratch directory (both
    live as long as the context): (staging, run, staged backup, scratch directory)."""
    check_staging_root(repo, (staging_root.bucket, staging_root.prefix))
    base = choose_online_base(repo, source, backup_type, base_id)
    if base is not None and base.extra.get("resident") != "s3":
        raise MobackupError(f"backup {base.id} is of a data directory, not of an S3-resident cluster: an "
                            "incremental here needs an S3 online base (run a full one first)")
    started, clock = utc_now(), time.monotonic()
    with _backup_into_fresh_staging(session, staging_root, repo.parallelism, base.backup_ts if base else None,
                                    server_endpoint, keep) as (staging, retries), \
            tempfile.TemporaryDirectory(prefix="mobackup-online-s3-") as scratch:
        backup_seconds = time.monotonic() - clock
        index = StagedIndex(Path(scratch))
        with contextlib.closing(index):
            staged, list_sha = read_staged(staging.backend(), index)
            reused = index.count("WHERE NOT need_copy")
            if reused and base is None:
                raise MobackupError("MatrixOne staged an incremental backup without a base")
            staged_files, staged_bytes = index.totals("WHERE need_copy")
            run = RunInfo(run_id=str(uuid.uuid4()), source=source, staging_url=staging.url,
                          backup_ts=staged.backup_ts, base_id=base.id if base else None, started_at=iso(started),
                          mo_version=session.version, matrixone_backup_seconds=round(backup_seconds, 3),
                          staged_files=staged_files, staged_bytes=staged_bytes, inherit=[],
                          tae_list_sha256=list_sha, inherited_files=reused, backup_retries=list(retries))
            yield staging, run, staged, Path(scratch)


@contextlib.contextmanager
def _backup_into_fresh_staging(session: Any, staging_root: S3Place, parallelism: int, since_ts: str | None,
                               server_endpoint: str | None, keep: bool) -> Iterator[tuple[S3Place, list[str]]]:
    """BACKUP into a fresh staging prefix (removed at the end unless `keep`), tried again in another
    fresh prefix when it fails in a way that may pass on its own (mosql.TRANSIENT_BACKUP_REASONS):
    (staging, the failures retried)."""
    from .mosql import with_backup_retries

    def attempt(retries: list[str]) -> tuple[contextlib.ExitStack, S3Place, list[str]]:
        # A failure must pass through staging_prefix: a kept prefix is removed only then.
        with contextlib.ExitStack() as stack:
            staging = stack.enter_context(staging_prefix(staging_root, keep=keep))
            backup_to_s3(session, staging, parallelism, since_ts, server_endpoint)
            return stack.pop_all(), staging, retries

    kept, staging, retries = with_backup_retries(attempt)
    with kept:
        yield staging, retries


def run_online_s3_backup(repo: Repository, session: Any, staging_root: S3Place, *, source: str | None = None,
                         backup_type: str | None = None, base_id: str | None = None,
                         server_endpoint: str | None = None, progress: Progress | None = None,
                         extra: dict[str, Any] | None = None, shared: S3Place | None = None,
                         pitr_history: bool | None = None) -> BackupSummary:
    """Back up a running S3-resident MatrixOne in one process: BACKUP into a staging prefix under
    `staging_root`, stream-check-store every staged object, commit, remove the staging prefix.
    `extra`: more to record (the PITR windows, engine/pitr.py). `shared`: the cluster's SHARED key
    prefix; with it, the objects there a PITR restore needs that BACKUP left out are stored too
    (engine/pitr_history_s3.py), by default when `extra["pitr"]` lists a PITR window (`pitr_history`
    says otherwise)."""
    from .pitr import has_windows

    source = source or f"{staging_root.url} via {session.where}"
    extra = dict(extra or {})
    take_history = pitr_history if pitr_history is not None else shared is not None and has_windows(extra.get("pitr"))
    if take_history and shared is None:
        raise MobackupError("the PITR history of S3-resident data is read from the cluster's SHARED key prefix: "
                            "give it (--shared-s3)")
    if shared is not None:
        check_shared_prefix(repo, (shared.bucket, shared.prefix), (staging_root.bucket, staging_root.prefix))
    clock = time.monotonic()
    with repo.lock(exclusive=False, purpose=f"online backup of {source}", wait_seconds=60), \
            staged_run(repo, session, staging_root, source=source, backup_type=backup_type, base_id=base_id,
                       server_endpoint=server_endpoint) as (staging, run, staged, scratch):
        records = RunRecords(scratch)  # the file records, on disk
        with contextlib.closing(records):
            _, totals = ingest_part(repo, staging.backend(max(16, repo.parallelism * 2)), staged,
                                    progress=progress, records=records)
            history_inherited: list[str] = []
            if take_history:
                assert shared is not None
                extra["pitr"], history_inherited = _take_history(repo, shared, run, staged, records, totals,
                                                                 extra.get("pitr"), progress)
            records.add_inherit(itertools.chain(_reused_paths(staged), history_inherited))
            summary = commit_backup(repo, run, records, totals, clock=clock, extra=extra)
    (progress or NullProgress()).finish()
    return summary


class _StagedKeys:
    """Whether tae_list names a key (relative to the SHARED prefix), looked up on disk."""

    def __init__(self, staged: StagedBackup) -> None:
        files = staged.files
        self.index = files.index if isinstance(files, StagedList) else None
        self.small = None if self.index is not None else frozenset(f.path for f in files)

    def __contains__(self, key: object) -> bool:
        if self.small is not None:
            return key in self.small
        assert self.index is not None
        return isinstance(key, str) and self.index.has(key)


def _take_history(repo: Repository, shared: S3Place, run: RunInfo, staged: StagedBackup,
                  records: RunRecords, totals: PartTotals, rec: Any,
                  progress: Progress | None) -> tuple[dict[str, Any], list[str]]:
    """After BACKUP: the history objects stored (their records into `records`, totals extended);
    returns extra["pitr"] with history_added, and the history's paths to take from the base."""
    from .pitr import hlc_time, with_history
    from .pitr_history_s3 import list_history

    live = shared.backend(max(16, repo.parallelism * 2))
    base = repo.load_summary(run.base_id) if run.base_id else None
    history = list_history(live, _StagedKeys(staged), hlc_time(run.backup_ts).timestamp(),
                           repo.entries(base) if base else None)
    ingest = _Ingest(repo, live, progress or NullProgress(), history=True, records=records)
    ingest.run(history.items)
    records.flush()
    totals.add(ingest.totals)
    return with_history(rec, history.record(ingest.totals.files, ingest.totals.size, ingest.left_out)), \
        history.inherited
