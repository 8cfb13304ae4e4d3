"""Restores of an S3-resident online backup (engine/online_s3.py) into a bucket prefix: its
`shared/*` objects to MatrixOne's SHARED key prefix, and `local/hk_data` (HAKeeper's state) into the
log service's LOCAL file service or an object a new cluster bootstraps from. Each object's content
comes blob by blob from the repository, every blob checked against its name, and the file list is
validated before anything reaches S3."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorruptDataError, MobackupError, TargetNotEmptyError
from .guards import check_s3_restore, checked_local_dir
from .manifest import ManifestChecker
from .model import BackupSummary
from .online_s3 import HK_DATA, MAX_HK_DATA_SIZE, SINGLE_PUT_MAX, S3Place, disk_unframe
from .progress import NullProgress, Progress
from .repository import Repository
from .s3 import MAX_PARTS, MIN_PART
from .safefs import write_atomically
from .walk import remove_tree
from .workers import BoundedWorkers

# ---- restore into a bucket prefix ---------------------------------------------------------------------

@dataclass
class S3RestoreResult:
    backup_id: str
    target: str
    file_count: int
    size_bytes: int
    removed_objects: int
    hk_data: str | None
    duration_seconds: float
    hk_data_s3: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


RESTORE_STEPS = ("all", "shard", "finalize")


def check_restore_options(step: str, *, local_fs_dir: object, reset_local_fs: bool, hk_data_s3: object) -> None:
    """Options of restore_to_s3 that go together. The CLI checks them before it opens anything;
    restore_to_s3 checks them again for every other caller (the Job agent)."""
    if step not in RESTORE_STEPS:
        raise MobackupError(f"restore step {step!r} is not one of {', '.join(RESTORE_STEPS)}")
    if step == "shard" and (local_fs_dir or hk_data_s3):  # a shard writes objects only, never hk_data
        raise MobackupError("--local-fs-dir and --hk-data-s3 go with --finalize (or a restore without --shard)")
    if reset_local_fs and not local_fs_dir:
        raise MobackupError("--reset-local-fs needs --local-fs-dir (the log service's data directory)")


def restore_to_s3(repo: Repository, backup_id: str, target: S3Place, *, overwrite: bool = False,
                  local_fs_dir: Path | None = None, reset_local_fs: bool = False, hk_data_s3: S3Place | None = None,
                  step: str = "all", shard: tuple[int, int] = (0, 1),
                  progress: Progress | None = None) -> S3RestoreResult:
    """Restores an S3-resident online backup: its `shared/*` objects to `target` (MatrixOne's SHARED
    key prefix; stop the cluster first), `local/hk_data` into `local_fs_dir/hk_data` (the root of
    the log service's LOCAL file service: its `data-dir`, by default `<service data-dir>/local`).
    Refuses a non-empty prefix unless `overwrite`, and then leaves
    exactly the backup's objects under it.

    `reset_local_fs`: `local_fs_dir` is the whole data directory of a stopped log service, whose old
    log (WAL) describes commits the restored objects lack: it must be empty, or with `overwrite` its
    content is removed (after every object is written). `hk_data_s3`: the object where a new
    cluster's log service reads the ID allocator state at bootstrap (`BACKUP://hk_data` of the
    MatrixOne operator's `restoreFrom`), written plain as an S3 file service reads it.

    Scaled out: `step="shard"` uploads every N-th object from position I (`shard` (I, N)) and
    nothing else, on any host, in any order; `step="finalize"` then checks that every object is
    there with its size, removes the others (with `overwrite`) and writes hk_data. Both refuse a
    prefix holding objects that are not the backup's unless `overwrite` (the shards' own uploads are
    the backup's, so a shard can run again)."""
    check_restore_options(step, local_fs_dir=local_fs_dir, reset_local_fs=reset_local_fs, hk_data_s3=hk_data_s3)
    index, count = shard
    if not 0 <= index < count:
        raise MobackupError(f"shard {index} of {count}: the index must be 0..{count - 1}")
    # Before anything is written or removed: never over the repository, a whole bucket or a system directory.
    check_s3_restore(repo, (target.bucket, target.prefix),
                     (hk_data_s3.bucket, hk_data_s3.prefix) if hk_data_s3 is not None and step != "shard" else None)
    if local_fs_dir is not None and step != "shard":
        local_fs_dir = checked_local_dir(Path(local_fs_dir), repo, "empty" if reset_local_fs else "write hk_data into",
                                         emptied=reset_local_fs)
    progress = progress or NullProgress()
    clock = time.monotonic()
    with repo.lock(exclusive=False, purpose=f"restore of {backup_id} to {target.url}", wait_seconds=60), \
            tempfile.TemporaryDirectory(prefix="mobackup-restore-s3-") as scratch:
        summary = repo.load_summary(repo.resolve_id(backup_id))
        if summary.extra.get("resident") != "s3":
            raise MobackupError(f"backup {summary.id} is of a data directory (DISK-framed objects); restore it with "
                                "--target into a data directory, not into a bucket")
        backend = target.backend(max(16, repo.parallelism * 2))
        plan = _RestorePlan(Path(scratch))  # the target's listing and the backup's objects, on disk
        with contextlib.closing(plan):
            return _restore(repo, summary, target, backend, plan, Path(scratch), overwrite=overwrite,
                            local_fs_dir=local_fs_dir, reset_local_fs=reset_local_fs, hk_data_s3=hk_data_s3,
                            step=step, shard=shard, progress=progress, clock=clock)


def _restore(repo: Repository, summary: BackupSummary, target: S3Place, backend: Any, plan: _RestorePlan,
             scratch: Path, *, overwrite: bool, local_fs_dir: Path | None, reset_local_fs: bool,
             hk_data_s3: S3Place | None, step: str, shard: tuple[int, int], progress: Progress,
             clock: float) -> S3RestoreResult:
    """restore_to_s3 once the backup is known to be one of S3-resident data."""
    index, count = shard
    existing = plan.add_listing(backend.list(""))
    if step == "all" and existing and not overwrite:
        raise TargetNotEmptyError(f"{target.url} is not empty ({existing} objects): refusing to restore "
                                  "over a cluster's data; stop the cluster and give --overwrite, or use an empty "
                                  "prefix")
    hk_path = None
    if local_fs_dir is not None and step != "shard":
        hk_path = Path(local_fs_dir) / "hk_data"
        if reset_local_fs and not overwrite and _has_entries(Path(local_fs_dir)):
            raise TargetNotEmptyError(f"{local_fs_dir} is not empty (a log service's old state): refusing to "
                                      "remove it without --overwrite")
        if hk_path.exists() and not overwrite:
            raise TargetNotEmptyError(f"{hk_path} exists: refusing to replace the log service state without "
                                      "--overwrite")
    hk_object = _object_of(hk_data_s3) if hk_data_s3 is not None and step != "shard" else None
    if hk_object is not None and not overwrite and hk_object[0].exists(hk_object[1]):
        raise TargetNotEmptyError(f"{hk_data_s3.url} exists: refusing to replace it without --overwrite")
    hk = _file_records(repo, summary, plan, scratch)
    if hk is None:
        raise MobackupError(f"backup {summary.id} has no {HK_DATA}")
    if hk["size"] > MAX_HK_DATA_SIZE:
        raise CorruptDataError(f"backup {summary.id}: {HK_DATA} is listed with {hk['size']} bytes, more than "
                               f"the {MAX_HK_DATA_SIZE} a HAKeeper state can take (altered file list?)")
    foreign, first_foreign = plan.foreign()
    if step != "all" and foreign and not overwrite:
        raise TargetNotEmptyError(f"{target.url} holds {foreign} objects that are not backup {summary.id}'s "
                                  f"(e.g. {first_foreign}): refusing to restore over a cluster's data; stop the "
                                  "cluster and give --overwrite, or use an empty prefix")
    objects, objects_size = plan.totals()
    if step == "finalize":
        missing, first_missing = plan.missing()
        if missing:
            raise MobackupError(f"{missing} of the backup's {objects} objects are missing or differ in "
                                f"{target.url} (e.g. {first_missing}): run the restore shards (again) first")
        uploads, uploads_size = 0, 0
    else:
        uploads, uploads_size = plan.totals(index, count)
    progress.start(uploads_size, uploads)
    if uploads:
        _upload_objects(repo, summary.id, backend, target, plan.uploads(index, count), progress)
    removed = backend.delete(plan.foreign_keys()) if foreign and step != "shard" else 0
    if step != "shard":
        data = _file_content(repo, hk)
        if hk_object is not None:
            hk_object[0].write(hk_object[1], disk_unframe(data))
        if hk_path is not None:
            if reset_local_fs:
                _empty_directory(Path(local_fs_dir or hk_path.parent))
            _write_durably(hk_path, data)
    progress.finish()
    return S3RestoreResult(summary.id, target.url, uploads if step == "shard" else objects,
                           uploads_size if step == "shard" else objects_size, removed,
                           str(hk_path) if hk_path else None, round(time.monotonic() - clock, 3),
                           hk_data_s3.url if hk_data_s3 else None)


def _file_content(repo: Repository, record: dict[str, Any]) -> bytes:
    """A (small) file's whole content, each blob inflated no further than its listed size."""
    return b"".join(repo.get_blob(digest, repo.chunk_plain_size(record["size"], index))
                    for index, digest in enumerate(record["chunks"]))


def _file_records(repo: Repository, summary: BackupSummary, plan: _RestorePlan,
                  scratch: Path) -> dict[str, Any] | None:
    """The backup's `shared/` file records into `plan`, every entry validated first (an untrusted
    file list never reaches S3: the whole list, its digest included, is checked before `plan` is
    used); returns the record of hk_data, or None."""
    files = scratch / "files"
    repo.download_file_list(summary, files)
    checker = ManifestChecker(scratch, repo.chunk_size, f"backup {summary.id}")
    hk = None
    try:
        for record in repo.entries(summary, files):
            checker.check(record)
            if record["type"] != "file":
                continue
            if record["path"].startswith("shared/"):
                plan.add_object(record["path"][len("shared/"):], record["size"], record["chunks"])
            elif record["path"] == HK_DATA:
                hk = record
        checker.finish()
    finally:
        checker.close()
        files.unlink(missing_ok=True)
    plan.flush()
    return hk


class _RestorePlan:
    """The target prefix's listing (key, size) and the backup's objects (key, size, chunks, by their
    position in the file list), in SQLite in the restore's scratch directory: memory stays flat with
    millions of objects."""

    def __init__(self, directory: Path) -> None:
        from .index import connect

        self.db = connect(directory / "plan.sqlite")
        self.db.execute("CREATE TABLE existing (key TEXT PRIMARY KEY, size INTEGER) WITHOUT ROWID")
        self.db.execute("CREATE TABLE objects (n INTEGER PRIMARY KEY, key TEXT UNIQUE, size INTEGER, chunks TEXT)")
        self.pending: list[tuple[str, int, str]] = []

    def add_listing(self, infos: Iterable[Any]) -> int:
        """The target's listing; returns how many objects it holds."""
        from .index import BATCH, _insert

        batch: list[tuple[str, int]] = []
        for info in infos:
            batch.append((info.key, info.size))
            if len(batch) >= BATCH:
                _insert(self.db, "INSERT OR REPLACE INTO existing VALUES (?,?)", batch)
        _insert(self.db, "INSERT OR REPLACE INTO existing VALUES (?,?)", batch)
        return self._count("SELECT COUNT(*) FROM existing")

    def add_object(self, key: str, size: int, chunks: list[str]) -> None:
        """The next object of the file list (checked: its key is listed once, see ManifestChecker)."""
        from .index import BATCH

        self.pending.append((key, size, "".join(chunks)))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        from .index import _insert

        _insert(self.db, "INSERT OR REPLACE INTO objects (key, size, chunks) VALUES (?,?,?)", self.pending)

    def totals(self, index: int = 0, count: int = 1) -> tuple[int, int]:
        """(objects, bytes) at positions index, index + count, ... of the file list."""
        found, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE (n - 1) % ? = ?",
                                      (count, index)).fetchone()
        return int(found), int(size)

    def uploads(self, index: int, count: int) -> Iterator[dict[str, Any]]:
        """The records to upload at positions index, index + count, ..., in list order. Read
        JSON_BATCH rows at a time as one JSON text (a step per row would take the GIL back from the upload
        threads once a row: see StagedIndex.staged)."""
        from .index import JSON_BATCH

        last = 0
        while True:
            (batch,) = self.db.execute(
                "SELECT json_group_array(json_array(n, key, size, chunks)) FROM (SELECT n, key, size, chunks "
                "FROM objects WHERE n > ? AND (n - 1) % ? = ? ORDER BY n LIMIT ?)",
                (last, count, index, JSON_BATCH)).fetchone()
            rows = json.loads(batch)
            if not rows:
                return
            rows.sort()
            for _, key, size, chunks in rows:
                yield {"path": f"shared/{key}", "size": size,
                       "chunks": [chunks[i:i + 64] for i in range(0, len(chunks), 64)]}
            last = rows[-1][0]

    def foreign(self) -> tuple[int, str | None]:
        """(how many listed objects are not the backup's, the first by key)."""
        where = "FROM existing e WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.key = e.key)"
        first = self.db.execute(f"SELECT e.key {where} ORDER BY e.key LIMIT 1").fetchone()
        return self._count(f"SELECT COUNT(*) {where}"), None if first is None else str(first[0])

    def foreign_keys(self) -> Iterator[str]:
        for (key,) in self.db.execute("SELECT e.key FROM existing e WHERE NOT EXISTS "
                                      "(SELECT 1 FROM objects o WHERE o.key = e.key) ORDER BY e.key"):
            yield key

    def missing(self) -> tuple[int, str | None]:
        """(how many of the backup's objects are not listed with their size, the first in list order)."""
        where = "FROM objects o LEFT JOIN existing e ON e.key = o.key WHERE e.size IS NOT o.size"
        first = self.db.execute(f"SELECT o.key {where} ORDER BY o.n LIMIT 1").fetchone()
        return self._count(f"SELECT COUNT(*) {where}"), None if first is None else str(first[0])

    def _count(self, query: str) -> int:
        return int(self.db.execute(query).fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _blobs(repo: Repository, backup_id: str, record: dict[str, Any]) -> Iterator[bytes]:
    """A file's content blob by blob, each checked against its name and against the size the file
    list gives its chunk (a listed digest of another size is an altered list)."""
    for index, digest in enumerate(record["chunks"]):
        size = repo.chunk_plain_size(record["size"], index)
        blob = repo.get_blob(digest, size)
        if len(blob) != size:
            raise CorruptDataError(f"backup {backup_id}: {record['path']} chunk {index} has {len(blob)} bytes, "
                                   f"listed {size}")
        yield blob


def _parts(blobs: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Multipart parts of a file of `size` bytes from its blobs: each blob a part of its own when it
    is large enough (no copy), else consecutive blobs joined up to a part's smallest size (and few
    enough parts for S3's limit)."""
    target = max(MIN_PART, -(-size // MAX_PARTS))
    group: list[bytes] = []
    held = 0
    for blob in blobs:
        group.append(blob)
        held += len(blob)
        if held >= target:
            yield group[0] if len(group) == 1 else b"".join(group)
            group, held = [], 0
    if group:
        yield b"".join(group)


def _upload_objects(repo: Repository, backup_id: str, backend: Any, target: S3Place, records: list[dict[str, Any]],
                    progress: Progress) -> None:
    def upload(record: dict[str, Any]) -> None:
        key = record["path"][len("shared/"):]
        if record["size"] < SINGLE_PUT_MAX:
            data = b"".join(_blobs(repo, backup_id, record))  # one blob: that very object, uncopied
            if len(data) != record["size"]:
                raise CorruptDataError(f"backup {backup_id}: {record['path']} has {len(data)} bytes, "
                                       f"listed {record['size']}")
            backend.write(key, data)
        else:
            # Parts sent while the next blobs are read; the count is checked before the upload
            # completes (a short file aborts it: nothing appears under the key).
            def checked() -> Iterator[bytes]:
                count = 0
                for part in _parts(_blobs(repo, backup_id, record), record["size"]):
                    count += len(part)
                    yield part
                if count != record["size"]:
                    raise CorruptDataError(f"backup {backup_id}: {record['path']} has {count} bytes, "
                                           f"listed {record['size']}")

            backend.write_parts(key, checked())
        progress.advance(record["size"], 1)

    with BoundedWorkers(repo.parallelism, "mobackup-restore-s3") as workers:
        for record in records:
            if workers.failed:
                break
            repo.prefetch_blobs(record["chunks"])  # read ahead while the objects before are sent
            workers.submit(upload, record)


def _write_durably(path: Path, data: bytes) -> None:
    """`path` holds `data`, fsync'd, replaced at once. Its directory is the log service's, writable by
    whoever runs it: the temporary is a new random name, created exclusively and never through a
    link (a predictable name would let a link planted there aim this root process's write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_atomically(directory, path.name, data, durable=True)
    finally:
        os.close(directory)


def _object_of(place: S3Place) -> tuple[Any, str]:
    """(the backend of the "folder" of the object `place` names, the object's name there)."""
    folder, _, name = place.prefix.rpartition("/")
    return dataclasses.replace(place, prefix=folder).backend(), name


def _has_entries(directory: Path) -> bool:
    try:
        return any(directory.iterdir())
    except FileNotFoundError:
        return False


def _empty_directory(directory: Path) -> None:
    """Removes what `directory` holds (not the directory itself: it may be a volume's mount point);
    symlinks are removed, never followed."""
    if not directory.exists():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()
