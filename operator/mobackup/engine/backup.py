"""Full and incremental backups of a MatrixOne data directory."""

from __future__ import annotations

import glob
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .. import __version__
from .errors import CorruptDataError, MobackupError, SourceChangedError
from .index import DigestSet, FileIndex
from .layout import PathRules, detect_layout, newest_checkpoint_ts
from .manifest import UNPUBLISHED
from .model import MAX_SKIPPED, BackupSummary, iso, utc_now
from .progress import NullProgress, Progress
from .repository import FileListWriter, Repository, blob_key, host_name
from .restore import check_file_list
from .safefs import DirectoryFds, Ident, NotFollowed
from .storage import KERNEL_COPY_MIN, LocalBackend, start_writeback
from .walk import SourceEntry, open_root, tree_totals, walk
from .workers import BoundedWorkers


def default_source(data_dir: Path) -> str:
    """The name of what is backed up when none is given: the data directory's absolute path."""
    return str(data_dir.absolute())


def _entry_record(entry: SourceEntry, chunks: list[str] | None = None, size: int | None = None,
                  mtime_ns: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": entry.rel,
        "type": entry.kind,
        "mode": entry.mode,
        "mtime_ns": entry.mtime_ns if mtime_ns is None else mtime_ns,
    }
    if entry.kind == "file":
        record["size"] = entry.size if size is None else size
        record["chunks"] = chunks or []
    elif entry.kind == "symlink":
        record["target"] = entry.target
    return record


@dataclass
class _Totals:
    size: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    files: int = 0
    read_files: int = 0
    chunks: int = 0
    new_blobs: int = 0


@dataclass(frozen=True)
class TakenFile:
    """A file stored before the walk reached it (an online backup stores MatrixOne's staged files while
    BACKUP still writes the others): the walk reuses its chunks if it is still that very file."""

    ident: Ident  # (st_dev, st_ino)
    size: int
    mtime_ns: int
    chunks: tuple[str, ...]


class ChunkStore:
    """Reads, hashes and stores files chunk by chunk; counts what was new. Shared by the walk's workers
    and by whoever stores files ahead of it (TakenFile). Thread-safe."""

    def __init__(self, repo: Repository, progress: Progress | None = None) -> None:
        self.repo = repo
        self.progress = progress or NullProgress()
        self.totals = _Totals()
        self.lock = threading.Lock()
        self.buffers = threading.local()
        self.known_blobs: DigestSet | None = None  # blobs listed up front (S3 full backups)
        self.known_lock = threading.Lock()
        self.check_existing = False  # read back blobs that exist (not only their size) before reusing

    def _stored(self, plain_bytes: int, stored_bytes: int) -> None:
        with self.lock:
            self.totals.new_bytes += plain_bytes
            self.totals.stored_bytes += stored_bytes
            self.totals.new_blobs += 1

    def _has_blob(self, digest: str, size: int) -> bool:
        """Whether the repository holds this chunk intact (see Repository.blob_is_sound): a damaged
        blob is stored again, so that damage heals with the next backup that reads the file."""
        if self.known_blobs is not None and not self.check_existing:
            expected = self.repo.stored_size(size)  # the listing's sizes are checked too
            with self.known_lock:
                if (digest if expected is None else f"{digest}/{expected}") in self.known_blobs:
                    return True
        return self.repo.blob_is_sound(digest, size, read=self.check_existing)

    def store(self, source: BinaryIO, size: int, also: Callable[[memoryview], None] | None = None
              ) -> tuple[list[str], int]:
        """Store the open file `source` (`size` bytes as stat saw it); returns its chunks and the bytes
        read. `also` sees every byte stored, in order (another digest, at no extra read)."""
        backend = self.repo.local_plain
        if backend is not None and size >= KERNEL_COPY_MIN:
            return self._store_by_kernel_copy(source, backend, also)
        return self._store_by_reading(source, also)

    def _store_by_reading(self, source: BinaryIO, also: Callable[[memoryview], None] | None = None
                          ) -> tuple[list[str], int]:
        """Read each chunk into a buffer, hash it, store it unless the repository has it."""
        buffer = self._buffer()
        view = memoryview(buffer)
        chunks: list[str] = []
        done = 0
        while True:
            n = source.readinto(buffer)
            while n and n < len(buffer):  # fill whole chunks, so chunk boundaries are fixed
                more = source.readinto(view[n:])
                if not more:
                    break
                n += more
            if not n:
                break
            data = view[:n]
            if also is not None:
                also(data)
            digest = self.repo.codec.digest(data)
            if not self._has_blob(digest, n):
                self._stored(n, self.repo.put_blob(digest, data))
            chunks.append(digest)
            done += n
            self.progress.advance(n, 0)
            if n < len(buffer):
                break
        return chunks, done

    def _store_by_kernel_copy(self, source: BinaryIO, backend: LocalBackend,
                              also: Callable[[memoryview], None] | None = None) -> tuple[list[str], int]:
        """Plain directory repository: copy each chunk into a temporary blob inside the kernel, then
        hash that copy through mmap and name the blob by it. What is stored always matches its name,
        whatever the source does meanwhile (a changing source is caught by the size/mtime checks)."""
        chunks: list[str] = []
        done = 0
        size = self.repo.chunk_size
        while True:
            tmp, n = backend.copy_range_to_temporary("blobs", source.fileno(), done, size)
            try:
                if n == 0:
                    break
                digest = self.repo.codec.digest_fd(tmp.fd, also)
                if not self._has_blob(digest, n):
                    start_writeback(tmp.fd)
                    backend.adopt(tmp, blob_key(digest), replace=True)
                    self._stored(n, n)
            finally:
                tmp.discard()  # removed unless adopted
            if self.repo.limiter:
                self.repo.limiter.consume(n)
            chunks.append(digest)
            done += n
            self.progress.advance(n, 0)
            if n < size:
                break
        return chunks, done

    def _buffer(self) -> bytearray:
        buffer = getattr(self.buffers, "buffer", None)
        if buffer is None:
            buffer = self.buffers.buffer = bytearray(self.repo.chunk_size)
        return buffer


