"""Storage backends: a flat key/value space of immutable objects (a directory, or S3).

Keys are `/`-separated relative paths such as `blobs/ab/ab12...`. Every write is atomic: a reader
sees the whole object or nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .errors import MobackupError
from .safefs import TMP_PREFIX, create_file, open_dirs, open_file_at, write_atomically

# The names LocalBackend gives its temporaries: `write` names `.tmp.<final name>.<12 hex>`
# beside the final object (safefs.write_atomically), `copy_range_to_temporary` names `.tmp.chunk.<32 hex>`.
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
    """The names `LocalBackend.write` gives the temporaries of final names that match `final`
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


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


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


SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None  # libc's, once looked up; False where there is none


def start_writeback(fd: int) -> int | None:
    """Asks the kernel to start writing `fd`'s dirty pages to disk now, without waiting
    (sync_file_range WRITE): publishing's syncfs then finds a backup's blobs written or under way
    instead of all of them still dirty (an online full of 100 MB: publish 0.19 s -> 0.03 s, the
    writes overlapping MatrixOne's BACKUP). Only a hint, durability stays syncfs's job: returns the
    call's result (-1 where the kernel refuses the descriptor), None where libc has no such call."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            function = ctypes.CDLL(None, use_errno=True).sync_file_range
            function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            function.restype = ctypes.c_int
            _sync_file_range = function
        except (AttributeError, OSError):
            _sync_file_range = False
    if not _sync_file_range:
        return None
    return int(_sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE))


@dataclass
class Temporary:
    """A new object of a directory repository that has no name yet: its directory's descriptor, its
    temporary name there (None once adopted) and its own descriptor (read-write)."""

    dir_fd: int
    name: str | None
    fd: int

    def discard(self) -> None:
        """Removes it unless it was adopted, and closes its descriptors; again, nothing."""
        if self.name is not None:
            with suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self.dir_fd)
            self.name = None
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1


class LocalBackend:
    """A directory on a local or mounted file system (a PVC, NFS...).

    Whoever else can write below the root could plant a symbolic link for `blobs/`, `blobs/ab` or
    `locks/`, and a writer running as root would then write anywhere (a blob into a cron directory).
    So no name below the root is ever followed: each directory is entered relative to its parent's
    descriptor with O_NOFOLLOW, objects are opened with O_NOFOLLOW and created with O_EXCL, and a
    link is refused with an error that names it. The root itself is the configured path (which may
    be a link: the operator's choice)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.shown = f"repository path {root}"

    def _open_dir(self, parts: list[str], create: bool = False) -> int:
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return open_dirs(root, parts, self.shown, create)
        finally:
            os.close(root)

    def _parent(self, key: str, create: bool = False) -> tuple[int, str]:
        """A descriptor of the directory that holds `key`, and the key's last name."""
        *parts, name = key.split("/")
        if name in ("", ".", ".."):
            raise MobackupError(f"{self.shown}/{key}: not an object key")
        return self._open_dir(parts, create), name

    def open_fd(self, key: str) -> int:
        """A read-only descriptor of the object (a regular file, never reached through a link)."""
        try:
            parent, name = self._parent(key)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.location}/{key}: missing") from None
        try:
            return open_file_at(parent, name, f"{self.shown}/{key}")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.location}/{key}: missing") from None
        finally:
            os.close(parent)

    def read(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def open_read(self, key: str) -> BinaryIO:
        return open(self.open_fd(key), "rb")

    def _write(self, key: str, data: bytes | memoryview | BinaryIO, replace: bool = True) -> bool:
        parent, name = self._parent(key, create=True)
        try:
            return write_atomically(parent, name, data, replace=replace)
        finally:
            os.close(parent)

    def write(self, key: str, data: bytes | memoryview) -> None:
        self._write(key, data)

    def write_new(self, key: str, data: bytes) -> bool:
        """Create the object only if it does not exist; False when it did."""
        return self._write(key, data, replace=False)

    def copy_range_to_temporary(self, prefix: str, source: int, offset: int, length: int) -> tuple[Temporary, int]:
        """A new temporary object under `prefix` holding up to `length` bytes of `source` at `offset`,
        copied inside the kernel; returns it and its size (name it with `adopt`, or discard it)."""
        directory = self._open_dir(prefix.split("/"), create=True)
        name = f"{TMP_PREFIX}chunk.{uuid.uuid4().hex}"
        try:
            tmp = Temporary(directory, name, create_file(directory, name, 0o644))
        except BaseException:
            os.close(directory)
            raise
        try:
            return tmp, kernel_copy(source, tmp.fd, offset, length)
        except BaseException:
            tmp.discard()
            raise

    def adopt(self, tmp: Temporary, key: str, replace: bool = False) -> bool:
        """Name a temporary object; False (and the temporary removed) when the key exists already,
        unless `replace` (a damaged object is being stored again). The temporary is closed."""
        try:
            parent, name = self._parent(key, create=True)
            try:
                if not replace and _lstat_at(parent, name) is not None:
                    return False
                os.rename(tmp.name or "", name, src_dir_fd=tmp.dir_fd, dst_dir_fd=parent)
                tmp.name = None
                return True
            finally:
                os.close(parent)
        finally:
            tmp.discard()

    def write_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source:
            self._write(key, source)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The size of the object; None when there is none (or something else than a file)."""
        try:
            parent, name = self._parent(key)
        except FileNotFoundError:
            return None
        try:
            st = _lstat_at(parent, name)
        finally:
            os.close(parent)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        top = [p for p in prefix.split("/") if p]
        try:
            os.close(self._open_dir(top))
        except FileNotFoundError:
            return
        stack = [top]
        while stack:
            parts = stack.pop()
            try:
                fd = self._open_dir(parts)
            except FileNotFoundError:
                continue  # removed since it was listed
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append([*parts, entry.name])
                        elif not entry.name.startswith(TMP_PREFIX):
                            st = entry.stat(follow_symlinks=False)
                            yield ObjectInfo("/".join([*parts, entry.name]), st.st_size, st.st_mtime)
            finally:
                os.close(fd)

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
                parent, name = self._parent(key)
            except FileNotFoundError:
                continue
            try:
                os.unlink(name, dir_fd=parent)
                count += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(parent)
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
