"""A backup repository: configuration, blobs, backup manifests and locks.

The format is specified in docs/repository-format.md; keep the two in step.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from .. import __version__
from .codec import (
    NONCE_SIZE,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    TAG_SIZE,
    Codec,
    derive_keys,
    key_matches,
    make_key_check,
)
from .errors import (
    BackupNotFound,
    CorruptDataError,
    EncryptionKeyError,
    LockedError,
    MobackupError,
    RepositoryExists,
    RepositoryFormatError,
    RepositoryNotFound,
)
from .model import BackupSummary, iso, parse_iso, utc_now
from .storage import Backend, LocalBackend, ObjectNotFound, RateLimiter

FORMAT_NAME = "mobackup-repository"
FORMAT_VERSION = 1
CONFIG_KEY = "mobackup.json"
DEFAULT_CHUNK_SIZE = 8 << 20
MAX_CHUNK_SIZE = 1 << 30
MAX_PARALLELISM = 256
FRAME_TARGET = 1 << 20  # plaintext bytes of file-list lines per frame
LOCK_REFRESH_SECONDS = 60.0


def lock_stale_seconds() -> float:
    return float(os.environ.get("MOBACKUP_LOCK_STALE_SECONDS", "300"))


@dataclass
class RepositoryOptions:
    """How to reach a repository. Secrets (the encryption key) come from the environment only."""

    url: str
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_path_style: bool = False
    s3_ca_bundle: str | None = None
    # Secrets: kept out of repr() so that they never reach a log or a traceback.
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    encryption_key: str | None = field(default=None, repr=False)
    compression: str = "none"
    parallelism: int | None = None  # concurrent transfers; default 4 on a directory, 8 on S3
    bandwidth_limit: int | None = None  # bytes per second, all transfers together

    @classmethod
    def from_env(cls, url: str, **overrides: Any) -> RepositoryOptions:
        env = os.environ
        # An explicit key file (--encryption-key-file) wins over the environment's key, which wins
        # over the environment's key file. A key that is empty or only white space is refused: taken
        # as "no key", it would silently create (or read) a plaintext repository.
        explicit_file = overrides.pop("encryption_key_file", None)
        key = None if explicit_file else env.get("MOBACKUP_ENCRYPTION_KEY") or None
        if key is not None and not key.strip():
            raise EncryptionKeyError("MOBACKUP_ENCRYPTION_KEY is only white space: give a real key or unset it")
        key_file = explicit_file or (None if key else env.get("MOBACKUP_ENCRYPTION_KEY_FILE") or None)
        if key_file:
            try:
                key = Path(key_file).read_text().strip()
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or "not text"
                raise MobackupError(f"cannot read encryption key file {key_file}: {reason}") from None
            if not key:
                raise EncryptionKeyError(f"encryption key file {key_file} is empty (or only white space)")
        options = cls(
            url=url,
            s3_endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            s3_path_style=env.get("MOBACKUP_S3_PATH_STYLE", "").lower() in ("1", "true", "yes"),
            s3_ca_bundle=env.get("AWS_CA_BUNDLE") or None,
            encryption_key=key,
        )
        return replace(options, **{k: v for k, v in overrides.items() if v is not None})


def make_backend(options: RepositoryOptions) -> Backend:
    if options.parallelism is not None and not 1 <= options.parallelism <= MAX_PARALLELISM:
        raise MobackupError(f"parallelism {options.parallelism} is out of range (1-{MAX_PARALLELISM})")
    url = options.url
    if url.startswith("s3://"):
        from .s3 import S3Backend  # boto3 is slow to import; only S3 users pay for it

        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise MobackupError(f"{url}: no bucket in the repository URL (s3://BUCKET/PREFIX)")
        return S3Backend(
            bucket, prefix, endpoint=options.s3_endpoint, region=options.s3_region,
            path_style=options.s3_path_style, ca_bundle=options.s3_ca_bundle,
            access_key_id=options.s3_access_key_id, secret_access_key=options.s3_secret_access_key,
            max_connections=max(16, (options.parallelism or 8) * 2),
        )
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        raise MobackupError(f"{url}: unsupported repository URL (use a path, file://PATH or s3://BUCKET/PREFIX)")
    return LocalBackend(Path(url).absolute())


def _config_problem(config: dict[str, Any]) -> str | None:
    """Why a configuration cannot be used, or None. It is read from untrusted storage."""
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    version, chunk_size = config.get("version"), config.get("chunk_size")
    if not is_int(version) or version < 1:
        return f"format version {version!r} is not a version number"
    if not is_int(chunk_size) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        return f"chunk_size {chunk_size!r} is not a size between 1 byte and {MAX_CHUNK_SIZE} bytes"
    if config.get("hash", "blake3-256") != "blake3-256":
        return f"unknown hash {config.get('hash')!r}"
    if config.get("compression", "none") not in ("none", "zstd"):
        return f"unknown compression {config.get('compression')!r}"
    encryption = config.get("encryption")
    if encryption is not None:
        if not isinstance(encryption, dict) or encryption.get("cipher") != "aes-256-gcm":
            return "unknown encryption (expected null or aes-256-gcm)"
        for name in ("salt", "key_check"):
            value = encryption.get(name)
            try:
                if not isinstance(value, str) or not bytes.fromhex(value):
                    raise ValueError
            except ValueError:
                return f"encryption {name} {value!r} is not hex"
    return None


def blob_key(digest: str) -> str:
    return f"blobs/{digest[:2]}/{digest}"


def summary_key(backup_id: str) -> str:
    return f"backups/{backup_id}.json"


def files_key(backup_id: str) -> str:
    return f"backups/{backup_id}.files"


def _process_start_time(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot), to tell a reused PID from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class Repository:
    def __init__(self, backend: Backend, config: dict[str, Any], codec: Codec, options: RepositoryOptions):
        self.backend = backend
        self.config = config
        self.codec = codec
        self.options = options
        self.chunk_size = int(config["chunk_size"])
        self.location = backend.location
        # Measured (benchmarks/): S3 round trips want more requests in flight than local disks.
        self.parallelism = options.parallelism or (4 if isinstance(backend, LocalBackend) else 8)
        self.limiter = RateLimiter(options.bandwidth_limit) if options.bandwidth_limit else None

    # ----- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, options: RepositoryOptions) -> Repository:
        backend = make_backend(options)
        if isinstance(backend, LocalBackend):
            backend.root.mkdir(parents=True, exist_ok=True)
        if options.compression not in ("none", "zstd"):
            raise MobackupError(f"unknown compression {options.compression!r} (none or zstd)")
        config: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": uuid.uuid4().hex,
            "created_at": iso(utc_now()),
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "hash": "blake3-256",
            "compression": options.compression,
            "encryption": None,
        }
        keys = None
        if options.encryption_key:
            salt = os.urandom(16)
            keys = derive_keys(options.encryption_key, salt)
            config["encryption"] = {
                "cipher": "aes-256-gcm",
                "kdf": "scrypt",
                "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                "salt": salt.hex(),
                "key_check": make_key_check(keys),
            }
        if not backend.write_new(CONFIG_KEY, json.dumps(config, indent=2).encode() + b"\n"):
            raise RepositoryExists(f"{backend.location}: a repository exists here already")
        return cls(backend, config, Codec(options.compression, keys), options)

    @classmethod
    def open(cls, options: RepositoryOptions) -> Repository:
        backend = make_backend(options)
        try:
            raw = backend.read(CONFIG_KEY)
        except ObjectNotFound:
            raise RepositoryNotFound(f"{backend.location}: no repository here (no {CONFIG_KEY})") from None
        try:
            config = json.loads(raw)
        except ValueError:
            raise RepositoryFormatError(f"{backend.location}/{CONFIG_KEY}: not valid JSON") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise RepositoryFormatError(f"{backend.location}: not a mobackup repository")
        version = config.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise RepositoryFormatError(
                f"{backend.location}: repository format version {version} is newer than this "
                f"mobackup ({__version__}) supports ({FORMAT_VERSION}); upgrade mobackup"
            )
        problem = _config_problem(config)
        if problem:
            raise RepositoryFormatError(f"{backend.location}/{CONFIG_KEY}: {problem}")
        keys = None
        encryption = config.get("encryption")
        if not encryption and options.encryption_key:
            # Refusing is what stops a downgrade: with `"encryption": null` edited into the config of
            # an encrypted repository, a backup run with the key would otherwise store plaintext.
            raise EncryptionKeyError(
                f"{backend.location}: an encryption key was given but the repository is not encrypted; "
                "refusing to store plaintext (if it was created encrypted, its configuration was altered)"
            )
        if encryption:
            if not options.encryption_key:
                raise EncryptionKeyError(
                    f"{backend.location}: repository is encrypted; give its key in "
                    "MOBACKUP_ENCRYPTION_KEY or --encryption-key-file"
                )
            keys = derive_keys(options.encryption_key, bytes.fromhex(encryption["salt"]))
            if not key_matches(keys, encryption["key_check"]):
                raise EncryptionKeyError(f"{backend.location}: wrong encryption key")
        return cls(backend, config, Codec(config.get("compression", "none"), keys), options)

    # ----- blobs ---------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.backend.exists(blob_key(digest))

    def blob_is_sound(self, digest: str, plain_size: int, read: bool = False) -> bool:
        """Whether a stored blob of `plain_size` bytes is usable: by default one size query (as cheap
        as an existence check) compared with the size its encoding must have; with `read`, the blob
        read and its digest recomputed. A damaged blob is then stored again instead of being trusted
        forever because its name exists."""
        if read:
            try:
                return len(self.get_blob(digest)) == plain_size
            except MobackupError:  # missing, truncated, altered
                return False
        size = self.backend.size(blob_key(digest))
        if size is None:
            return False
        expected = self.stored_size(plain_size)
        if expected is None:  # compressed: the exact size is unknown
            return size >= 1 + (NONCE_SIZE + TAG_SIZE if self.codec.keys else 0)
        return size == expected

    def stored_size(self, plain_size: int) -> int | None:
        """The size a blob of `plain_size` bytes takes in the repository; None when compressed."""
        if self.codec.compression == "zstd":
            return None
        return plain_size + (0 if self.codec.plain else 1 + (NONCE_SIZE + TAG_SIZE if self.codec.keys else 0))

    def blob_sizes(self) -> Iterator[tuple[str, int]]:
        for info in self.backend.list("blobs/"):
            yield info.key.rsplit("/", 1)[-1], info.size

    def put_blob(self, digest: str, data: bytes | memoryview) -> int:
        """Store one blob; returns the bytes it takes in the repository."""
        key = blob_key(digest)
        stored = self.codec.encode(data, key)
        if self.limiter:
            self.limiter.consume(len(stored))
        self.backend.write(key, stored)
        return len(stored)

    @property
    def local_plain(self) -> LocalBackend | None:
        """The directory backend of a repository that stores blobs verbatim: blobs can then be copied
        file to file inside the kernel, as `cp` does."""
        if self.codec.plain and isinstance(self.backend, LocalBackend):
            return self.backend
        return None

    def blob_digests(self) -> Iterator[str]:
        for info in self.backend.list("blobs/"):
            yield info.key.rsplit("/", 1)[-1]

    def get_blob(self, digest: str) -> bytes:
        """The blob's plaintext, checked against its name."""
        key = blob_key(digest)
        stored = self.backend.read(key)
        if self.limiter:
            self.limiter.consume(len(stored))
        plain = self.codec.decode(stored, key)
        if self.codec.digest(plain) != digest:
            raise CorruptDataError(f"{self.location}/{key}: content does not match its digest")
        return plain

    # ----- backups -------------------------------------------------------------------------------

    def _encode_meta(self, data: bytes, key: str) -> bytes:
        return data if self.codec.plain else self.codec.encode(data, key, compress=True)

    def _decode_meta(self, stored: bytes, key: str) -> bytes:
        return stored if self.codec.plain else self.codec.decode(stored, key, framed=True)

    def load_summary(self, backup_id: str) -> BackupSummary:
        key = summary_key(backup_id)
        try:
            raw = self.backend.read(key)
        except ObjectNotFound:
            raise BackupNotFound(f"no completed backup {backup_id} in {self.location}") from None
        try:
            summary = BackupSummary.from_dict(json.loads(self._decode_meta(raw, key)))
        except (ValueError, TypeError) as error:
            raise CorruptDataError(f"{self.location}/{key}: unreadable summary ({error})") from None
        if summary.id != backup_id:  # a summary copied under another name points at another list
            raise CorruptDataError(f"{self.location}/{key}: the summary names backup {summary.id!r}")
        return summary

    def backup_ids(self) -> list[str]:
        return [
            info.key[len("backups/") : -len(".json")]
            for info in self.backend.list("backups/")
            if info.key.endswith(".json")
        ]

    def list_backups(self, problems: list[str] | None = None,
                     damaged: dict[str, str] | None = None) -> list[BackupSummary]:
        """Completed backups, oldest first. Unreadable summaries are left out and reported in
        `problems` (reasons) and `damaged` (ID -> reason): one bad summary never hides the others."""
        summaries = []
        for backup_id in self.backup_ids():
            try:
                summaries.append(self.load_summary(backup_id))
            except MobackupError as error:
                if problems is not None:
                    problems.append(str(error))
                if damaged is not None:
                    damaged[backup_id] = str(error)
        summaries.sort(key=lambda s: (s.completed_at, s.id))
        return summaries

    def resolve_id(self, prefix: str) -> str:
        """A full backup ID from an unambiguous prefix (as `git` and `restic` accept)."""
        ids = self.backup_ids()
        if prefix in ids:
            return prefix
        matches = [i for i in ids if i.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise BackupNotFound(f"no completed backup {prefix} in {self.location}")
        raise MobackupError(f"backup ID prefix {prefix} is ambiguous: {', '.join(sorted(matches))}")

    def publish(self, summary: BackupSummary, files_path: Path) -> None:
        """Upload the file list, make all blobs durable, then write the summary (the commit point)."""
        self.backend.write_file(files_key(summary.id), files_path)
        self.backend.flush()
        key = summary_key(summary.id)
        self.backend.write(key, self._encode_meta(json.dumps(summary.to_dict(), indent=1).encode(), key))
        self.backend.flush()

    def download_file_list(self, summary: BackupSummary, path: Path) -> None:
        """A local copy of a backup's file list: what is checked is then what is used, whatever
        happens to the repository meanwhile."""
        with self.backend.open_read(files_key(summary.id)) as stream, open(path, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)

    def entries(self, summary: BackupSummary, local_copy: Path | None = None) -> Iterator[dict[str, Any]]:
        """Stream the file list of a backup (or its `local_copy`), checking its count and digest at
        the end. Entries are not checked here: see manifest.ManifestChecker."""
        key = files_key(summary.id)
        hasher = self.codec.hasher()
        count = frames = 0
        with (open(local_copy, "rb") if local_copy else self.backend.open_read(key)) as stream:
            while True:
                header = _read_exact(stream, 4, key, allow_eof=True)
                if not header:
                    break
                (length,) = struct.unpack(">I", header)
                payload = self.codec.decode(_read_exact(stream, length, key), f"{key}#{frames}", framed=True)
                frames += 1
                hasher.update(payload)
                for line in payload.splitlines():
                    count += 1
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise CorruptDataError(f"{self.location}/{key}: unreadable entry {count}") from None
        intact = hasher.hexdigest() == summary.files_digest
        if count != summary.entry_count or frames != summary.files_frames or not intact:
            raise CorruptDataError(
                f"{self.location}/{key}: file list is truncated or altered "
                f"({count} of {summary.entry_count} entries, {frames} of {summary.files_frames} frames)"
            )

    # ----- locks ---------------------------------------------------------------------------------

    @contextmanager
    def lock(self, exclusive: bool, purpose: str, wait_seconds: float = 0.0) -> Iterator[None]:
        """Shared locks (backups, restores) coexist; an exclusive one (delete, prune) stands alone.

        Protocol: write our lock, then list the others; on conflict withdraw ours. Two lockers that
        race both see each other and both withdraw, so neither proceeds unsafely.
        """
        deadline = time.monotonic() + wait_seconds
        lock_id = uuid.uuid4().hex
        key = f"locks/{lock_id}.json"
        record = {
            "exclusive": exclusive, "purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start_time(os.getpid()), "created_at": iso(utc_now()),
        }
        while True:
            record["refreshed_at"] = iso(utc_now())
            self.backend.write(key, json.dumps(record).encode())
            conflict = self._conflicting_lock(lock_id, exclusive)
            if conflict is None:
                break
            self.backend.delete([key])
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{self.location} is locked by {conflict.get('purpose')} on {conflict.get('host')} "
                    f"(pid {conflict.get('pid')}, since {conflict.get('created_at')}); try again later"
                )
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(LOCK_REFRESH_SECONDS):
                record["refreshed_at"] = iso(utc_now())
                # A failed refresh is retried at the next tick; staleness takes 5 refresh periods.
                with suppress(MobackupError):
                    self.backend.write(key, json.dumps(record).encode())

        refresher = threading.Thread(target=refresh, name="mobackup-lock-refresh", daemon=True)
        refresher.start()
        try:
            yield
        except BaseException:
            stop.set()
            refresher.join()
            # The storage may be what failed: its error must not replace the one that says why. The
            # lock left behind goes stale and is broken safely by the next locker.
            with suppress(MobackupError):
                self.backend.delete([key])
            raise
        stop.set()
        refresher.join()
        self.backend.delete([key])

    def _read_locks(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for info in self.backend.list("locks/"):
            try:
                yield info.key, json.loads(self.backend.read(info.key))
            except (ObjectNotFound, ValueError):
                continue  # withdrawn meanwhile, or half-written by a killed process

    def _conflicting_lock(self, own_id: str, exclusive: bool) -> dict[str, Any] | None:
        for key, other in self._read_locks():
            if key == f"locks/{own_id}.json":
                continue
            if not (exclusive or other.get("exclusive")):
                continue
            if self.lock_is_stale(other):
                if exclusive:
                    self.backend.delete([key])  # breaking a dead lock is safe for the exclusive locker
                continue
            return other
        return None

    @staticmethod
    def lock_is_stale(record: dict[str, Any]) -> bool:
        if record.get("host") == socket.gethostname():
            pid = int(record.get("pid", -1))
            if _process_start_time(pid) != record.get("pid_start"):
                return True  # the process is gone (or its PID was reused)
        try:
            refreshed = parse_iso(record["refreshed_at"])
        except (KeyError, ValueError):
            return True
        return (utc_now() - refreshed).total_seconds() > lock_stale_seconds()

    def check_access(self) -> None:
        self.backend.check_access()


def _read_exact(stream: BinaryIO, size: int, key: str, allow_eof: bool = False) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if allow_eof and not data:
        return b""
    if len(data) != size:
        raise CorruptDataError(f"{key}: truncated ({len(data)} of {size} bytes)")
    return data


class FileListWriter:
    """Writes a backup's file list into a local temporary file, in frames, with flat memory."""

    def __init__(self, codec: Codec, backup_id: str, directory: Path) -> None:
        self.codec = codec
        self.key = files_key(backup_id)
        fd, name = tempfile.mkstemp(prefix="mobackup-files-", dir=directory)
        self.path = Path(name)
        self.out = os.fdopen(fd, "wb")
        self.hasher = codec.hasher()
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.count = 0
        self.frames = 0

    def add(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        self.pending.append(line)
        self.pending_size += len(line)
        self.count += 1
        if self.pending_size >= FRAME_TARGET:
            self._flush_frame()

    def _flush_frame(self) -> None:
        if not self.pending:
            return
        payload = b"".join(self.pending)
        self.hasher.update(payload)
        stored = self.codec.encode(payload, f"{self.key}#{self.frames}", compress=True)
        self.out.write(struct.pack(">I", len(stored)) + stored)
        self.frames += 1
        self.pending.clear()
        self.pending_size = 0

    def close(self) -> None:
        self._flush_frame()
        self.out.close()

    def discard(self) -> None:
        if not self.out.closed:
            self.out.close()
        self.path.unlink(missing_ok=True)


def open_repository(options: RepositoryOptions, create: bool = False) -> Repository:
    """Open the repository at `options.url`; with `create`, initialise it when none exists."""
    try:
        return Repository.open(options)
    except RepositoryNotFound:
        if not create:
            raise
    try:
        return Repository.create(options)
    except RepositoryExists:  # another process created it meanwhile: use theirs
        return Repository.open(options)
