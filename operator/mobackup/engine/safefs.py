"""Opening and creating files where others can write (a data directory, MatrixOne's staging area, a
directory repository, a log service's data directory), for a process that often runs as root.

A path is resolved again at every use: whoever can write to a directory on it can swap a symbolic
link in between a check and a use, and a root process then reads, writes or re-owns what the link
names. So every directory is entered relative to its parent's descriptor with
`O_DIRECTORY|O_NOFOLLOW`, every file opened relative to its directory's descriptor with `O_NOFOLLOW`
(and `O_EXCL` when created), and metadata is changed on descriptors, never by path.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Sequence
from contextlib import suppress
from typing import BinaryIO

from .errors import MobackupError, PlantedLinkError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO put in a file's place must fail the type check, not hang the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_PREFIX = ".tmp."
# Largest single write(2) of a buffer: the kernel fills a large write's page cache with large folios,
# and in a VM whose memory is backed on first touch that cost 10 times the CPU of the same bytes in
# 256 KiB writes (measured: 0.8 s against 0.08 s of system time per 256 MiB, after a cache drop).
WRITE_SLICE = 256 << 10
MAX_CACHED_DIRS = 512

Ident = tuple[int, int]  # (st_dev, st_ino): what a name was when it was seen


class NotFollowed(MobackupError, OSError):
    """A name that is a symbolic link (or not of the kind, or not the file, that was expected) where
    the engine must not follow one: refused. An OSError too, as the failed open it stands for."""


def identity(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino


def _refusal(dir_fd: int | None, name: str, shown: str, kind: str) -> NotFollowed:
    try:
        link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        link = False
    return NotFollowed(f"{shown} is a symbolic link: refusing" if link else f"{shown} is not {kind}: refusing")


def open_dir_at(dir_fd: int | None, name: str, shown: str, create: bool = False) -> int:
    """The directory `name` of `dir_fd` (None: of the working directory, with `name` a path whose
    last component is not followed), entered without following a link; made first with `create`
    (mode 0o777 less the umask, as `mkdir -p`). NotFollowed when it is a link or not a directory."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _refusal(dir_fd, name, shown, "a directory") from None
        raise
    with suppress(FileExistsError):  # made meanwhile by another writer
        os.mkdir(name, 0o777, dir_fd=dir_fd)
    return open_dir_at(dir_fd, name, shown)  # whatever is there now is checked again


