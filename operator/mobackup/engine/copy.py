"""Copy backups from one repository to another (directory or S3, any keys and compression).

A copied backup is published in the target as a backup is (docs/repository-format.md, section 7):
its blobs first, then its file list, then its summary, the commit point. A copy killed at any point
leaves no summary in the target, and a new run transfers only the blobs the target still lacks.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BackupNotFound, CorruptDataError, MobackupError
from .index import DigestMap, DigestSet
from .manifest import UNPUBLISHED
from .model import BackupSummary, iso, utc_now
from .progress import NullProgress, Progress
from .repository import FileListWriter, Repository
from .restore import check_file_list
from .workers import BoundedWorkers

# Fields that say a target's backup of the same ID is the same backup (the file list may differ:
# blob names depend on the repository's keys).
SAME_BACKUP = ("source", "backup_ts", "type", "size_bytes", "file_count", "entry_count")


@dataclass
class CopyResult:
    source: str
    target: str
    copied: list[str] = field(default_factory=list)  # published in the target by this run
    present: list[str] = field(default_factory=list)  # in the target already
    blobs_copied: int = 0
    blobs_present: int = 0  # referenced blobs the target held already (not transferred)
    bytes_copied: int = 0  # plaintext bytes of the blobs transferred
    stored_bytes: int = 0  # what they take in the target
    duration_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Translation:
    """Source digest -> target digest (index.DigestMap), for several threads. Blob names are keyed
    per repository (an encrypted repository digests with its identity key), so a chunk has another
    name in a target with other keys; with the same identity the name stays and nothing is stored."""

    def __init__(self, path: Path) -> None:
        self.names = DigestMap(path, shared=True)
        self.lock = threading.Lock()

    def put(self, source: str, target: str) -> None:
        with self.lock:
            self.names.put(source, target)

    def flush(self) -> None:
        with self.lock:
            self.names.flush()

    def lookup(self, source: str) -> str | None:
        """The name, once flushed (a miss only costs reading the blob again)."""
        with self.lock:
            return self.names.get(source)

    def get(self, source: str) -> str:
        name = self.lookup(source)
        if name is None:  # every chunk was transferred or looked up in the first pass
            raise MobackupError(f"internal error: no target name for blob {source}")
        return name

    def close(self) -> None:
        self.names.close()


def same_identity(source: Repository, target: Repository) -> bool:
    """Whether a chunk has the same digest in both repositories (same identity key, or none)."""
    a, b = source.codec.keys, target.codec.keys
    return (a is None and b is None) or (a is not None and b is not None and a.identity == b.identity)


def select_backups(repo: Repository, ids: Iterable[str] | None) -> list[BackupSummary]:
    """The completed backups named by `ids` (prefixes accepted), or all of them; oldest first, so that
    a base is published in the target before the backups that name it. A damaged summary named
    explicitly is an error; with all, it is an error too (nothing is silently left behind)."""
    if ids is None:
        damaged: dict[str, str] = {}
        summaries = repo.list_backups(damaged=damaged)
        if damaged:
            backup_id, reason = sorted(damaged.items())[0]
            raise CorruptDataError(f"backup {backup_id} in {repo.location} is damaged ({reason}); "
                                   "copy the others by ID")
        return summaries
    wanted = {repo.resolve_id(i) for i in ids}
    return sorted((repo.load_summary(i) for i in wanted), key=lambda s: (s.completed_at, s.id))


class _Copier:
    def __init__(self, source: Repository, target: Repository, scratch: Path, progress: Progress) -> None:
        self.source = source
        self.target = target
        self.scratch = scratch
        self.progress = progress
        self.same = same_identity(source, target)
        self.lock = threading.Lock()
        self.result = CopyResult(source=source.location, target=target.location)
        # What the target holds, listed once (one listing instead of a query per blob), by name and
        # stored size where the size is known: a truncated blob is transferred again.
        self.sized = target.stored_size(1) is not None
        self.known = DigestSet(scratch / "known.sqlite", shared=True)
        for digest, stored in target.blob_sizes():
            self.known.add(f"{digest}/{stored}" if self.sized else digest)
        self.known.flush()
        self.translation = None if self.same else _Translation(scratch / "names.sqlite")

    def close(self) -> None:
        self.known.close()
        if self.translation is not None:
            self.translation.close()

    def _target_has(self, digest: str, size: int) -> bool:
        expected = self.target.stored_size(size)
        with self.lock:
            if (f"{digest}/{expected}" if self.sized else digest) in self.known:
                return True
        return False

    def _transfer(self, backup_id: str, digest: str, size: int, path: str) -> tuple[int, int, int]:
        """One chunk: read from the source only when needed, checked against its name, stored
        under the target's name. Returns (blobs copied, plaintext bytes, stored bytes)."""
        if self.same and self._target_has(digest, size):
            return 0, 0, 0
        try:
            data = self.source.get_blob(digest, size)
            if len(data) != size:
                raise CorruptDataError(f"{self.source.location}: blob {digest} has {len(data)} bytes, "
                                       f"expected {size}")
        except MobackupError as error:
            raise CorruptDataError(f"backup {backup_id} in {self.source.location} is damaged: {path}: {error}; "
                                   "nothing of it was published in the target") from None
        name = digest if self.same else self.target.codec.digest(data)
        if self.translation is not None:
            self.translation.put(digest, name)
            if self._target_has(name, size):
                return 0, 0, 0
        stored = self.target.put_blob(name, data)
        with self.lock:
            self.known.add(f"{name}/{stored}" if self.sized else name)
        return 1, size, stored

    def copy(self, summary: BackupSummary) -> bool:
        """Copy one backup; False when the target has it already."""
        if self._existing(summary):
            return False
        if self.source.chunk_size != self.target.chunk_size:
            raise MobackupError(f"{self.target.location} has chunk size {self.target.chunk_size}, "
                                f"{self.source.location} {self.source.chunk_size}: chunks cannot be copied as they are")
        scratch = Path(tempfile.mkdtemp(prefix="copy-", dir=self.scratch))
        try:
            self._copy(summary, scratch)
        finally:  # its local list copies go now: with --all, scratch space stays that of one backup
            shutil.rmtree(scratch, ignore_errors=True)
        return True

    def _copy(self, summary: BackupSummary, scratch: Path) -> None:
        files = scratch / "source.files"
        try:
            self.source.download_file_list(summary, files)
            # The whole list is checked (entries, trailer) before anything is written to the target.
            (scratch / "in").mkdir()
            check_file_list(self.source, summary, files, scratch / "in")
        except BackupNotFound:
            raise
        except MobackupError as error:
            raise CorruptDataError(f"backup {summary.id} in {self.source.location}: {error}") from None
        counts = [0, 0, 0, 0]  # blobs copied, plaintext bytes, stored bytes, referenced blobs

        def done(outcome: tuple[int, int, int]) -> None:
            with self.lock:
                for i, value in enumerate(outcome):
                    counts[i] += value
            self.progress.advance(outcome[1], 0)

        seen = DigestSet(scratch / "seen.sqlite")
        try:
            with BoundedWorkers(self.target.parallelism, "mobackup-copy") as workers:
                for record in self.source.entries(summary, files):
                    if record["type"] != "file":
                        continue
                    for index, digest in enumerate(record["chunks"]):
                        if workers.failed:
                            break
                        if seen.add_new(digest):
                            counts[3] += 1
                            if self.translation is not None and self.translation.lookup(digest) is not None:
                                continue  # read and stored for an earlier backup of this run
                            size = self.source.chunk_plain_size(record["size"], index)
                            workers.submit(self._transfer, summary.id, digest, size, record["path"],
                                           on_result=done)
                    self.progress.advance(0, 1)
        finally:
            seen.close()
        if self.translation is not None:
            self.translation.flush()
        # Every blob is in the target: now its file list, then (the commit point) its summary.
        writer = FileListWriter(self.target.codec, summary.id, scratch)
        try:
            for record in self.source.entries(summary, files):
                if self.translation is not None and record["type"] == "file":
                    record = {**record, "chunks": [self.translation.get(d) for d in record["chunks"]]}
                writer.add(record)
        finally:
            writer.close()
        copied = replace(
            summary, location=self.target.location, files_digest=writer.hasher.hexdigest(),
            files_frames=writer.frames, entry_count=writer.count,
            new_bytes=counts[1], stored_bytes=counts[2], new_blob_count=counts[0],
            extra={**summary.extra, "copied_from": {"location": self.source.location,
                                                    "repository_id": self.source.config.get("id"),
                                                    "copied_at": iso(utc_now())}},
        )
        (scratch / "out").mkdir()
        check_file_list(self.target, copied, writer.path, scratch / "out", verdict=UNPUBLISHED)
        self.target.publish(copied, writer.path)
        self.result.blobs_copied += counts[0]
        self.result.bytes_copied += counts[1]
        self.result.stored_bytes += counts[2]
        self.result.blobs_present += counts[3] - counts[0]

    def _existing(self, summary: BackupSummary) -> bool:
        """Whether the target has this backup already: the same ID describing the same backup. A
        summary that says otherwise (a name reused, or altered) is an error, never overwritten."""
        try:
            there = self.target.load_summary(summary.id)
        except BackupNotFound:
            return False
        different = [name for name in SAME_BACKUP if getattr(there, name) != getattr(summary, name)]
        if different:
            raise MobackupError(f"backup {summary.id} in {self.target.location} is not the one in "
                                f"{self.source.location} (different {', '.join(different)}); not copied")
        return True


