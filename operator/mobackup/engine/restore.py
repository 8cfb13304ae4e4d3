"""Restore a backup into a directory: exactly its file set, verified, durable, then swapped in."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import CorruptDataError, LockedError, MobackupError, TargetNotEmptyError, VolumeFull
from .guards import checked_local_dir, refuse_repository_below
from .layout import log_hostnames
from .manifest import DAMAGED, ManifestChecker
from .progress import NullProgress, Progress, human_bytes
from .repository import Repository, blob_key
from .safefs import DIR_FLAGS, DirectoryFds, NotFollowed, create_file, identity, make_private_dir, open_dir_at
from .storage import KERNEL_COPY_MIN, LocalBackend, ObjectNotFound, _syncfs, kernel_copy, start_writeback
from .walk import remove_tree
from .workers import BoundedWorkers

STAGING_PREFIX = ".mobackup-staging-"
OLD_PREFIX = ".mobackup-old-"
RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically
# The permission bits a restore applies. Never setuid, setgid or sticky: a restore runs as root, so
# a data owner's setuid file would come back root-owned and setuid, and anyone who can edit a file
# list could plant one. The file list still records them (`st_mode & 0o7777`); they are not applied.
RESTORED_MODE_BITS = 0o777
# Space a restore leaves free beyond its estimate: a hundredth of it, and at least this much.
FREE_SPACE_MARGIN = 64 << 20


def _exchange(dir_fd: int, a: str, b: str) -> bool:
    """Atomically swap two directories of `dir_fd` (Linux renameat2). False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(dir_fd, os.fsencode(a), dir_fd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBUSY, errno.EXDEV):
        return False  # unsupported here, or `b` is a mount point after all
    raise OSError(error, os.strerror(error), a)


def _is_mount_point(path: Path) -> bool:
    """Also true for bind mounts of the same file system (how kubelets mount volumes), which
    `os.path.ismount` does not see."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                mount_point = line.split(" ")[4].replace("\\040", " ")
                if mount_point == real:
                    return True
    except OSError:
        pass
    return os.path.ismount(real)


def _stage_beside(target: Path) -> bool:
    """Whether the staging directory can be a sibling of `target` on its file system (so that the
    final swap is one atomic rename); not when `target` is a mount point, such as a PVC's root."""
    parent = target.parent
    try:
        same_fs = os.stat(parent).st_dev == os.stat(target).st_dev
    except OSError:
        return False
    return same_fs and not _is_mount_point(target) and os.access(parent, os.W_OK | os.X_OK)


def _remove_leftovers(directory: Path, prefix: str) -> None:
    """Staging or set-aside directories of an earlier restore that was killed. With a `prefix`
    (staging beside the target), exactly `<prefix><12 hex digits>`: the staging directory of a live
    restore into a sibling whose name extends this target's ("mo" and "mo-2") is not ours."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith((STAGING_PREFIX, OLD_PREFIX)) or not entry.name.startswith(prefix):
                continue
            rest = entry.name[len(prefix):]
            if prefix and not (len(rest) == 12 and all(c in "0123456789abcdef" for c in rest)):
                continue
            remove_tree(Path(entry.path), ignore_errors=True)


def _check_still_there(parent_fd: int, name: str, fd: int, shown: Path) -> None:
    """`name` in `parent_fd` is still the directory of `fd`: where others can write, a link (or
    another directory) may have been swapped in for it."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is None or identity(st) != identity(os.fstat(fd)):
        raise NotFollowed(f"{shown} was replaced during the restore: refusing to swap it in")


