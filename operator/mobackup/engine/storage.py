"""Storage backends: a flat key/value space of immutable objects (a directory, or S3).

Keys are `/`-separated relative paths such as `blobs/ab/ab12...`. Every write is atomic: a reader
sees the whole object or nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from .errors import MobackupError

TMP_PREFIX = ".tmp."
# The names LocalBackend gives its temporaries: `_tmp_path` names `.tmp.<final name>.<12 hex>`
# beside the final object, `copy_range_to_temporary` names `.tmp.chunk.<32 hex>`.
CHUNK_TEMPORARY = re.compile(r"\.tmp\.chunk\.[0-9a-f]{32}")
# Below this size a kernel copy's fixed cost (a temporary file, a second open, mmap) exceeds copying the
# bytes through Python (benchmarks/: 1,000,000 tiny files backed up 25% and restored 3x slower).
KERNEL_COPY_MIN = 256 << 10
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def kernel_copy(source: int, target: int, offset: int, length: int) -> int:
    """Copy up to `length` bytes of `source` at `offset` to the current position of `target`, inside
    the kernel (no copy through Python). Returns the bytes copied; fewer only at the end of `source`."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(source, target, length - done, offset + done)
        except OSError as error:
            if error.errno not in _NO_COPY_FILE_RANGE:
                raise
            n = os.sendfile(target, source, offset + done, length - done)  # other file systems
        if n == 0:
            break
        done += n
    return done


def temporary_names(final: str) -> re.Pattern[str]:
    """The names `LocalBackend._tmp_path` gives the temporaries of final names that match `final`
    (a regular expression)."""
    return re.compile(rf"\.tmp\.(?:{final})\.[0-9a-f]{{12}}")


class ObjectNotFound(MobackupError):
    """No object under this key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # seconds since the epoch


class Backend(Protocol):
    location: str

    def read(self, key: str) -> bytes: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def write(self, key: str, data: bytes | memoryview) -> None: ...
    def write_file(self, key: str, path: Path) -> None: ...
    def write_new(self, key: str, data: bytes) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, keys: Iterable[str]) -> int: ...
    def flush(self) -> None: ...
    def check_access(self) -> None: ...


def _syncfs(path: Path) -> None:
    """Make everything written to the file system of `path` durable, in one call."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (AttributeError, OSError):
        os.sync()
    finally:
        os.close(fd)


class LocalBackend:
    """A directory on a local or mounted file system (a PVC, NFS...)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.location}/{key}: missing") from None

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.location}/{key}: missing") from None

    def _tmp_path(self, final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.parent / f"{TMP_PREFIX}{final.name}.{uuid.uuid4().hex[:12]}"

    def write(self, key: str, data: bytes | memoryview) -> None:
        final = self._path(key)
        tmp = self._tmp_path(final)
        try:
            with open(tmp, "wb") as out:
                out.write(data)
            os.rename(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_new(self, key: str, data: bytes) -> bool:
        """Create the object only if it does not exist; False when it did."""
        final = self._path(key)
        tmp = self._tmp_path(final)
        try:
            tmp.write_bytes(data)
            os.link(tmp, final)  # atomic, and fails when `final` exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def copy_range_to_temporary(self, prefix: str, source: int, offset: int, length: int) -> tuple[Path, int]:
        """A new temporary object under `prefix` holding up to `length` bytes of `source` at `offset`,
        copied inside the kernel; returns its path and size (give it a name with `adopt`)."""
        directory = self._path(prefix)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{TMP_PREFIX}chunk.{uuid.uuid4().hex}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            return tmp, kernel_copy(source, out, offset, length)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(out)

    def adopt(self, tmp: Path, key: str, replace: bool = False) -> bool:
        """Name a temporary object; False (and the temporary removed) when the key exists already,
        unless `replace` (a damaged object is being stored again)."""
        final = self._path(key)
        if not replace and final.exists():
            tmp.unlink()
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
        return True

    def write_file(self, key: str, path: Path) -> None:
        final = self._path(key)
        tmp = self._tmp_path(final)
        try:
            shutil.copyfile(path, tmp)
            os.rename(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        stack = [base]
        while stack:
            directory = stack.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif not entry.name.startswith(TMP_PREFIX):
                        st = entry.stat(follow_symlinks=False)
                        key = Path(entry.path).relative_to(self.root).as_posix()
                        yield ObjectInfo(key, st.st_size, st.st_mtime)

    def list_temporary(self, places: Iterable[tuple[str, re.Pattern[str]]], older_than: float) -> Iterator[Path]:
        """Leftovers of interrupted writes (for prune): in each place (a directory relative to the
        root, where a `*` component stands for any subdirectory; not below it), the regular files
        whose whole name matches the place's pattern (see `temporary_names`) and that were last
        modified before `older_than`. Nothing else is touched: a repository directory may hold,
        or sit above, files of others (MatrixOne names its own in-flight files `.tmp.*` too)."""
        for directory, names in places:
            for base in self._directories(directory):
                try:
                    with os.scandir(base) as scan:
                        entries = list(scan)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    if not names.fullmatch(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < older_than:
                        yield Path(entry.path)

    def _directories(self, pattern: str) -> list[Path]:
        """The directories below the root that `pattern` names (`*`: any one), never reached
        through a symbolic link, which could lead out of the repository."""
        found = [self.root]
        for part in (p for p in pattern.split("/") if p):
            step: list[Path] = []
            for parent in found:
                try:
                    with os.scandir(parent) as entries:
                        step.extend(Path(e.path) for e in entries
                                    if (part == "*" or e.name == part) and e.is_dir(follow_symlinks=False))
                except (FileNotFoundError, NotADirectoryError):
                    continue
            found = step
        return found

    def delete(self, keys: Iterable[str]) -> int:
        count = 0
        for key in keys:
            try:
                self._path(key).unlink()
                count += 1
            except FileNotFoundError:
                pass
        return count

    def flush(self) -> None:
        _syncfs(self.root)

    def check_access(self) -> None:
        if not self.root.is_dir():
            raise MobackupError(f"{self.location}: not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise MobackupError(f"{self.location}: not writable")


class RateLimiter:
    """A token bucket shared by all transfer threads (bytes per second)."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = float(bytes_per_second)
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def consume(self, nbytes: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + nbytes / self.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)