def open_dirs(root_fd: int, parts: Sequence[str], shown: str, create: bool = False) -> int:
    """A new descriptor of the directory `parts` below `root_fd`, entered component by component
    with open_dir_at (`shown` names the root in messages)."""
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts):
            if part in ("", ".", "..") or "/" in part:
                raise MobackupError(f"{shown}/{'/'.join(parts)}: {part!r} is not a name")
            child = open_dir_at(fd, part, f"{shown}/{'/'.join(parts[:depth + 1])}", create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_at(dir_fd: int, name: str, shown: str, expect: Ident | None = None) -> int:
    """The regular file `name` of `dir_fd`, opened for reading without following a link (blocking
    again once it is known to be a regular file). NotFollowed when it is a link, not a regular file,
    or not the file `expect` names (replaced since it was seen)."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV):
            raise _refusal(dir_fd, name, shown, "a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (expect is not None and identity(st) != expect):
        os.close(fd)
        raise NotFollowed(f"{shown} is not a regular file: refusing" if not stat.S_ISREG(st.st_mode)
                          else f"{shown} was replaced since it was listed: refusing")
    os.set_blocking(fd, True)
    return fd


def make_private_dir(parent_fd: int, name: str, shown: str) -> int:
    """A new directory (mode 0o700) and its descriptor, checked to be the one made: where others can
    write, the name could be swapped between mkdir and open (or be taken already: planted)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        raise _refusal(parent_fd, name, shown, "new (it exists already)") from None
    fd = open_dir_at(parent_fd, name, shown)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise NotFollowed(f"{shown} was replaced as it was made: refusing")
    return fd


def create_file(dir_fd: int, name: str, mode: int = 0o666) -> int:
    """A new file `name` in `dir_fd`, created exclusively and never through a link; read-write."""
    return os.open(name, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)


def write_sliced(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of `data` to `fd`, WRITE_SLICE bytes per call at most."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:done + WRITE_SLICE])


def write_atomically(dir_fd: int, name: str, data: bytes | memoryview | BinaryIO, *, replace: bool = True,
                     durable: bool = False) -> bool:
    """`name` in `dir_fd` holds `data`, whole or not at all: written to a new temporary
    `.tmp.<name>.<12 random hex>` beside it, then renamed over it; with `replace=False` linked
    instead, which fails when `name` exists (returns False). `durable`: fsync'd before the rename."""
    tmp = f"{TMP_PREFIX}{name}.{uuid.uuid4().hex[:12]}"
    named = False
    try:
        with os.fdopen(create_file(dir_fd, tmp), "wb") as out:
            if isinstance(data, (bytes, bytearray, memoryview)):
                write_sliced(out.fileno(), data)
            else:
                shutil.copyfileobj(data, out, 1 << 20)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        if replace:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            named = True
            return True
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        return True
    finally:
        if not named:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)


class DirectoryFds:
    """Descriptors of the directories below one open directory (`root_fd`, closed by close()), each
    entered component by component with open_dir_at. The first MAX_CACHED_DIRS stay open until
    close(): a directory is then the one first entered, whatever is renamed meanwhile. Thread-safe.

    With `owned_links_only` (a tree that its owner writes and root may read), a file with several
    names must belong to the owner of the root directory: else it is a hard link planted to another
    user's file (the kernel allows one when fs.protected_hardlinks is off), which root would read for
    them, and open_file refuses it (PlantedLinkError)."""

    def __init__(self, root_fd: int, shown: str, owned_links_only: bool = False) -> None:
        self.root_fd = root_fd
        self.shown = shown
        self.lock = threading.Lock()
        self.fds: dict[str, int] = {"": root_fd}
        self.link_owner = os.fstat(root_fd).st_uid if owned_links_only else None

    def open_dir(self, rel: str, create: bool = False) -> tuple[int, bool]:
        """A descriptor of the directory `rel` and whether the caller must close it."""
        with self.lock:
            fd = self.fds.get(rel)
        if fd is not None:
            return fd, False
        fd = open_dirs(self.root_fd, rel.split("/"), self.shown, create)
        with self.lock:
            if len(self.fds) < MAX_CACHED_DIRS and rel not in self.fds:
                self.fds[rel] = fd  # closed by close(), never before
                return fd, False
        return fd, True

    def parent(self, rel: str, create: bool = False) -> tuple[int, bool, str]:
        """(a descriptor of the directory holding `rel`, whether to close it, the last name)."""
        parent, _, name = rel.rpartition("/")
        fd, owned = self.open_dir(parent, create)
        return fd, owned, name

    def open_file(self, rel: str, expect: Ident | None = None) -> int:
        """The regular file `rel` opened for reading (open_file_at)."""
        parent, owned, name = self.parent(rel)
        try:
            fd = open_file_at(parent, name, f"{self.shown}/{rel}", expect)
        finally:
            if owned:
                os.close(parent)
        st = os.fstat(fd)
        if self.link_owner is not None and st.st_nlink > 1 and st.st_uid != self.link_owner:
            os.close(fd)
            raise PlantedLinkError(f"{self.shown}/{rel} has {st.st_nlink} names and belongs to uid {st.st_uid}, not "
                                   f"to the owner of {self.shown} (uid {self.link_owner}): refusing to read a hard "
                                   "link planted to another user's file")
        return fd

    def lstat(self, rel: str) -> os.stat_result:
        parent, owned, name = self.parent(rel)
        try:
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        finally:
            if owned:
                os.close(parent)

    def close(self) -> None:
        with self.lock:
            fds, self.fds = list(self.fds.values()), {}
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> DirectoryFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
