"""What an online backup knows per staged file, on disk (SQLite in the run's scratch directory), so
that its memory stays flat from a thousand staged files to millions: the files `tae_list` names
(path, content size, SHA-256, needCopy) and the files stored while BACKUP still ran (engine/
online_take.py: identity, times, chunks, the SHA-256 of what was stored).

One connection, shared by the taker's threads (each write under `lock`); a reader in another thread
(the digest check) opens its own with `reader()`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .backup import TakenFile
from .index import BATCH, JSON_BATCH, connect

# Appends and lookups by path: a small page cache serves them (two connections per run).
CACHE_KIB = 4000
TAKEN_COLUMNS = "path, dev, ino, size, mtime, ctime, sha256, chunks"


class StagedIndex:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "staged.sqlite"
        self.db = connect(self.path, shared=True, cache_kib=CACHE_KIB)
        self.db.execute("CREATE TABLE staged (path TEXT PRIMARY KEY, size INTEGER, sha256 TEXT, need_copy INTEGER)"
                        " WITHOUT ROWID")
        self.db.execute("CREATE TABLE taken (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime "
                        "INTEGER, ctime INTEGER, sha256 TEXT, chunks TEXT, still INTEGER DEFAULT 0) WITHOUT ROWID")
        self.lock = threading.Lock()
        self.pending: list[tuple[Any, ...]] = []

    # ---- tae_list

    def add_staged(self, rows: Iterable[tuple[str, int, str, bool]]) -> int:
        """Store tae_list's files (path, content size, SHA-256, needCopy); returns how many. A path
        listed twice raises ValueError."""
        import sqlite3

        count = 0
        batch: list[tuple[str, int, str, bool]] = []
        try:
            with self.lock:
                self.db.execute("BEGIN")
                for row in rows:
                    batch.append(row)
                    count += 1
                    if len(batch) >= BATCH:
                        self.db.executemany("INSERT INTO staged VALUES (?,?,?,?)", batch)
                        batch.clear()
                self.db.executemany("INSERT INTO staged VALUES (?,?,?,?)", batch)
                self.db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK")
            raise ValueError("a path listed twice") from None
        return count

    def staged(self, where: str = "") -> Iterator[tuple[str, int, str, bool]]:
        """tae_list's files in path order (fresh queries: safe to use while others iterate). Read
        JSON_BATCH rows at a time, each batch one JSON text: SQLite releases the GIL for every step, and
        while worker threads keep it busy taking it back costs ~50 us, a step per row cost a million
        rows a minute."""
        condition = where.removeprefix("WHERE ") if where else "1"
        last = ""  # no path is empty
        while True:
            (batch,) = self.db.execute(
                "SELECT json_group_array(json_array(path, size, sha256, need_copy)) FROM (SELECT path, size, "
                f"sha256, need_copy FROM staged WHERE ({condition}) AND path > ? ORDER BY path LIMIT ?)",
                (last, JSON_BATCH)).fetchone()
            rows = json.loads(batch)
            if not rows:
                return
            rows.sort()  # an aggregate's order is SQLite's choice: the batch, not the batches, may need it
            for path, size, sha256, need_copy in rows:
                yield path, size, sha256, bool(need_copy)
            last = rows[-1][0]

    def count(self, where: str = "") -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM staged {where}").fetchone()[0])

    def totals(self, where: str = "") -> tuple[int, int]:
        """(files, content bytes) of tae_list's files `where` says."""
        count, size = self.db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM staged {where}").fetchone()
        return int(count), int(size)

    def has(self, path: str) -> bool:
        """Whether tae_list names `path`."""
        return self.db.execute("SELECT 1 FROM staged WHERE path = ?", (path,)).fetchone() is not None

    def is_reused(self, path: str) -> bool:
        """Whether tae_list names `path` with needCopy false (taken from the base backup)."""
        row = self.db.execute("SELECT need_copy FROM staged WHERE path = ?", (path,)).fetchone()
        return row is not None and not row[0]

    # ---- files taken while BACKUP ran

    def add_taken(self, rel: str, file: TakenFile, ctime_ns: int, sha256: str) -> None:
        """From any thread; visible once `flush` ran."""
        row = (rel, file.ident[0], file.ident[1], file.size, file.mtime_ns, ctime_ns, sha256, "".join(file.chunks))
        with self.lock:
            self.pending.append(row)
            if len(self.pending) >= BATCH:
                self._flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT OR REPLACE INTO taken ({TAKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                                self.pending)
            self.db.execute("COMMIT")
            self.pending.clear()

    def taken_records(self) -> Iterator[tuple[str, tuple[int, int], int, int, int]]:
        """(path, ident, size, mtime_ns, ctime_ns) of every taken file, read whole first (so that
        `confirm` may write meanwhile) in batches of BATCH rows."""
        last = ""
        while True:
            rows = self.db.execute("SELECT path, dev, ino, size, mtime, ctime FROM taken WHERE path > ? ORDER BY path "
                                   "LIMIT ?", (last, BATCH)).fetchall()
            if not rows:
                return
            for path, dev, ino, size, mtime, ctime in rows:
                yield path, (dev, ino), size, mtime, ctime
            last = rows[-1][0]

    def confirm(self, paths: Iterable[str]) -> int:
        """Mark taken files as still what was taken; returns how many."""
        count = 0
        batch: list[tuple[str]] = []
        for path in paths:
            batch.append((path,))
            count += 1
            if len(batch) >= BATCH:
                self._confirm(batch)
        self._confirm(batch)
        return count

    def _confirm(self, batch: list[tuple[str]]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE taken SET still = 1 WHERE path = ?", batch)
            self.db.execute("COMMIT")
        batch.clear()

    def mismatched(self) -> str | None:
        """A confirmed taken file whose SHA-256 is not tae_list's, or None."""
        row = self.db.execute(
            "SELECT s.path FROM staged s JOIN taken t ON t.path = s.path WHERE t.still AND s.need_copy "
            "AND s.sha256 != '' AND s.sha256 != t.sha256 LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def taken_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM taken WHERE still").fetchone()[0])

    def get_taken(self, path: str) -> TakenFile | None:
        """A confirmed taken file by its path under tae/."""
        row = self.db.execute("SELECT dev, ino, size, mtime, chunks FROM taken WHERE path = ? AND still",
                              (path,)).fetchone()
        if row is None:
            return None
        dev, ino, size, mtime, chunks = row
        return TakenFile((dev, ino), size, mtime, tuple(chunks[i:i + 64] for i in range(0, len(chunks), 64)))

    def reader(self) -> StagedIndex:
        """Another connection to the same tables, for one other thread (read only)."""
        other = object.__new__(StagedIndex)
        other.path, other.lock, other.pending = self.path, threading.Lock(), []
        other.db = connect(self.path, cache_kib=CACHE_KIB)
        return other

    def unchecked(self) -> Iterator[tuple[str, int, str, bool]]:
        """Staged files with a SHA-256 that were not taken (or changed since): they are read again."""
        for path, size, sha256, need_copy in self.db.execute(
                "SELECT path, size, sha256, need_copy FROM staged s WHERE need_copy AND sha256 != '' AND NOT EXISTS "
                "(SELECT 1 FROM taken t WHERE t.path = s.path AND t.still) ORDER BY path"):
            yield path, size, sha256, bool(need_copy)

    def close(self) -> None:
        self.db.close()