class _BackupRun:
    """One backup in progress: the walk feeds a bounded pool of copy workers."""

    def __init__(self, repo: Repository, data_dir: Path, rules: PathRules, progress: Progress,
                 base_index: FileIndex | None, writer: FileListWriter, dirs: DirectoryFds,
                 store: ChunkStore | None = None) -> None:
        self.repo = repo
        self.data_dir = data_dir
        self.dirs = dirs  # the data directory's directories, as the walk entered them
        self.rules = rules
        self.progress = progress
        self.base_index = base_index
        self.writer = writer
        self.store = store or ChunkStore(repo)
        self.store.progress = progress
        self.totals = self.store.totals
        self.lock = self.store.lock
        self.taken: TakenLookup = {}  # files stored ahead of the walk, by path
        self.inherited: Iterable[dict[str, Any]] = ()  # base records taken as they are
        self.skipped: list[tuple[str, str]] = []  # FIFOs, sockets, devices: (path, kind)
        self.first_names: dict[tuple[int, int], str] = {}  # inode -> first path (files with links only)
        self.links: list[tuple[SourceEntry, str]] = []  # (entry, first path of its inode)
        self.first_paths: set[str] = set()  # the values of first_names
        self.listed_dirs: set[str] = set()  # directories in the list so far (few)
        self.recorded_multi: list[dict[str, Any]] = []  # records of first paths, for their links

    def _record(self, record: dict[str, Any], read: bool) -> None:
        with self.lock:
            self.writer.add(record)
            if record["path"] in self.first_paths:
                self.recorded_multi.append(record)
            if record["type"] == "file":
                self.totals.size += record["size"]
                self.totals.files += 1
                self.totals.chunks += len(record["chunks"])
                self.totals.read_files += int(read)

    def copy_file(self, entry: SourceEntry) -> dict[str, Any] | None:
        """Read, hash and store one file; None when a volatile file vanished or was replaced.

        The file is opened relative to its directory's descriptor without following a link, and
        must be the very file the walk saw (st_dev, st_ino): a link, or any other file, swapped in
        since then by whoever owns the data is never read."""
        volatile = self.rules.is_volatile(entry.rel)
        try:
            fd = self.dirs.open_file(entry.rel, entry.ident)
        except FileNotFoundError:
            if volatile:
                return None
            raise SourceChangedError(
                f"{entry.rel} vanished during the backup: MatrixOne is running; stop it or use a "
                "volume snapshot for a consistent backup"
            ) from None
        except NotFollowed as error:
            if volatile:
                return None
            raise SourceChangedError(
                f"{entry.rel} was replaced while being backed up ({error}): its content was not read; stop "
                "MatrixOne or use a volume snapshot for a consistent backup"
            ) from None
        with open(fd, "rb", buffering=0) as source:
            before = os.fstat(source.fileno())
            chunks, done = self.store.store(source, entry.size)
            after = os.fstat(source.fileno())
        changed = (
            done != entry.size
            or after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns
            or before.st_mtime_ns != entry.mtime_ns
        )
        if changed and not volatile:
            raise SourceChangedError(
                f"{entry.rel} changed while being copied (size {entry.size} -> {after.st_size}): "
                "MatrixOne is running; stop it or use a volume snapshot for a consistent backup"
            )
        self.progress.advance(0, 1)
        return _entry_record(entry, chunks, size=done, mtime_ns=after.st_mtime_ns)

    def _copied(self, record: dict[str, Any] | None) -> None:
        if record is not None:
            self._record(record, read=True)

    def _list_parents(self, rel: str, mtime_ns: int) -> None:
        """Every entry's parent directory is listed before it (readers refuse a list otherwise): an
        inherited file whose directory the source tree lacks gets one."""
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent not in self.listed_dirs:
                self._record({"path": parent, "type": "dir", "mode": 0o755, "mtime_ns": mtime_ns}, read=False)
                self.listed_dirs.add(parent)

    def _record_links(self) -> None:
        """Hard links, after every file: each names the first path of its inode, listed before it,
        and also carries that file's chunks, so that a reader that ignores `hardlink_of` restores a
        copy. A link whose first name vanished (a volatile file) is read as a file of its own."""
        if not self.links:
            return
        names = {first for _, first in self.links}
        chunks = {r["path"]: r for r in self.recorded_multi if r["path"] in names}
        for entry, first in self.links:
            record = chunks.get(first)
            if record is None:
                self._copied(self.copy_file(entry))
                continue
            self._record({**_entry_record(entry, record["chunks"], size=record["size"]), "hardlink_of": first},
                         read=False)
            self.progress.advance(record["size"], 1)

    def run(self) -> None:
        with BoundedWorkers(self.repo.parallelism, "mobackup-copy") as workers:
            for entry in walk(self.data_dir, self.rules, self.skipped, dirs=self.dirs):
                if workers.failed:
                    break
                if entry.kind != "file":
                    self._record(_entry_record(entry), read=False)
                    if entry.kind == "dir":
                        self.listed_dirs.add(entry.rel)
                    continue
                if entry.inode is not None:  # one of several names of a file: the others become links
                    first = self.first_names.setdefault(entry.inode, entry.rel)
                    self.first_paths.add(first)
                    if first != entry.rel:
                        self.links.append((entry, first))
                        continue
                taken = self.taken.get(entry.rel)
                if taken is not None and (taken.ident, taken.size, taken.mtime_ns) == (
                        entry.ident, entry.size, entry.mtime_ns):
                    self._record(_entry_record(entry, list(taken.chunks)), read=True)
                    self.progress.advance(entry.size, 1)
                    continue
                prior = self.base_index.get(entry.rel) if self.base_index else None
                # Unchanged since the base (same size and mtime): reuse its chunks without reading.
                # MatrixOne objects are write-once; mutable files change size or mtime when written.
                if prior is not None and prior[0] == entry.size and prior[1] == entry.mtime_ns:
                    self._record(_entry_record(entry, prior[2]), read=False)
                    self.progress.advance(entry.size, 1)
                    continue
                workers.submit(self.copy_file, entry, on_result=self._copied)
        self._record_links()
        for record in self.inherited:  # files the source did not stage again (online incremental)
            self._list_parents(record["path"], record.get("mtime_ns", 0))
            record.pop("hardlink_of", None)  # its first name may not be in this list: a copy
            self._record(record, read=False)
            self.progress.advance(record.get("size", 0), 1)


