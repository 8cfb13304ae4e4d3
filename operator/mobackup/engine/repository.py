"""A backup repository: configuration, blobs, backup manifests and locks.

The format is specified in docs/repository-format.md; keep the two in step.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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
from .index import DigestSet
from .manifest import MAX_PATH_DEPTH
from .model import BackupSummary, iso, parse_iso, utc_now
from .objectlock import ObjectLock
from .objectlock import config_problem as object_lock_problem
from .storage import Backend, LocalBackend, ObjectNotFound, RateLimiter
from .workers import BoundedWorkers

FORMAT_NAME = "mobackup-repository"
FORMAT_VERSION = 1
CONFIG_KEY = "mobackup.json"
DEFAULT_CHUNK_SIZE = 8 << 20
MAX_CHUNK_SIZE = 1 << 30
MAX_PARALLELISM = 256
FRAME_TARGET = 1 << 20  # plaintext bytes of file-list lines per frame
# Largest plaintext of a file-list frame, a summary or a run record: a reader inflates no more (a
# small zstd frame can declare gigabytes). Writers stay far below: frames are about FRAME_TARGET.
MAX_META_SIZE = 64 << 20
FRAME_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE  # frame type byte, nonce and tag (section 4)
LOCK_REFRESH_SECONDS = 60.0
LOCK_CLOCK_SKEW_SECONDS = 120.0  # how far ahead of ours another clock may be and still be believed


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
    lock_days: float | None = None  # S3 Object Lock retention of a repository this creates (objectlock.py)
    lock_mode: str = "COMPLIANCE"
    parallelism: int | None = None  # concurrent transfers; default 4 on a directory, 8 on S3
    bandwidth_limit: int | None = None  # bytes per second, all transfers together

    @classmethod
    def from_env(cls, url: str, key_env: str = "MOBACKUP_ENCRYPTION_KEY", **overrides: Any) -> RepositoryOptions:
        """`key_env`: the variable of the key (and `<key_env>_FILE` of its file); a second repository
        (the target of a copy) has its own."""
        env = os.environ
        # An explicit key file (--encryption-key-file) wins over the environment's key, which wins
        # over the environment's key file. A key that is empty or only white space is refused: taken
        # as "no key", it would silently create (or read) a plaintext repository.
        explicit_file = overrides.pop("encryption_key_file", None)
        key = None if explicit_file else env.get(key_env) or None
        if key is not None and not key.strip():
            raise EncryptionKeyError(f"{key_env} is only white space: give a real key or unset it")
        key_file = explicit_file or (None if key else env.get(f"{key_env}_FILE") or None)
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
    if config.get("object_lock") is not None:
        problem = object_lock_problem(config["object_lock"])
        if problem:
            return problem
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


def host_name() -> str:
    """socket.gethostname() without importing socket (start-up time): both are uname's node name."""
    return os.uname().nodename


