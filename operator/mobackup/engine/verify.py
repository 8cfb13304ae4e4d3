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
from .manifest import ManifestChecker
from .progress import NullProgress, Progress
from .repository import Repository, blob_key
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

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_backup(repo: Repository, backup_id: str, *, quick: bool = False,
                  progress: Progress | None = None) -> VerifyResult:
    progress = progress or NullProgress()
    backup_id = repo.resolve_id(backup_id)
    summary = repo.load_summary(backup_id)
    result = VerifyResult(backup_id=backup_id, quick=quick)
    lock = threading.Lock()
    clock = time.monotonic()

    def problem(text: str) -> None:
        with lock:
            result.problem_count += 1
            if len(result.problems) < MAX_PROBLEMS:
                result.problems.append(text)

    def check(digest: str, expected: int, rel: str) -> None:
        try:
            if quick:
                size = repo.backend.size(blob_key(digest))
                if size is None:
                    problem(f"{rel}: blob {digest} is missing")
                elif repo.codec.plain and size != expected:
                    problem(f"{rel}: blob {digest} has {size} bytes, expected {expected}")
                elif repo.codec.keys is not None and size < NONCE_SIZE + TAG_SIZE + 1:
                    problem(f"{rel}: blob {digest} is truncated ({size} bytes)")
            else:
                data = repo.get_blob(digest)
                if len(data) != expected:
                    problem(f"{rel}: blob {digest} has {len(data)} bytes, expected {expected}")
        except MobackupError as error:
            problem(f"{rel}: {error}")
        with lock:
            result.blob_count += 1
            result.checked_bytes += expected
        progress.advance(expected, 0)

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
                        expected = min(repo.chunk_size, size - index * repo.chunk_size)
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