class TakenLookup(Protocol):
    """Files stored ahead of the walk by path (a dict, or an on-disk index)."""

    def get(self, path: str, /) -> TakenFile | None: ...


class PathSet(Protocol):
    """A set of paths that may live on disk (an online incremental's files taken from its base)."""

    def __contains__(self, path: object) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...


def _counted(record: dict[str, Any], counter: list[int]) -> dict[str, Any]:
    counter[0] += 1
    return record


def _missing_from(repo: Repository, base: BackupSummary, paths: PathSet, scratch: Path) -> str:
    """One of `paths` the base's file list lacks (for a message; on disk, however long the list)."""
    listed = DigestSet(scratch / "base-paths.sqlite")
    try:
        for record in repo.entries(base):
            listed.add(str(record.get("path")))
        return min((path for path in paths if path not in listed), default="?")
    finally:
        listed.close()


def choose_base(repo: Repository, source: str, backup_type: str | None,
                 base_id: str | None) -> BackupSummary | None:
    if backup_type not in (None, "full", "incremental"):
        raise MobackupError(f"unknown backup type {backup_type!r} (full or incremental)")
    if backup_type == "full":
        if base_id:
            raise MobackupError("a full backup has no base: drop --base or use --type incremental")
        return None
    if base_id:
        base = repo.load_summary(repo.resolve_id(base_id))
        if base.source != source:
            raise MobackupError(f"base backup {base.id} is of source {base.source!r}, not {source!r}")
        return base
    candidates = [s for s in repo.list_backups() if s.source == source]
    if not candidates:
        if backup_type == "incremental":
            raise MobackupError(
                f"no completed backup of source {source!r} to base an incremental backup on; "
                "run a full backup first"
            )
        return None
    return candidates[-1]


