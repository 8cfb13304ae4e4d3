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

from .errors import CorruptDataError, LockedError, MobackupError, TargetNotEmptyError
from .layout import log_hostnames
from .manifest import ManifestChecker
from .progress import NullProgress, Progress, human_bytes
from .repository import Repository, blob_key
from .storage import KERNEL_COPY_MIN, LocalBackend, ObjectNotFound, _syncfs, kernel_copy
from .walk import remove_tree
from .workers import BoundedWorkers

STAGING_PREFIX = ".mobackup-staging-"
OLD_PREFIX = ".mobackup-old-"
RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically
AT_FDCWD = -100
# The permission bits a restore applies. Never setuid, setgid or sticky: a restore runs as root, so
# a data owner's setuid file would come back root-owned and setuid, and anyone who can edit a file
# list could plant one. The file list still records them (`st_mode & 0o7777`); they are not applied.
RESTORED_MODE_BITS = 0o777
# Space a restore leaves free beyond its estimate: a hundredth of it, and at least this much.
FREE_SPACE_MARGIN = 64 << 20


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2). False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBUSY, errno.EXDEV):
        return False  # unsupported here, or `b` is a mount point after all
    raise OSError(error, os.strerror(error), str(a))


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _swap_in(staging: Path, target: Path, beside: bool) -> None:
    """Make the staged tree the target's content. Beside the target this is atomic: at every instant
    the target is the old tree or the new one. Inside a mount point, the old entries are first set
    aside (renames), then the staged ones moved in; a kill in between leaves both, hidden."""
    if beside:
        st = os.stat(target)
        os.chmod(staging, stat.S_IMODE(st.st_mode))  # the target keeps its own mode (not the list's)
        with contextlib.suppress(PermissionError):
            os.chown(staging, st.st_uid, st.st_gid)
        if not _existing_entries(target):
            os.rename(staging, target)  # replaces the empty directory atomically
            _fsync_dir(target.parent)
            return
        if _exchange(staging, target):
            _fsync_dir(target.parent)
            remove_tree(staging)  # now the previous tree
            return
        # No renameat2: fall through to moving entries, from a staging directory outside the target.
    aside = target / f"{OLD_PREFIX}{uuid.uuid4().hex[:12]}"
    old = sorted(_existing_entries(target))  # sorted: a failure is reproducible
    aside.mkdir()
    moved: list[str] = []
    try:
        for name in old:
            os.rename(target / name, aside / name)  # EBUSY for a mount point in the target
            moved.append(name)
        with os.scandir(staging) as entries:
            staged = sorted(entry.name for entry in entries)
        placed: list[str] = []
        try:
            for name in staged:
                os.rename(staging / name, target / name)
                placed.append(name)
        except BaseException:
            for name in reversed(placed):
                os.rename(target / name, staging / name)
            raise
    except BaseException:
        # Half-way: put the old tree back as it was (the caller removes the staging directory).
        for name in reversed(moved):
            os.rename(aside / name, target / name)
        aside.rmdir()
        raise
    staging.rmdir()
    _fsync_dir(target)
    remove_tree(aside)


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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIRS = 512


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _RestoreRun:
    """Writes checked entries into the staging directory. Every name is created relative to an open
    descriptor of its parent directory, which was itself opened component by component without
    following symbolic links (openat with O_NOFOLLOW), and files with O_EXCL: nothing is ever written
    through a link, whatever the list says."""

    def __init__(self, repo: Repository, backup_id: str, staging: Path, progress: Progress) -> None:
        self.repo = repo
        self.backup_id = backup_id
        self.staging = staging
        self.progress = progress
        self.lock = threading.Lock()
        self.files = 0
        self.size = 0
        self.root_fd = os.open(staging, _DIR_FLAGS)
        self.dir_fds: dict[str, int] = {"": self.root_fd}
        # A full chunk of zeros is a hole of a sparse file: it is skipped (seek), not written.
        self.zero_chunk = repo.codec.digest(bytes(repo.chunk_size))

    def close(self) -> None:
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds.clear()

    def _open_dir(self, rel: str) -> tuple[int, bool]:
        """A descriptor of the staged directory `rel` and whether the caller must close it."""
        with self.lock:
            fd = self.dir_fds.get(rel)
        if fd is not None:
            return fd, False
        fd = os.dup(self.root_fd)
        try:
            for part in rel.split("/"):
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        with self.lock:
            if len(self.dir_fds) < _MAX_CACHED_DIRS and rel not in self.dir_fds:
                self.dir_fds[rel] = fd  # closed at the end of the run, never before
                return fd, False
        return fd, True

    def _parent(self, rel: str) -> tuple[int, bool, str]:
        parent, _, name = rel.rpartition("/")
        fd, owned = self._open_dir(parent)
        return fd, owned, name

    def _copy_blob_in_kernel(self, backend: LocalBackend, digest: str, out: int) -> int:
        """Plain directory repository: check the blob's digest through mmap, then let the kernel copy
        it (blobs are immutable, so what was checked is what is copied)."""
        key = blob_key(digest)
        try:
            fd = os.open(backend.root / key, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
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
            out = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        finally:
            if owned:
                os.close(parent)
        try:
            written = self._fill(record, out)
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
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
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


# Never a restore target: a forced restore replaces the whole content of its target.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
})