def _process_start_time(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot), to tell a reused PID from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_identity() -> dict[str, Any]:
    """What tells this process from every other that could write a lock: its PID and start time
    are only meaningful within one boot (`boot_id`) and one PID namespace (`pid_ns`, the inode of
    /proc/self/ns/pid). Host names do not tell: containers share them. The fields this process
    cannot know are None, and then nobody may judge it by its PID."""
    pid = os.getpid()
    identity: dict[str, Any] = {"pid": pid, "pid_start": None, "boot_id": None, "pid_ns": None}
    try:
        # A /proc mounted from another PID namespace (unshare without --mount-proc, the host's /proc
        # in a container) shows other processes under our PIDs: then no PID here can be checked.
        if os.readlink("/proc/self") != str(pid):
            return identity
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return identity
    identity.update(pid_start=_process_start_time(pid), boot_id=_boot_id(), pid_ns=pid_ns)
    return identity


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def lock_holder_is_gone(record: dict[str, Any]) -> bool:
    """Whether a lock's holder is known to be dead: only a holder of this boot and this PID
    namespace can be looked up by PID; any other (another container with the same host name, an
    older record without these fields) is judged by its refresh time alone."""
    own = process_identity()
    if own["boot_id"] is None or own["pid_ns"] is None:
        return False
    pid, start = record.get("pid"), record.get("pid_start")
    if record.get("boot_id") != own["boot_id"] or record.get("pid_ns") != own["pid_ns"]:
        return False
    if not _is_int(pid) or pid <= 0 or not isinstance(start, str):
        return False
    current = _process_start_time(pid)
    if current is None:
        # No /proc entry: gone, unless /proc hides other users' processes (hidepid), which a
        # signal-0 probe still sees.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (OSError, OverflowError):  # alive but not ours to signal; or no possible PID
            return False
        return False
    return current != start  # a different start time: the PID now belongs to another process


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
        self._locks_seen: dict[str, tuple[bytes, float]] = {}  # lock key -> (content, first seen), see lock_is_stale
        self.object_lock = ObjectLock.from_config(config.get("object_lock"))
        if self.object_lock is not None:
            if not hasattr(backend, "retain"):
                raise RepositoryFormatError(f"{self.location}: the configuration asks for S3 Object Lock, which only "
                                            "an S3 repository has")
            backend.versioned = True  # type: ignore[attr-defined]

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
        if options.lock_days is not None:
            lock = ObjectLock.from_config({"mode": options.lock_mode.upper(), "days": options.lock_days})
            if not getattr(backend, "object_lock_enabled", lambda: False)():
                raise MobackupError(f"{backend.location}: --lock-days needs an S3 bucket created with Object Lock "
                                    "enabled (ObjectLockEnabledForBucket)")
            config["object_lock"] = lock.to_config() if lock else None
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
        except (ValueError, RecursionError):  # RecursionError: nested a million levels deep
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
                return len(self.get_blob(digest, plain_size)) == plain_size
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
        if self.object_lock is not None:
            self.backend.write(key, stored, retain=(self.object_lock.mode, self.object_lock.until()))  # type: ignore[call-arg]
        else:
            self.backend.write(key, stored)
        return len(stored)

    @property
    def local_plain(self) -> LocalBackend | None:
        """The directory backend of a repository that stores blobs verbatim: blobs can then be copied
        file to file inside the kernel, as `cp` does."""
        if self.codec.plain and isinstance(self.backend, LocalBackend):
            return self.backend
        return None

    def chunk_plain_size(self, file_size: int, index: int) -> int:
        """The plaintext size of chunk `index` of a file of `file_size` bytes (the last one is short)."""
        return min(self.chunk_size, file_size - index * self.chunk_size)

    def prefetch_blobs(self, digests: list[str]) -> None:
        """Asks the kernel to read these blobs into the page cache in the background (a directory
        repository; elsewhere nothing): a restore names the next objects' blobs while it uploads
        the last, and then reads them from memory. Nothing is checked or trusted here: get_blob
        reads and checks them as ever."""
        if not isinstance(self.backend, LocalBackend) or not hasattr(os, "posix_fadvise"):
            return
        for digest in digests:
            try:
                fd = self.backend.open_fd(blob_key(digest))
            except (OSError, MobackupError):
                continue  # the read will say what is wrong
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def get_blob(self, digest: str, plain_size: int | None = None) -> bytes:
        """The blob's plaintext, checked against its name. It is never inflated beyond `plain_size`
        (the size the file list gives this chunk), or the chunk size when the caller cannot know."""
        key = blob_key(digest)
        stored = self.backend.read(key)
        if self.limiter:
            self.limiter.consume(len(stored))
        plain = self.codec.decode(stored, key, self.chunk_size if plain_size is None else plain_size)
        if self.codec.digest(plain) != digest:
            raise CorruptDataError(f"{self.location}/{key}: content does not match its digest")
        return plain

    # ----- backups -------------------------------------------------------------------------------

    def _encode_meta(self, data: bytes, key: str) -> bytes:
        return data if self.codec.plain else self.codec.encode(data, key, compress=True)

    def _decode_meta(self, stored: bytes, key: str, limit: int = MAX_META_SIZE) -> bytes:
        return stored if self.codec.plain else self.codec.decode(stored, key, limit, framed=True)

    def load_summary(self, backup_id: str) -> BackupSummary:
        key = summary_key(backup_id)
        try:
            raw = self.backend.read(key)
        except ObjectNotFound:
            raise BackupNotFound(f"no completed backup {backup_id} in {self.location}") from None
        try:
            summary = BackupSummary.from_dict(json.loads(self._decode_meta(raw, key)))
        except (ValueError, TypeError, RecursionError) as error:
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
        """Upload the file list, make all blobs durable, then write the summary (the commit point).
        Under Object Lock every blob the backup uses is first retained until the backup's own date,
        which its summary records (`extra.locked_until`)."""
        key = summary_key(summary.id)
        if self.object_lock is None:
            self.backend.write_file(files_key(summary.id), files_path)
            self.backend.flush()
            self.backend.write(key, self._encode_meta(json.dumps(summary.to_dict(), indent=1).encode(), key))
            self.backend.flush()
            return
        retain = (self.object_lock.mode, self.object_lock.until())
        self._retain_blobs(summary, files_path, retain)
        summary.extra.update(locked_until=iso(retain[1]), lock_mode=retain[0])
        backend: Any = self.backend
        backend.write_file(files_key(summary.id), files_path, retain=retain)
        backend.flush()
        backend.write(key, self._encode_meta(json.dumps(summary.to_dict(), indent=1).encode(), key), retain=retain)
        backend.flush()

    def _retain_blobs(self, summary: BackupSummary, files_path: Path, retain: tuple[str, datetime]) -> None:
        """Extend the retention of each distinct blob of a file list (a blob stays locked as long as
        the newest backup that uses it), after checking that the listing holds every one: an
        incremental reuses its base's blobs unread, and a delete marker (which anyone with delete
        permission may add under a lock) hides one while a retention request may still succeed."""
        backend: Any = self.backend
        with tempfile.TemporaryDirectory(prefix="mobackup-retain-") as scratch:
            listed = DigestSet(Path(scratch) / "listed.sqlite")
            seen = DigestSet(Path(scratch) / "seen.sqlite")
            try:
                for digest, _ in self.blob_sizes():
                    listed.add(digest)
                with BoundedWorkers(self.parallelism, "mobackup-retain") as workers:
                    for record in self.entries(summary, files_path):
                        for digest in record.get("chunks", ()) if record.get("type") == "file" else ():
                            if workers.failed:
                                break
                            if seen.add_new(digest):
                                if digest not in listed:
                                    raise CorruptDataError(
                                        f"{self.location}/{blob_key(digest)}: missing (deleted early? a delete "
                                        f"marker may hide it): backup {summary.id} is not published")
                                workers.submit(backend.retain, blob_key(digest), *retain)
            finally:
                seen.close()
                listed.close()

    def download_file_list(self, summary: BackupSummary, path: Path) -> None:
        """A local copy of a backup's file list: what is checked is then what is used, whatever
        happens to the repository meanwhile."""
        with self.backend.open_read(files_key(summary.id)) as stream, open(path, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)

    def entries(self, summary: BackupSummary, local_copy: Path | None = None) -> Iterator[dict[str, Any]]:
        """Stream the file list of a backup (or its `local_copy`), checking its count and digest at
        the end. Entries are not checked here: see manifest.ManifestChecker."""
        yield from self.framed_entries(files_key(summary.id), summary.files_digest, summary.entry_count,
                                       summary.files_frames, local_copy)

    def framed_entries(self, key: str, digest: str, entry_count: int, frame_count: int,
                       local_copy: Path | None = None) -> Iterator[dict[str, Any]]:
        """Stream a list in the file-list format (FileListWriter) stored under `key`, checking its
        entry and frame counts and its digest at the end (a part record's file records use it too)."""
        hasher = self.codec.hasher()
        count = frames = 0
        with (open(local_copy, "rb") if local_copy else self.backend.open_read(key)) as stream:
            while True:
                header = _read_exact(stream, 4, key, allow_eof=True)
                if not header:
                    break
                (length,) = struct.unpack(">I", header)
                if length > MAX_META_SIZE + FRAME_OVERHEAD:  # checked before it is allocated and read
                    raise CorruptDataError(f"{self.location}/{key}: frame {frames} of {length} bytes is larger "
                                           f"than any writer makes ({MAX_META_SIZE} bytes of entries at most)")
                payload = self.codec.decode(_read_exact(stream, length, key), f"{key}#{frames}", MAX_META_SIZE,
                                            framed=True)
                frames += 1
                hasher.update(payload)
                for line in payload.splitlines():
                    count += 1
                    try:
                        yield json.loads(line)
                    except (ValueError, RecursionError):
                        raise CorruptDataError(f"{self.location}/{key}: unreadable entry {count}") from None
        intact = hasher.hexdigest() == digest
        if count != entry_count or frames != frame_count or not intact:
            raise CorruptDataError(
                f"{self.location}/{key}: file list is truncated or altered "
                f"({count} of {entry_count} entries, {frames} of {frame_count} frames)"
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
        identity = process_identity()
        record = {
            "exclusive": exclusive, "purpose": purpose, "host": host_name(), "pid": identity["pid"],
            "pid_start": identity["pid_start"], "boot_id": identity["boot_id"], "pid_ns": identity["pid_ns"],
            "created_at": iso(utc_now()),
        }
        while True:
            record["refreshed_at"] = iso(utc_now())
            self.backend.write(key, json.dumps(record).encode())
            conflict = self._conflicting_lock(lock_id, exclusive)
            if conflict is None:
                break
            self.backend.delete([key])
            if time.monotonic() >= deadline:
                raise LockedError(f"{self.location} is locked by {conflict}; try again later")
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

    def _read_locks(self) -> Iterator[tuple[str, dict[str, Any] | None, float, bytes]]:
        """(key, record, storage modification time, raw bytes) of each lock object. The record is
        None when the object is not a JSON object: writes are atomic, so that is not a half-written
        lock but a foreign or damaged one, judged as live until its object is stale."""
        for info in self.backend.list("locks/"):
            try:
                raw = self.backend.read(info.key)
            except ObjectNotFound:
                continue  # withdrawn meanwhile
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):
                record = None
            yield info.key, record if isinstance(record, dict) else None, info.modified, raw

    def _conflicting_lock(self, own_id: str, exclusive: bool) -> str | None:
        """A description of a live lock that conflicts with ours, or None."""
        for key, other, modified, raw in self._read_locks():
            if key == f"locks/{own_id}.json":
                continue
            # Anything but a recorded `false` may be exclusive: an unreadable lock is assumed to be.
            if not (exclusive or (other or {}).get("exclusive") is not False):
                continue
            if self.lock_is_stale(other, modified, first_seen=self._first_seen(key, raw)):
                if exclusive:
                    self.backend.delete([key])  # breaking a dead lock is safe for the exclusive locker
                continue
            return _describe_lock(key, other, modified)
        return None

    def _first_seen(self, key: str, raw: bytes) -> float:
        """When this process first saw this lock object with exactly this content (time.time())."""
        seen = self._locks_seen.get(key)
        if seen is None or seen[0] != raw:  # new, or rewritten (refreshed) since
            seen = self._locks_seen[key] = (raw, time.time())
        return seen[1]

    @staticmethod
    def lock_is_stale(record: dict[str, Any] | None, modified: float | None = None,
                      first_seen: float | None = None) -> bool:
        """Whether a lock (its record, None when unreadable; its object's modification time as the
        storage reports it) is dead: its holder is known gone (lock_holder_is_gone), or no sign of
        life is younger than lock_stale_seconds()."""
        if record is not None and lock_holder_is_gone(record):
            return True
        now = time.time()
        refreshed = None
        if record is not None and isinstance(record.get("refreshed_at"), str):
            with suppress(ValueError, OverflowError):
                refreshed = parse_iso(record["refreshed_at"]).timestamp()
        # Signs of life: the refresh time the holder recorded, and the time the storage says the
        # object was last written (which also advances with each refresh, and by the storage's
        # clock on S3). The latest counts, so a holder whose clock lags is not broken while it
        # refreshes. A time further ahead than LOCK_CLOCK_SKEW_SECONDS says nothing (a wrong clock
        # or a forged record): trusted, it would hold the lock until that date, blocking prune for
        # good. If no time is plausible, the lock is judged by how long this process has seen it
        # unchanged: a live holder rewrites it every LOCK_REFRESH_SECONDS.
        plausible = [t for t in (refreshed, modified) if t is not None and t <= now + LOCK_CLOCK_SKEW_SECONDS]
        if plausible:
            last = max(plausible)
        elif first_seen is not None:
            last = first_seen
        else:
            return False
        return now - last > lock_stale_seconds()

    def check_access(self) -> None:
        self.backend.check_access()