def _without_repository(rules: PathRules, repo: Repository, data_dir: Path) -> PathRules:
    """A repository inside the data directory is left out of the backup (it would back itself up,
    live lock files included); one that is the data directory is refused."""
    if not isinstance(repo.backend, LocalBackend):
        return rules
    root, data = Path(os.path.realpath(repo.backend.root)), Path(os.path.realpath(data_dir))
    if root == data or root in data.parents:
        raise MobackupError(f"{data_dir}: the data directory is the repository {root} or inside it")
    if data not in root.parents:
        return rules
    return replace(rules, extra_excludes=(*rules.extra_excludes, glob.escape(root.relative_to(data).as_posix())))


def run_backup(
    repo: Repository,
    data_dir: Path,
    *,
    source: str | None = None,
    backup_type: str | None = None,
    base_id: str | None = None,
    progress: Progress | None = None,
    rules: PathRules | None = None,
    mo_version: str | None = None,
    backup_ts: str | None = None,
    backup_ts_source: str | None = None,
    inherit: PathSet = frozenset(),
    extra: dict[str, Any] | None = None,
    data_dir_label: str | None = None,
    began: tuple[Any, float] | None = None,
    check_existing: bool = False,
    before_publish: Callable[[], object] | None = None,
    root_ident: Ident | None = None,
    store: ChunkStore | None = None,
    taken: TakenLookup | None = None,
    base_index: FileIndex | None = None,
) -> BackupSummary:
    """Back up `data_dir`. With neither type nor base, the first backup of a source is full and later
    ones are incremental on the latest completed backup of the same source.

    `inherit` names paths that are not in `data_dir` but must be in the backup as the base has them
    (an online incremental stages only new files). `extra` is merged into the summary's `extra`;
    `data_dir_label` is the data directory recorded (default `data_dir`); `began` is (utc_now(),
    time.monotonic()) of a run that started before this call (an online backup's BACKUP).
    `check_existing` reads back every blob a read file would reuse and stores a damaged one again
    (by default only its size is checked). `before_publish` runs just before the backup is
    published and may refuse it by raising. `root_ident`: the (st_dev, st_ino) `data_dir` must be
    (a tree this process arranged where others can write); a link there is then refused. `store`: the
    ChunkStore that stored `taken` (files stored ahead of this walk, by path; reused while still the
    same file), so that its counts are this backup's. `base_index`: the base's file list already
    loaded (by the caller, who closes it; it must be `base_id`'s), so that it is not loaded twice.

    Nothing is published that a restore would refuse: the file list gets restore's own checks first
    (a path listed twice, chunks that do not fit the repository's chunk size...)."""
    data_dir = Path(data_dir).absolute()
    if not data_dir.is_dir():
        raise MobackupError(f"{data_dir}: not a directory")
    source = source or default_source(data_dir)
    rules = _without_repository(rules or PathRules(), repo, data_dir)
    progress = progress or NullProgress()
    with (DirectoryFds(open_root(data_dir, root_ident), str(data_dir), owned_links_only=True) as dirs,
          repo.lock(exclusive=False, purpose=f"backup of {source}", wait_seconds=60)):
        base = choose_base(repo, source, backup_type, base_id)
        started, clock = began or (utc_now(), time.monotonic())
        checkpoint_ts = newest_checkpoint_ts(data_dir)
        if backup_ts is None:
            backup_ts = checkpoint_ts or f"{time.time_ns()}-0"
        backup_id = str(uuid.uuid4())
        if not isinstance(progress, NullProgress):  # a second walk, only for a progress display
            progress.start(*tree_totals(data_dir, rules, dirs))
        with tempfile.TemporaryDirectory(prefix="mobackup-") as scratch:
            own_index = base_index is None
            if base is None:
                base_index = None
            elif own_index:
                base_index = FileIndex(Path(scratch) / "base.sqlite")
                base_index.load(repo.entries(base))
            writer = FileListWriter(repo.codec, backup_id, Path(scratch))
            run = _BackupRun(repo, data_dir, rules, progress, base_index, writer, dirs, store)
            run.store.check_existing = check_existing
            run.taken = taken or {}
            inherited = [0]  # records taken from the base (its list names no path twice: checked when published)
            if inherit:
                if base is None:
                    raise MobackupError("files to take from a base backup, but there is no base")
                run.inherited = (_counted(r, inherited) for r in repo.entries(base) if r["path"] in inherit)
            if base is None and not check_existing and not isinstance(repo.backend, LocalBackend):
                # One listing instead of a HEAD request per chunk (a full backup reads every file).
                known = run.store.known_blobs = DigestSet(Path(scratch) / "known.sqlite", shared=True)
                sized = repo.stored_size(1) is not None
                for digest, stored in repo.blob_sizes():
                    known.add(f"{digest}/{stored}" if sized else digest)
                known.flush()
            try:
                run.run()
                if inherited[0] != len(inherit):
                    assert base is not None
                    missing = _missing_from(repo, base, inherit, Path(scratch))
                    raise MobackupError(f"{len(inherit) - inherited[0]} files to take from base backup {base.id} "
                                        f"are not in it, e.g. {missing}: the base does not match this source")
            finally:
                writer.close()
                if base_index and own_index:
                    base_index.close()
                if run.store.known_blobs:
                    run.store.known_blobs.close()
                    run.store.known_blobs = None
            totals = run.totals
            completed = utc_now()
            summary = BackupSummary(
                id=backup_id,
                type="incremental" if base else "full",
                base_id=base.id if base else None,
                source=source,
                backup_ts=backup_ts,
                backup_ts_source=backup_ts_source or ("checkpoint" if checkpoint_ts == backup_ts else "clock"),
                started_at=iso(started),
                completed_at=iso(completed),
                duration_seconds=round(time.monotonic() - clock, 3),
                size_bytes=totals.size,
                new_bytes=totals.new_bytes,
                stored_bytes=totals.stored_bytes,
                file_count=totals.files,
                read_file_count=totals.read_files,
                chunk_count=totals.chunks,
                new_blob_count=totals.new_blobs,
                data_dir=data_dir_label or str(data_dir),
                host=host_name(),
                layout=detect_layout(data_dir),
                location=repo.location,
                files_digest=writer.hasher.hexdigest(),
                files_frames=writer.frames,
                entry_count=writer.count,
                mo_version=mo_version,
                mobackup_version=__version__,
                extra={"excludes": list(rules.excludes + rules.extra_excludes), **(extra or {})},
                skipped_count=len(run.skipped),
                skipped=[{"path": path, "type": kind} for path, kind in run.skipped[:MAX_SKIPPED]],
            )
            try:
                check_file_list(repo, summary, writer.path, Path(scratch), verdict=UNPUBLISHED)
            except CorruptDataError as error:
                raise MobackupError(str(error)) from None  # this run's own list: not damaged storage
            if before_publish is not None:
                before_publish()
            repo.publish(summary, writer.path)
        progress.finish()
        return summary