def _swap_in(staging: Path, staging_fd: int, parent_fd: int, target: Path, target_fd: int, beside: bool) -> None:
    """Make the staged tree the target's content. Beside the target this is atomic: at every instant
    the target is the old tree or the new one. Inside a mount point, the old entries are first set
    aside (renames), then the staged ones moved in; a kill in between leaves both, hidden.

    `parent_fd` is the staging directory's parent. Everything acts on descriptors, or on names
    relative to them: the staging directory beside the target lies where others may write, and a
    link swapped in for it must never be chmod'ed, chown'ed or moved through."""
    _check_still_there(parent_fd, staging.name, staging_fd, staging)
    if beside:
        st = os.fstat(target_fd)
        os.fchmod(staging_fd, stat.S_IMODE(st.st_mode))  # the target keeps its own mode (not the list's)
        with contextlib.suppress(PermissionError):
            os.fchown(staging_fd, st.st_uid, st.st_gid)
        if not _existing_entries(target):
            # replaces the empty directory atomically
            os.rename(staging.name, target.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            os.fsync(parent_fd)
            return
        if _exchange(parent_fd, staging.name, target.name):
            os.fsync(parent_fd)
            remove_tree(staging)  # now the previous tree
            return
        # No renameat2: fall through to moving entries, from a staging directory outside the target.
    aside_name = f"{OLD_PREFIX}{uuid.uuid4().hex[:12]}"
    old = sorted(_existing_entries(target))  # sorted: a failure is reproducible
    aside = make_private_dir(target_fd, aside_name, str(target / aside_name))
    moved: list[str] = []
    try:
        try:
            for name in old:
                os.rename(name, name, src_dir_fd=target_fd, dst_dir_fd=aside)  # EBUSY for a mount point
                moved.append(name)
            placed: list[str] = []
            try:
                for name in sorted(os.listdir(staging_fd)):
                    os.rename(name, name, src_dir_fd=staging_fd, dst_dir_fd=target_fd)
                    placed.append(name)
            except BaseException:
                for name in reversed(placed):
                    os.rename(name, name, src_dir_fd=target_fd, dst_dir_fd=staging_fd)
                raise
        except BaseException:
            # Half-way: put the old tree back as it was (the caller removes the staging directory).
            for name in reversed(moved):
                os.rename(name, name, src_dir_fd=aside, dst_dir_fd=target_fd)
            os.rmdir(aside_name, dir_fd=target_fd)
            raise
    finally:
        os.close(aside)
    os.rmdir(staging.name, dir_fd=parent_fd)
    os.fsync(target_fd)
    remove_tree(target / aside_name)


@dataclass
class RestoreResult:
    backup_id: str
    target: str
    file_count: int
    size_bytes: int
    duration_seconds: float
    replaced_existing: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _existing_entries(target: Path) -> list[str]:
    with os.scandir(target) as entries:
        return [e.name for e in entries if not e.name.startswith((STAGING_PREFIX, OLD_PREFIX))]


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _RestoreRun:
    """Writes checked entries into the staging directory. Every name is created relative to an open
    descriptor of its parent directory, which was itself opened component by component without
    following symbolic links (openat with O_NOFOLLOW), and files with O_EXCL: nothing is ever written
    through a link, whatever the list says."""

    def __init__(self, repo: Repository, backup_id: str, staging: Path, progress: Progress,
                 root_fd: int | None = None) -> None:
        self.repo = repo
        self.backup_id = backup_id
        self.staging = staging
        self.progress = progress
        self.lock = threading.Lock()
        self.files = 0
        self.size = 0
        # The staging directory's descriptor (`root_fd`, owned from now on, or opened here).
        self.dirs = DirectoryFds(open_dir_at(None, str(staging), str(staging)) if root_fd is None else root_fd,
                                 str(staging))
        self._parent = self.dirs.parent
        # A full chunk of zeros is a hole of a sparse file: it is skipped (seek), not written.
        self.zero_chunk = repo.codec.digest(bytes(repo.chunk_size))

    def close(self) -> None:
        self.dirs.close()

    def _copy_blob_in_kernel(self, backend: LocalBackend, digest: str, out: int) -> int:
        """Plain directory repository: check the blob's digest through mmap, then let the kernel copy
        it (blobs are immutable, so what was checked is what is copied)."""
        key = blob_key(digest)
        fd = backend.open_fd(key)
        try:
            if self.repo.codec.digest_fd(fd) != digest:
                raise CorruptDataError(f"{self.repo.location}/{key}: content does not match its digest")
            length = os.fstat(fd).st_size
            if self.repo.limiter:
                self.repo.limiter.consume(length)
            if kernel_copy(fd, out, 0, length) != length:
                raise CorruptDataError(f"{self.repo.location}/{key}: truncated while being read")
            return length
        finally:
            os.close(fd)

    def _fill(self, record: dict[str, Any], out: int) -> int:
        rel = record["path"]
        written = 0
        backend = self.repo.local_plain if record["size"] >= KERNEL_COPY_MIN else None
        for index, digest in enumerate(record["chunks"]):
            try:
                if digest == self.zero_chunk:
                    os.lseek(out, self.repo.chunk_size, os.SEEK_CUR)
                    n = self.repo.chunk_size
                elif backend is not None:
                    n = self._copy_blob_in_kernel(backend, digest, out)
                else:
                    data = self.repo.get_blob(digest, self.repo.chunk_plain_size(record["size"], index))
                    _write_all(out, data)
                    n = len(data)
            except ObjectNotFound:
                raise CorruptDataError(
                    f"backup {self.backup_id}: blob {digest} of {rel} is missing from the repository"
                ) from None
            except CorruptDataError as error:
                raise CorruptDataError(f"backup {self.backup_id}: {rel}: {error}") from None
            written += n
            self.progress.advance(n, 0)
        if written != record["size"]:
            raise CorruptDataError(
                f"backup {self.backup_id}: {rel} has {written} bytes in the repository, "
                f"the manifest says {record['size']}"
            )
        if os.lseek(out, 0, os.SEEK_CUR) != os.fstat(out).st_size:
            os.ftruncate(out, written)  # a hole at the end
        return written

    def restore_file(self, record: dict[str, Any]) -> None:
        parent, owned, name = self._parent(record["path"])
        try:
            out = create_file(parent, name, 0o600)
        finally:
            if owned:
                os.close(parent)
        try:
            written = self._fill(record, out)
            # Written whole: to disk from now on, not all at the final syncfs (as a backup's blobs).
            start_writeback(out)
            os.fchmod(out, record["mode"] & RESTORED_MODE_BITS)
            os.utime(out, ns=(record["mtime_ns"], record["mtime_ns"]))
        finally:
            os.close(out)
        with self.lock:
            self.files += 1
            self.size += written
        self.progress.advance(0, 1)

    def _make(self, record: dict[str, Any]) -> None:
        parent, owned, name = self._parent(record["path"])
        try:
            if record["type"] == "dir":
                os.mkdir(name, 0o700, dir_fd=parent)
            else:
                os.symlink(record["target"], name, dir_fd=parent)
                os.utime(name, ns=(record["mtime_ns"], record["mtime_ns"]), dir_fd=parent, follow_symlinks=False)
        finally:
            if owned:
                os.close(parent)

    def _link(self, record: dict[str, Any]) -> None:
        """A hard link to a file restored before (the list was checked: it names an earlier file)."""
        source_parent, source_owned, source_name = self._parent(record["hardlink_of"])
        parent, owned, name = self._parent(record["path"])
        try:
            os.link(source_name, name, src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            for fd, close in ((source_parent, source_owned), (parent, owned)):
                if close:
                    os.close(fd)
        with self.lock:
            self.files += 1
            self.size += record["size"]
        self.progress.advance(record["size"], 1)

    def run(self, entries: Any) -> None:
        directories: list[tuple[str, int, int]] = []
        links: list[dict[str, Any]] = []
        with BoundedWorkers(self.repo.parallelism, "mobackup-restore") as workers:
            for record in entries:
                if workers.failed:
                    break
                kind = record["type"]
                if kind == "dir":
                    self._make(record)
                    directories.append((record["path"], record["mode"], record["mtime_ns"]))
                elif kind == "symlink":
                    self._make(record)
                elif record.get("hardlink_of") is not None:
                    links.append(record)  # once every file exists
                else:
                    workers.submit(self.restore_file, record)
        for record in links:
            self._link(record)
        # Directories last, deepest first: writing into a directory changes its mtime.
        for rel, mode, mtime_ns in sorted(directories, key=lambda d: d[0].count("/"), reverse=True):
            parent, owned, name = self._parent(rel)
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            finally:
                if owned:
                    os.close(parent)
            try:
                # A setgid bit the directory inherited from the target's file system (mkdir in a
                # setgid directory, as Kubernetes' fsGroup volumes are) stays: it is not the list's.
                os.fchmod(fd, mode & RESTORED_MODE_BITS | os.fstat(fd).st_mode & stat.S_ISGID)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)


def _checked_target(target: Path, repo: Repository) -> Path:
    """The real path of a restore target (a symbolic link is resolved up front, so that the swap acts
    on the directory itself), refused when it is a system directory or overlaps a repository (by
    device and inode too: one volume mounted twice has two paths)."""
    return checked_local_dir(target, repo, "restore into")


@contextlib.contextmanager
def _target_lock(target: Path) -> Iterator[int]:
    """Hold an exclusive flock on the target directory (its real path: a link there now was swapped
    in, and is refused), and yield its descriptor: a second restore into it fails at once instead of
    deleting the first one's staging directory. The target's inode changes when a restore swaps it,
    so the lock is retaken until it is held on the directory now at the path."""
    while True:
        fd = open_dir_at(None, str(target), str(target))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{target}: another restore into this directory is running") from None
        held, now = os.fstat(fd), os.stat(target)
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class _ListFacts:
    hosts: set[str]  # log service hostnames the list records
    space: int  # bytes the restored tree takes on a file system of the given block size
    entries: int


def check_file_list(repo: Repository, summary: Any, files: Path, scratch: Path, block: int = 4096,
                    verdict: str = DAMAGED) -> _ListFacts:
    """Check every entry and the list's digest; count what the restored tree will take (with files
    of `block` bytes). A backup runs the same checks on its own list before publishing it."""
    checker = ManifestChecker(scratch, repo.chunk_size, f"backup {summary.id}", verdict)
    facts = _ListFacts(hosts=set(), space=0, entries=0)
    zero_chunk = repo.codec.digest(bytes(repo.chunk_size))
    try:
        for record in repo.entries(summary, files):
            checker.check(record)
            facts.entries += 1
            if record["path"].startswith("logservice-data/"):
                facts.hosts |= log_hostnames((record["path"],))
            if record["type"] != "file":
                facts.space += block  # a directory's block; a symbolic link takes at most one
            elif record.get("hardlink_of") is None:  # a hard link takes no data block
                # Whole chunks of zeros are holes (see _RestoreRun._fill): they take no space.
                data = record["size"] - record["chunks"].count(zero_chunk) * repo.chunk_size
                facts.space += -(-max(data, 0) // block) * block
        checker.finish()
    finally:
        checker.close()
    return facts


def _check_free_space(target: Path, facts: _ListFacts) -> None:
    """Refuse a restore that cannot fit before anything is written: a file list of a few kilobytes
    can describe terabytes (one blob, listed again and again), and a restore that fills the file
    system fails late and leaves the file system full for everyone else on it. The old tree (with
    --force) stays until the new one is complete, so the new one must fit beside it."""
    st = os.statvfs(target)
    if st.f_blocks == 0:
        return  # the file system does not report its size (some FUSE and network ones)
    free = st.f_bavail * st.f_frsize
    needed = facts.space + max(FREE_SPACE_MARGIN, facts.space // 100)
    if needed > free:
        raise VolumeFull(
            f"{target}: the restore needs {human_bytes(needed)} ({human_bytes(facts.space)} of files and "
            f"directories, and a margin) but its file system has {human_bytes(free)} free; free some space "
            "or restore elsewhere"
        )
    if st.f_files and facts.entries > st.f_favail:
        raise VolumeFull(f"{target}: the restore creates {facts.entries} files and directories but its file "
                            f"system has {st.f_favail} free inodes; free some or restore elsewhere")


def run_restore(
    repo: Repository,
    backup_id: str,
    target: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    hostname: str | None = None,
) -> RestoreResult:
    """Restore `backup_id` so that `target` holds exactly its files.

    Files are written into a hidden staging directory inside `target`, every digest is checked,
    everything is made durable, and only then are the staged entries renamed into place. A failed
    restore removes its staging directory and leaves `target` as it was.

    With `hostname` (of the MatrixOne that will run on the restored data), a backup whose log service
    data was written under another hostname is refused before anything is written.
    """
    progress = progress or NullProgress()
    backup_id = repo.resolve_id(backup_id)
    summary = repo.load_summary(backup_id)
    target = _checked_target(Path(target).absolute(), repo)
    if target.exists() and not target.is_dir():
        raise MobackupError(f"{target}: exists and is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    with (_target_lock(target) as target_fd,
          repo.lock(exclusive=False, purpose=f"restore of {backup_id}", wait_seconds=60),
          tempfile.TemporaryDirectory(prefix="mobackup-restore-") as scratch):
        existing = _existing_entries(target)
        if existing and not force:
            raise TargetNotEmptyError(
                f"{target} is not empty ({len(existing)} entries, e.g. {sorted(existing)[0]!r}); restore into "
                "an empty directory, or pass --force to replace its contents"
            )
        if existing:  # --force replaces everything below: never a repository kept somewhere in there
            refuse_repository_below(target, target, "replace the contents of")
        # The whole list is copied, then checked (every entry, and the digest at its end) before
        # the first write; the second pass reads the same local copy.
        files = Path(scratch) / "files"
        repo.download_file_list(summary, files)
        facts = check_file_list(repo, summary, files, Path(scratch), os.statvfs(target).f_frsize or 4096)
        recorded = facts.hosts
        if hostname and recorded and hostname not in recorded:
            raise MobackupError(
                f"backup {backup_id} holds log service data of host(s) {', '.join(sorted(recorded))}, not "
                f"{hostname!r}: MatrixOne's log service refuses to start under another hostname; restore onto "
                "a pod with that hostname, or pin it with MatrixOne's explicit-hostname setting"
            )
        beside = _stage_beside(target)
        _remove_leftovers(target, "")  # hidden remains of a killed restore
        if beside:
            _remove_leftovers(target.parent, f"{STAGING_PREFIX}{target.name}-")
        _check_free_space(target, facts)  # once the leftovers' space is free again
        staging = (target.parent / f"{STAGING_PREFIX}{target.name}-{uuid.uuid4().hex[:12]}" if beside
                   else target / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        progress.start(summary.size_bytes, summary.file_count)
        # The staging directory is made and then only used through descriptors: beside the target it
        # lies where others may write (a volume's root, writable by the database's user).
        parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if beside else os.dup(target_fd)
        try:
            staging_fd = make_private_dir(parent_fd, staging.name, str(staging))
            try:
                run = _RestoreRun(repo, backup_id, staging, progress, os.dup(staging_fd))
                try:
                    run.run(repo.entries(summary, files))
                finally:
                    run.close()
                if run.files != summary.file_count:
                    raise CorruptDataError(
                        f"backup {backup_id}: restored {run.files} files, the summary says {summary.file_count}"
                    )
                _syncfs(staging)
                # with existing entries only when forced (checked above)
                _swap_in(staging, staging_fd, parent_fd, target, target_fd, beside)
            except BaseException:
                remove_tree(staging, ignore_errors=True)  # never follows a link swapped in
                raise
            finally:
                os.close(staging_fd)
        finally:
            os.close(parent_fd)
    progress.finish()
    return RestoreResult(
        backup_id=backup_id, target=str(target), file_count=run.files, size_bytes=run.size,
        duration_seconds=round(time.monotonic() - clock, 3), replaced_existing=bool(existing),
    )