def _describe_lock(key: str, record: dict[str, Any] | None, modified: float) -> str:
    """The holder of a lock, for a message; every field is untrusted input of any type."""
    try:
        written = iso(datetime.fromtimestamp(modified, UTC))
    except (OverflowError, OSError, ValueError):
        written = "at an impossible time"
    if record is None:
        return f"an unreadable lock object {key} (last written {written})"

    def text(name: str) -> str:
        return str(record.get(name))[:200]

    return (f"{text('purpose')} on {text('host')} (pid {text('pid')}, since {text('created_at')}, "
            f"refreshed {text('refreshed_at')}, written {written})")


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

    def __init__(self, codec: Codec, backup_id: str, directory: Path, key: str | None = None) -> None:
        """`key`: where the list will be stored, if not as the file list of `backup_id` (each frame
        is bound to it)."""
        self.codec = codec
        self.key = key or files_key(backup_id)
        fd, name = tempfile.mkstemp(prefix="mobackup-files-", dir=directory)
        self.path = Path(name)
        self.out = os.fdopen(fd, "wb")
        self.hasher = codec.hasher()
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.count = 0
        self.frames = 0

    def add(self, entry: dict[str, Any]) -> None:
        # Readers refuse what is beyond these limits: fail the backup now rather than write one that
        # can never be restored.
        if entry["path"].count("/") >= MAX_PATH_DEPTH:
            raise MobackupError(f"{entry['path']}: more than {MAX_PATH_DEPTH} path components, which a "
                                "restore refuses")
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_META_SIZE:
            raise MobackupError(f"{entry['path']}: its file-list entry takes {len(line)} bytes, more than the "
                                f"{MAX_META_SIZE} a reader accepts in one frame")
        if self.pending_size + len(line) > MAX_META_SIZE:
            self._flush_frame()
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
