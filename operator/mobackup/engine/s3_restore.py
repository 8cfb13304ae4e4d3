"""Restores of an S3-resident online backup (engine/online_s3.py) into a bucket prefix: its
`shared/*` objects to MatrixOne's SHARED key prefix, and `local/hk_data` (HAKeeper's state) into the
log service's LOCAL file service or an object a new cluster bootstraps from. Each object's content
comes blob by blob from the repository, every blob checked against its name, and the file list is
validated before anything reaches S3."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
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
    with repo.lock(exclusive=False, purpose=f"restore of {backup_id} to {target.url}", wait_seconds=60):
        summary = repo.load_summary(repo.resolve_id(backup_id))
        if summary.extra.get("resident") != "s3":
            raise MobackupError(f"backup {summary.id} is of a data directory (DISK-framed objects); restore it with "
                                "--target into a data directory, not into a bucket")
        backend = target.backend(max(16, repo.parallelism * 2))
        existing = {info.key: info.size for info in backend.list("")}
        if step == "all" and existing and not overwrite:
            raise TargetNotEmptyError(f"{target.url} is not empty ({len(existing)} objects): refusing to restore "
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
        records = _file_records(repo, summary)
        objects = [r for r in records if r["path"].startswith("shared/")]
        wanted = {r["path"][len("shared/"):]: r["size"] for r in objects}
        hk = next((r for r in records if r["path"] == HK_DATA), None)
        if hk is None:
            raise MobackupError(f"backup {summary.id} has no {HK_DATA}")
        if hk["size"] > MAX_HK_DATA_SIZE:
            raise CorruptDataError(f"backup {summary.id}: {HK_DATA} is listed with {hk['size']} bytes, more than "
                                   f"the {MAX_HK_DATA_SIZE} a HAKeeper state can take (altered file list?)")
        foreign = sorted(set(existing) - set(wanted))
        if step != "all" and foreign and not overwrite:
            raise TargetNotEmptyError(f"{target.url} holds {len(foreign)} objects that are not backup {summary.id}'s "
                                      f"(e.g. {foreign[0]}): refusing to restore over a cluster's data; stop the "
                                      "cluster and give --overwrite, or use an empty prefix")
        if step == "finalize":
            missing = [key for key, size in wanted.items() if existing.get(key) != size]
            if missing:
                raise MobackupError(f"{len(missing)} of the backup's {len(wanted)} objects are missing or differ in "
                                    f"{target.url} (e.g. {missing[0]}): run the restore shards (again) first")
            uploads: list[dict[str, Any]] = []
        else:
            uploads = objects[index::count]
        progress.start(sum(r["size"] for r in uploads), len(uploads))
        _upload_objects(repo, summary.id, backend, target, uploads, progress)
        removed = backend.delete(foreign) if foreign and step != "shard" else 0
        if step != "shard":
            data = _file_content(repo, hk)
            if hk_object is not None:
                hk_object[0].write(hk_object[1], disk_unframe(data))
            if hk_path is not None:
                if reset_local_fs:
                    _empty_directory(Path(local_fs_dir or hk_path.parent))
                _write_durably(hk_path, data)
        progress.finish()
    return S3RestoreResult(summary.id, target.url, len(uploads) if step == "shard" else len(objects),
                           sum(r["size"] for r in (uploads if step == "shard" else objects)), removed,
                           str(hk_path) if hk_path else None, round(time.monotonic() - clock, 3),
                           hk_data_s3.url if hk_data_s3 else None)


def _file_content(repo: Repository, record: dict[str, Any]) -> bytes:
    """A (small) file's whole content, each blob inflated no further than its listed size."""
    return b"".join(repo.get_blob(digest, repo.chunk_plain_size(record["size"], index))
                    for index, digest in enumerate(record["chunks"]))


def _file_records(repo: Repository, summary: BackupSummary) -> list[dict[str, Any]]:
    """The backup's file records, every entry validated (an untrusted file list never reaches S3)."""
    with tempfile.TemporaryDirectory(prefix="mobackup-") as scratch:
        files = Path(scratch) / "files"
        repo.download_file_list(summary, files)
        checker = ManifestChecker(Path(scratch), repo.chunk_size, f"backup {summary.id}")
        records: list[dict[str, Any]] = []
        try:
            for record in repo.entries(summary, files):
                checker.check(record)
                if record["type"] == "file":
                    records.append(record)
            checker.finish()
        finally:
            checker.close()
    return records


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
