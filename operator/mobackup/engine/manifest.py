"""Checks of a backup's file list before anything acts on it.

A repository is untrusted input: whoever can write to the bucket of a plain repository can edit a
file list (the format is documented). Every entry is checked here, and restore checks the whole list
(including its digest, see Repository.entries) before it writes the first file.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from .errors import CorruptDataError

DIGEST = re.compile(r"^[0-9a-f]{64}$")
KINDS = ("file", "dir", "symlink")
_BATCH = 20_000


def path_problem(path: object) -> str | None:
    """Why `path` cannot be a file-list path (relative, `/`-separated, no `..`, `.`, empty
    component or NUL), or None."""
    if not isinstance(path, str) or not path:
        return "an empty or non-text path"
    if "\x00" in path:
        return "a NUL byte in the path"
    if path.startswith("/"):
        return "an absolute path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"a path component {part!r}"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ManifestChecker:
    """Checks each entry of one file list, in order: its fields, its path, that the path is new,
    that its parent is a directory listed before it (so no entry lies below a symbolic link), and
    that a hard link names a file listed before it. Paths are remembered on disk (SQLite), so memory
    stays flat with millions of entries; directory paths, which are few, in memory."""

    def __init__(self, scratch: Path, chunk_size: int, where: str) -> None:
        self.chunk_size = chunk_size
        self.where = where  # "backup <id>", for messages
        self.db = sqlite3.connect(scratch / "paths.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE paths (path TEXT PRIMARY KEY, kind TEXT) WITHOUT ROWID")
        self.pending: list[tuple[str, str]] = []
        self.dirs: set[str] = {""}
        self.count = 0

    def _fail(self, reason: str, record: Any) -> CorruptDataError:
        path = record.get("path") if isinstance(record, dict) else None
        shown = repr(path) if isinstance(path, str) else f"entry {self.count}"
        return CorruptDataError(f"{self.where}: file list entry {shown} is invalid: {reason}; "
                                "the list is damaged or was altered, refusing to use it")

    def check(self, record: Any) -> None:
        self.count += 1
        if not isinstance(record, dict):
            raise self._fail("not an object", record)
        problem = path_problem(record.get("path"))
        if problem:
            raise self._fail(problem, record)
        kind = record.get("type")
        if kind not in KINDS:
            raise self._fail(f"unknown entry type {kind!r}", record)
        mode = record.get("mode")
        if not _is_int(mode) or not 0 <= mode <= 0o7777:
            raise self._fail(f"mode {mode!r}", record)
        if not _is_int(record.get("mtime_ns")):
            raise self._fail(f"mtime_ns {record.get('mtime_ns')!r}", record)
        if kind == "file":
            self._check_file(record)
        elif kind == "symlink":
            target = record.get("target")
            if not isinstance(target, str) or not target or "\x00" in target:
                raise self._fail("a symbolic link without a valid target", record)
        path: str = record["path"]
        parent = path.rpartition("/")[0]
        if parent not in self.dirs:
            raise self._fail(f"its parent {parent!r} is not a directory listed before it", record)
        if kind == "dir":
            if path in self.dirs:
                raise self._fail("listed twice", record)
            self.dirs.add(path)
        link = record.get("hardlink_of")
        if link is not None and (kind != "file" or path_problem(link) or self._kind(link) != "file"):
            raise self._fail(f"a hard link to {link!r}, which is not a file listed before it", record)
        self.pending.append((path, kind))
        if len(self.pending) >= _BATCH:
            self.flush()

    def _check_file(self, record: dict[str, Any]) -> None:
        size, chunks = record.get("size"), record.get("chunks")
        if not _is_int(size) or size < 0:
            raise self._fail(f"size {size!r}", record)
        if not isinstance(chunks, list) or not all(isinstance(c, str) and DIGEST.match(c) for c in chunks):
            raise self._fail("chunk digests that are not 64 hex digits", record)
        if len(chunks) != -(-size // self.chunk_size):
            raise self._fail(f"{len(chunks)} chunks for {size} bytes", record)

    def _kind(self, path: str) -> str | None:
        self.flush()
        row = self.db.execute("SELECT kind FROM paths WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def flush(self) -> None:
        """Store the pending paths; a path seen before is an error (found in batches: one
        INSERT per entry would cost more than the rest of the check)."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        before = self.db.total_changes
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO paths VALUES (?,?)", batch)
        if self.db.total_changes - before == len(batch):
            self.db.execute("COMMIT")
            return
        self.db.execute("ROLLBACK")  # rare: find the duplicate to name it
        seen: set[str] = set()
        for path, _ in batch:
            if path in seen or self.db.execute("SELECT 1 FROM paths WHERE path = ?", (path,)).fetchone():
                raise self._fail("listed twice", {"path": path})
            seen.add(path)
        raise self._fail("listed twice", {})

    def finish(self) -> None:
        self.flush()

    def close(self) -> None:
        self.db.close()