def _checked_target(target: Path, repo: Repository) -> Path:
    """The real path of a restore target (a symbolic link is resolved up front, so that the swap acts
    on the directory itself), refused when it is a system directory or overlaps the repository."""
    real = Path(os.path.realpath(target))
    if str(real) in SYSTEM_DIRS:
        raise MobackupError(f"{target}: refusing to restore into the system directory {real}")
    if isinstance(repo.backend, LocalBackend):
        root = Path(os.path.realpath(repo.backend.root))
        if real == root or real in root.parents or root in real.parents:
            raise MobackupError(f"{target}: refusing to restore into, inside or above the repository {root}: "
                                "the restore would destroy it")
    return real


@contextlib.contextmanager
def _target_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive flock on the target directory: a second restore into it fails at once
    instead of deleting the first one's staging directory. The target's inode changes when a
    restore swaps it, so the lock is retaken until it is held on the directory now at the path."""
    while True:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
        yield
    finally:
        os.close(fd)


@dataclass
class _ListFacts:
    hosts: set[str]  # log service hostnames the list records
    space: int  # bytes the restored tree takes on a file system of the given block size
    entries: int


def _check_file_list(repo: Repository, summary: Any, files: Path, scratch: Path, block: int) -> _ListFacts:
    """Check every entry and the list's digest; count what the restored tree will take."""
    checker = ManifestChecker(scratch, repo.chunk_size, f"backup {summary.id}")
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
        raise MobackupError(
            f"{target}: the restore needs {human_bytes(needed)} ({human_bytes(facts.space)} of files and "
            f"directories, and a margin) but its file system has {human_bytes(free)} free; free some space "
            "or restore elsewhere"
        )
    if st.f_files and facts.entries > st.f_favail:
        raise MobackupError(f"{target}: the restore creates {facts.entries} files and directories but its file "
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
    with (_target_lock(target),
          repo.lock(exclusive=False, purpose=f"restore of {backup_id}", wait_seconds=60),
          tempfile.TemporaryDirectory(prefix="mobackup-restore-") as scratch):
        existing = _existing_entries(target)
        if existing and not force:
            raise TargetNotEmptyError(
                f"{target} is not empty ({len(existing)} entries, e.g. {sorted(existing)[0]!r}); restore into "
                "an empty directory, or pass --force to replace its contents"
            )
        # The whole list is copied, then checked (every entry, and the digest at its end) before
        # the first write; the second pass reads the same local copy.
        files = Path(scratch) / "files"
        repo.download_file_list(summary, files)
        facts = _check_file_list(repo, summary, files, Path(scratch), os.statvfs(target).f_frsize or 4096)
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
        staging.mkdir()
        try:
            run = _RestoreRun(repo, backup_id, staging, progress)
            try:
                run.run(repo.entries(summary, files))
            finally:
                run.close()
            if run.files != summary.file_count:
                raise CorruptDataError(
                    f"backup {backup_id}: restored {run.files} files, the summary says {summary.file_count}"
                )
            _syncfs(staging)
            _swap_in(staging, target, beside)  # with existing entries only when forced (checked above)
        except BaseException:
            remove_tree(staging, ignore_errors=True)
            raise
    progress.finish()
    return RestoreResult(
        backup_id=backup_id, target=str(target), file_count=run.files, size_bytes=run.size,
        duration_seconds=round(time.monotonic() - clock, 3), replaced_existing=bool(existing),
    )
