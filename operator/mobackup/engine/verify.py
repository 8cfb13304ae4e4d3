"""Check a backup: its file list, and every blob it references (read and hashed, or quickly)."""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .codec import NONCE_SIZE, TAG_SIZE
from .errors import MobackupError
from .index import DigestSet
from .layout import PathRules
from .manifest import ManifestChecker
from .objectlock import missing_hint, recorded_until, retention_problem
from .progress import NullProgress, Progress
from .repository import Repository, blob_key, files_key, summary_key
from .safefs import DirectoryFds
from .storage import ObjectNotFound
from .walk import open_root, walk
from .workers import BoundedWorkers

MAX_PROBLEMS = 100


@dataclass
class VerifyResult:
    backup_id: str
    quick: bool
    file_count: int = 0
    blob_count: int = 0
    checked_bytes: int = 0
    duration_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    repaired_blobs: int = 0  # damaged blobs stored again from the source (--repair)
    damaged_blobs: dict[str, str] = field(default_factory=dict, repr=False)  # digest -> a file using it

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["damaged_blobs"] = len(self.damaged_blobs)
        return {**data, "ok": self.ok}


def verify_backup(repo: Repository, backup_id: str, *, quick: bool = False,
                  progress: Progress | None = None, repair_from: Path | None = None) -> VerifyResult:
    """Check a backup. With `repair_from` (the backed-up data directory), damaged or missing blobs
    are stored again from the chunks of the source that still have their digest, and the backup is
    checked again: the result is that of the second check, with `repaired_blobs` set."""
    result = _verify(repo, backup_id, quick, progress or NullProgress())
    if repair_from is None or not result.damaged_blobs:
        return result
    with repo.lock(exclusive=False, purpose=f"repair of {result.backup_id}", wait_seconds=60):
        repaired = repair_blobs(repo, result.damaged_blobs, Path(repair_from))
    again = _verify(repo, backup_id, quick, NullProgress())
    again.repaired_blobs = repaired
    return again


def repair_blobs(repo: Repository, damaged: dict[str, str], data_dir: Path) -> int:
    """Store again each damaged blob whose content a file of `data_dir` still holds: first the files
    that referenced them, then, for what is left, the whole tree. Returns the blobs stored."""
    if not data_dir.is_dir():
        raise MobackupError(f"{data_dir}: no such data directory to repair from")
    wanted = dict(damaged)
    repaired = 0

    def scan(dirs: DirectoryFds, rel: str, expect: tuple[int, int] | None = None) -> None:
        nonlocal repaired
        try:  # never through a link the data's owner planted (walk.walk)
            source = open(dirs.open_file(rel, expect), "rb")  # noqa: SIM115 - closed below
        except OSError:
            return  # gone, unreadable, or a link: another file may hold the chunk
        with source:
            while wanted:
                data = source.read(repo.chunk_size)
                if not data:
                    break
                digest = repo.codec.digest(data)
                if digest in wanted:
                    repo.put_blob(digest, data)
                    del wanted[digest]
                    repaired += 1
                if len(data) < repo.chunk_size:
                    break

    with DirectoryFds(open_root(data_dir), str(data_dir)) as dirs:
        for rel in sorted(set(wanted.values())):
            if wanted:
                scan(dirs, rel)
        if wanted:
            for entry in walk(data_dir, PathRules(), dirs=dirs):
                if not wanted:
                    break
                if entry.kind == "file":
                    scan(dirs, entry.rel, entry.ident)
    return repaired


def _verify(repo: Repository, backup_id: str, quick: bool, progress: Progress) -> VerifyResult:
    backup_id = repo.resolve_id(backup_id)
    summary = repo.load_summary(backup_id)
    result = VerifyResult(backup_id=backup_id, quick=quick)
    lock = threading.Lock()
    clock = time.monotonic()

    def problem(text: str, digest: str | None = None, rel: str = "") -> None:
        with lock:
            result.problem_count += 1
            if len(result.problems) < MAX_PROBLEMS:
                result.problems.append(text)
            if digest is not None:
                result.damaged_blobs[digest] = rel

    locked_until = recorded_until(summary) if repo.object_lock is not None else None

    def retention(key: str, digest: str | None = None, rel: str = "") -> None:
        """Under Object Lock: the object's current version must be retained as its backup says."""
        try:
            found = retention_problem(repo.backend, key, locked_until)
        except ObjectNotFound:
            found = f"{key} is missing{missing_hint(repo.backend, key)}"
        if found:
            problem(f"{rel + ': ' if rel else ''}{found}", digest, rel)

    def check(digest: str, expected: int, rel: str) -> None:
        if repo.object_lock is not None:
            retention(blob_key(digest), digest, rel)
        try:
            if quick:
                size = repo.backend.size(blob_key(digest))
                if size is None:
                    problem(f"{rel}: blob {digest} is missing", digest, rel)
                elif repo.codec.plain and size != expected:
                    problem(f"{rel}: blob {digest} has {size} bytes, expected {expected}", digest, rel)
                elif repo.codec.keys is not None and size < NONCE_SIZE + TAG_SIZE + 1:
                    problem(f"{rel}: blob {digest} is truncated ({size} bytes)", digest, rel)
            else:
                data = repo.get_blob(digest, expected)
                if len(data) != expected:
                    problem(f"{rel}: blob {digest} has {len(data)} bytes, expected {expected}", digest, rel)
        except MobackupError as error:
            problem(f"{rel}: {error}", digest, rel)
        with lock:
            result.blob_count += 1
            result.checked_bytes += expected
        progress.advance(expected, 0)

    if repo.object_lock is not None:
        for key in (summary_key(backup_id), files_key(backup_id)):
            retention(key)
    progress.start(summary.size_bytes, summary.file_count)
    with tempfile.TemporaryDirectory(prefix="mobackup-verify-") as scratch:
        seen = DigestSet(Path(scratch) / "seen.sqlite")
        checker = ManifestChecker(Path(scratch), repo.chunk_size, f"backup {backup_id}")
        try:
            with BoundedWorkers(repo.parallelism, "mobackup-verify") as workers:
                for record in repo.entries(summary):
                    checker.check(record)  # an entry restore would refuse makes the backup damaged
                    if record["type"] != "file":
                        continue
                    result.file_count += 1
                    size, chunks = record["size"], record["chunks"]
                    for index, digest in enumerate(chunks):
                        expected = repo.chunk_plain_size(size, index)
                        if seen.add_new(digest):
                            workers.submit(check, digest, expected, record["path"])
                    progress.advance(0, 1)
            checker.finish()
        except MobackupError as error:  # the file list itself is damaged
            problem(str(error))
        finally:
            seen.close()
            checker.close()
    if result.file_count != summary.file_count and result.problem_count == 0:
        problem(f"the file list has {result.file_count} files, the summary says {summary.file_count}")
    result.duration_seconds = round(time.monotonic() - clock, 3)
    progress.finish()
    return result