def copy_backups(source: Repository, target: Repository, ids: Iterable[str] | None = None,
                 progress: Progress | None = None) -> CopyResult:
    """Copy the backups named by `ids` (all when None) from `source` to `target`, those the target
    lacks. Both repositories hold a shared lock meanwhile: prune cannot remove the source's blobs
    being read nor the target's blobs written ahead of their summary."""
    if source.config.get("id") == target.config.get("id"):
        raise MobackupError(f"{source.location} and {target.location} are the same repository")
    clock = time.monotonic()
    progress = progress or NullProgress()
    with (source.lock(exclusive=False, purpose="copy (reading)", wait_seconds=60),
          target.lock(exclusive=False, purpose=f"copy from {source.location}", wait_seconds=60)):
        summaries = select_backups(source, ids)
        progress.start(sum(s.size_bytes for s in summaries), sum(s.file_count for s in summaries))
        with tempfile.TemporaryDirectory(prefix="mobackup-copy-") as scratch:
            copier = _Copier(source, target, Path(scratch), progress)
            try:
                for summary in summaries:
                    (copier.result.copied if copier.copy(summary) else copier.result.present).append(summary.id)
            finally:
                copier.close()
    progress.finish()
    copier.result.duration_seconds = round(time.monotonic() - clock, 3)
    return copier.result
