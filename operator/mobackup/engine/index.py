"""A disk-backed lookup table (SQLite in a temporary file), so memory stays flat with millions of
files: the base backup's file list for an incremental, the referenced blobs for prune and verify."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import CorruptDataError

BATCH = 20_000


def connect(path: Path, shared: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-16000")  # 16 MB page cache at most
    return db


def _insert(db: sqlite3.Connection, statement: str, rows: list[Any]) -> None:
    """Insert pending rows in one transaction, and forget them."""
    if rows:
        db.execute("BEGIN")
        db.executemany(statement, rows)
        db.execute("COMMIT")
        rows.clear()


class FileIndex:
    """path -> (size, mtime_ns, chunks) of a backup's regular files."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.db.execute(
            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, chunks TEXT) WITHOUT ROWID"
        )

    def load(self, entries: Iterable[dict[str, Any]]) -> int:
        count = 0
        batch: list[tuple[str, int, int, str]] = []
        self.db.execute("BEGIN")
        for entry in entries:
            if not isinstance(entry, dict):
                raise CorruptDataError(f"the base backup's file list has a malformed entry: {entry!r:.200}")
            if entry.get("type") != "file":
                continue
            try:
                batch.append((str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"]),
                              json.dumps(list(entry["chunks"]))))
            except (KeyError, TypeError, ValueError):
                raise CorruptDataError(f"the base backup's file list has a malformed entry: {entry!r:.200}") from None
            if len(batch) >= BATCH:
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?)", batch)
                count += len(batch)
                batch.clear()
        self.db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?)", batch)
        self.db.execute("COMMIT")
        return count + len(batch)

    def get(self, path: str) -> tuple[int, int, list[str]] | None:
        row = self.db.execute("SELECT size, mtime, chunks FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return row[0], row[1], json.loads(row[2])

    def close(self) -> None:
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
