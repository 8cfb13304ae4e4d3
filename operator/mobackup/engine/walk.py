"""Streaming walk of a source tree: flat memory, whatever the number of files."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .layout import PathRules


@dataclass(frozen=True)
class SourceEntry:
    rel: str  # POSIX path relative to the root
    kind: str  # "file" | "dir" | "symlink"
    size: int
    mode: int
    mtime_ns: int
    target: str | None = None  # symlinks only
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of a regular file with more than one link


def special_kind(mode: int) -> str:
    """What a skipped non-data entry is, for the message that says it was skipped."""
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "special file"


def walk(root: Path, rules: PathRules, skipped: list[tuple[str, str]] | None = None) -> Iterator[SourceEntry]:
    """Every entry below `root` (directories before their contents), excluded ones left out.
    FIFOs, sockets and devices are not data: they are left out and, with `skipped`, reported there
    as (path, kind).

    Directory listings are streamed from `os.scandir`, not sorted: MatrixOne keeps millions of
    objects in one flat directory, and sorting would hold all their names in memory.
    """
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            iterator = os.scandir(directory)
        except FileNotFoundError:
            continue  # removed since its parent was listed; files in it are reported as vanished
        with iterator as entries:
            for entry in entries:
                rel = prefix + entry.name
                if rules.excluded(rel):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    yield SourceEntry(rel, "dir", 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
                    stack.append((entry.path, rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    inode = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
                    yield SourceEntry(rel, "file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, inode=inode)
                elif stat.S_ISLNK(st.st_mode):
                    yield SourceEntry(
                        rel, "symlink", 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns, os.readlink(entry.path)
                    )
                elif skipped is not None:
                    skipped.append((rel, special_kind(st.st_mode)))


def tree_totals(root: Path, rules: PathRules) -> tuple[int, int]:
    """(bytes, files) of the regular files a backup would read, for progress and ETA."""
    total_bytes = total_files = 0
    for entry in walk(root, rules):
        if entry.kind == "file":
            total_bytes += entry.size
            total_files += 1
    return total_bytes, total_files


def path_of(root: Path, rel: str) -> Path:
    return Path(os.path.join(root, rel))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path, ignore_errors: bool = False) -> None:
    """`shutil.rmtree` without recursion: Python 3.11's recurses once per level and fails with
    RecursionError on a tree a thousand levels deep, which would then stay behind. Like it, this
    never follows a symbolic link; one directory descriptor is open at a time, whatever the depth
    (a parent is reached again through "..", checked to be the directory left)."""
    try:
        _remove_tree(path)
    except OSError:
        if not ignore_errors:
            raise


def _remove_tree(path: Path) -> None:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(path)  # a file or a symbolic link: removed, never followed
        return
    above: list[tuple[str, tuple[int, int]]] = []  # per level: (name, (st_dev, st_ino) of its parent)
    try:
        while True:
            with os.scandir(fd) as scan:
                entries = list(scan)
            child = None
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    child = child or entry.name
                else:
                    os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                st = os.fstat(fd)
                try:
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except OSError as error:
                    if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    os.unlink(child, dir_fd=fd)  # replaced by a link or a file meanwhile
                    continue
                above.append((child, (st.st_dev, st.st_ino)))
                os.close(fd)
                fd = sub
                continue
            if not above:
                break
            name, parent_id = above.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != parent_id:
                raise OSError(errno.ESTALE, "a directory was moved while its tree was being removed", str(path))
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)
