"""A disk-backed lookup table (SQLite in a temporary file), so memory stays flat with millions of
files: the base backup's file list for an incremental, the referenced blobs for prune and verify."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CorruptDataError

if TYPE_CHECKING:
    import sqlite3

BATCH = 20_000
# Rows moved as one JSON text per statement step where worker threads run beside (engine/
# online_s3_index.py says why). Smaller than BATCH: a 20,000-row text cost ~55 MB of peak memory at
# 100,000 objects (SQLite's parse of it and Python's copies), 2,000 rows cost ~0 and still one step
# per 2,000.
JSON_BATCH = 2_000
# A base file list up to this many files is held in a dict (about 0.4 KB a file, so 20 MB at most):
# a small incremental then pays neither SQLite's import nor its writes, and memory stays flat.
IN_MEMORY_FILES = 50_000


def connect(path: Path, shared: bool = False, cache_kib: int = 16000) -> sqlite3.Connection:
    """`cache_kib`: the page cache's most, per connection (several are open at once in a run)."""
    import sqlite3  # imported only when needed: a small incremental never is (start-up counts)

    db = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    return db


def _insert(db: sqlite3.Connection, statement: str, rows: list[Any]) -> None:
    """Insert pending rows in one transaction, and forget them."""
    if rows:
        db.execute("BEGIN")
        db.executemany(statement, rows)
        db.execute("COMMIT")
        rows.clear()


class FileIndex:
    """path -> (size, mtime_ns, chunks) of a backup's regular files: in a dict while small, in
    SQLite (`path`, created only then) once larger than `in_memory` files."""

    def __init__(self, path: Path, in_memory: int = IN_MEMORY_FILES) -> None:
        self.path = path
        self.in_memory = in_memory
        self.small: dict[str, tuple[int, int, list[str]]] = {}
        self.db: sqlite3.Connection | None = None

    def _spill(self) -> None:
        """Move the dict into SQLite: the list is larger than memory should hold."""
        db = self.db = connect(self.path)
        db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, chunks TEXT) WITHOUT ROWID")
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?)",
                       ((path, size, mtime, json.dumps(chunks)) for path, (size, mtime, chunks) in self.small.items()))
        db.execute("COMMIT")
        self.small = {}

    def load(self, entries: Iterable[dict[str, Any]]) -> int:
        count = 0
        batch: list[tuple[str, int, int, str]] = []
        small = self.small
        for entry in entries:
            if not isinstance(entry, dict):
                raise CorruptDataError(f"the base backup's file list has a malformed entry: {entry!r:.200}")
            if entry.get("type") != "file":
                continue
            try:
                path, size, mtime, chunks = str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"]), \
                    list(entry["chunks"])
            except (KeyError, TypeError, ValueError):
                raise CorruptDataError(f"the base backup's file list has a malformed entry: {entry!r:.200}") from None
            count += 1
            if self.db is None:
                small[path] = (size, mtime, chunks)
                if len(small) > self.in_memory:
                    self._spill()
                    small = self.small
                continue
            batch.append((path, size, mtime, json.dumps(chunks)))
            if len(batch) >= BATCH:
                self._insert(batch)
        self._insert(batch)
        return count

    def _insert(self, batch: list[tuple[str, int, int, str]]) -> None:
        if self.db is not None:
            _insert(self.db, "INSERT OR REPLACE INTO files VALUES (?,?,?,?)", batch)

    def get(self, path: str) -> tuple[int, int, list[str]] | None:
        if self.db is None:
            return self.small.get(path)
        row = self.db.execute("SELECT size, mtime, chunks FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return row[0], row[1], json.loads(row[2])

    def close(self) -> None:
        self.small = {}
        if self.db is not None:
            self.db.close()


class DigestSet:
    """A set of blob digests, on disk."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        """`shared`: used from several threads, each access under the caller's lock."""
        self.db = connect(path, shared)
        self.db.execute("CREATE TABLE digests (digest TEXT PRIMARY KEY) WITHOUT ROWID")
        self.pending: list[tuple[str]] = []

    def add(self, digest: str) -> None:
        self.pending.append((digest,))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        _insert(self.db, "INSERT OR IGNORE INTO digests VALUES (?)", self.pending)

    def add_new(self, digest: str) -> bool:
        """Add; True when it was not there yet (flushes first, so the answer is exact)."""
        self.flush()
        cursor = self.db.execute("INSERT OR IGNORE INTO digests VALUES (?)", (digest,))
        return cursor.rowcount == 1

    def __contains__(self, digest: object) -> bool:
        self.flush()
        return self.db.execute("SELECT 1 FROM digests WHERE digest = ?", (digest,)).fetchone() is not None

    def __len__(self) -> int:
        self.flush()
        return int(self.db.execute("SELECT COUNT(*) FROM digests").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class DigestMap:
    """digest -> digest, on disk (a copy's blob names in a target keyed otherwise). Rows are written
    in batches: `get` sees them once flushed."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.db = connect(path, shared)
        self.db.execute("CREATE TABLE names (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
        self.pending: list[tuple[str, str]] = []

    def put(self, key: str, value: str) -> None:
        self.pending.append((key, value))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        _insert(self.db, "INSERT OR REPLACE INTO names VALUES (?, ?)", self.pending)

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM names WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self.db.close()
