"""What an online backup of S3-resident data (engine/online_s3.py) knows per file, on disk (SQLite in
the run's scratch directory), so that its memory stays flat from a thousand staged objects to
millions: the file records the ingest made (or a commit read from the shards' parts), the paths the
commit must find (`expected`), the paths it takes from the base (`inherit`), and the blobs those
records name (`needed`, checked against the repository's listing).

One connection, shared by the ingest's threads (each write under `lock`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import CorruptDataError
from .index import BATCH, JSON_BATCH, connect
from .online_index import CACHE_KIB

# Rows go in as one JSON array per batch, one statement step: SQLite releases the GIL for every step
# (executemany steps once a row), and while the ingest's threads keep it busy, taking it back costs
# tens of microseconds: 200,000 rows took 27 s that way beside four busy threads, 1.4 s alone.
_INSERT_RECORDS = ("INSERT INTO records SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 "
                   "FROM json_each(?)")
_INSERT_NEEDED = "INSERT OR IGNORE INTO needed (digest) SELECT value FROM json_each(?)"


class PathListedTwice(CorruptDataError):
    """A path is recorded twice (by two shards, or both staged and taken from the base)."""


class RunRecords:
    def __init__(self, directory: Path) -> None:
        self.db = connect(Path(directory) / "records.sqlite", shared=True, cache_kib=CACHE_KIB)
        for table in ("records (path TEXT PRIMARY KEY, type TEXT, mode INTEGER, mtime INTEGER, size INTEGER, "
                      "chunks TEXT)", "expected (path TEXT PRIMARY KEY)",
                      "inherit (path TEXT PRIMARY KEY, taken INTEGER DEFAULT 0)",
                      "needed (digest TEXT PRIMARY KEY, seen INTEGER DEFAULT 0)"):
            self.db.execute(f"CREATE TABLE {table} WITHOUT ROWID")
        self.lock = threading.Lock()
        self.pending: list[tuple[Any, ...]] = []
        self.digests: list[str] = []

    # ---- file records

    def append(self, record: dict[str, Any]) -> None:
        """One file record (path, type, mode, mtime_ns, size, chunks: fields of their JSON types), from
        any thread; visible once `flush` ran. A path recorded twice raises PathListedTwice."""
        row = (record["path"], record["type"], record["mode"], record["mtime_ns"], record["size"],
               json.dumps(record["chunks"], separators=(",", ":")))
        with self.lock:
            self.pending.append(row)
            self.digests.extend(record["chunks"])
            if len(self.pending) >= JSON_BATCH or len(self.digests) >= JSON_BATCH:
                self._flush()

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        import sqlite3

        if not self.pending and not self.digests:
            return
        self.db.execute("BEGIN")
        try:  # ensure_ascii=False: a lone surrogate (from JSON's \\ud800) fails to encode, as a path would
            self.db.execute(_INSERT_RECORDS, (json.dumps(self.pending, ensure_ascii=False),))
            self.db.execute(_INSERT_NEEDED, (json.dumps(self.digests, ensure_ascii=False),))
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK")
            raise PathListedTwice("a path is recorded twice") from None
        except UnicodeEncodeError:  # a lone surrogate from JSON (\\ud800): no path of ours
            self.db.execute("ROLLBACK")
            raise CorruptDataError("a recorded path is not valid UTF-8") from None
        self.db.execute("COMMIT")
        self.pending.clear()
        self.digests.clear()

    def __len__(self) -> int:
        self.flush()
        return int(self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def sorted(self) -> Iterator[dict[str, Any]]:
        """Every record in path order (a fresh cursor; nothing is written meanwhile)."""
        self.flush()
        for path, kind, mode, mtime, size, chunks in self.db.execute(
                "SELECT path, type, mode, mtime, size, chunks FROM records ORDER BY path"):
            yield {"path": path, "type": kind, "mode": mode, "mtime_ns": mtime, "size": size,
                   "chunks": json.loads(chunks)}

    # ---- what the commit checks them against

    def add_expected(self, paths: Iterable[str]) -> None:
        """The paths the records must be, exactly (a path given twice counts once)."""
        self._fill("INSERT OR IGNORE INTO expected (path) VALUES (?)", paths)

    def covered(self) -> tuple[int, int, int]:
        """(records, expected paths, records whose path is expected): the records are the expected
        paths exactly when all three are equal (a path is never recorded twice)."""
        self.flush()
        records = int(self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        expected = int(self.db.execute("SELECT COUNT(*) FROM expected").fetchone()[0])
        both = int(self.db.execute("SELECT COUNT(*) FROM records r JOIN expected e ON e.path = r.path")
                   .fetchone()[0])
        return records, expected, both

    def mark_listed(self, digests: Iterable[str]) -> None:
        """Digests of blobs the repository holds (its whole listing, streamed)."""
        self.flush()
        self._fill("UPDATE needed SET seen = 1 WHERE digest = ?", digests)

    def unlisted(self) -> int:
        """How many blobs the records name that mark_listed did not see."""
        return int(self.db.execute("SELECT COUNT(*) FROM needed WHERE NOT seen").fetchone()[0])

    # ---- the files an incremental takes from its base

    def add_inherit(self, paths: Iterable[str]) -> int:
        """Paths to take from the base backup; returns how many (a path given twice counts once)."""
        self._fill("INSERT OR IGNORE INTO inherit (path) VALUES (?)", paths)
        return int(self.db.execute("SELECT COUNT(*) FROM inherit").fetchone()[0])

    def wants(self, path: str) -> bool:
        """Whether `path` is to be taken from the base and has not been yet."""
        try:
            row = self.db.execute("SELECT taken FROM inherit WHERE path = ?", (path,)).fetchone()
        except UnicodeEncodeError:  # no path to take is (they are all text SQLite holds)
            return False
        return row is not None and not row[0]

    def take(self, record: dict[str, Any]) -> None:
        """A base record taken (its path was `wants`)."""
        self.db.execute("UPDATE inherit SET taken = 1 WHERE path = ?", (record["path"],))
        self.append(record)

    def not_taken(self) -> tuple[int, str | None]:
        """(how many paths to inherit the base lacked, the first of them)."""
        count = int(self.db.execute("SELECT COUNT(*) FROM inherit WHERE NOT taken").fetchone()[0])
        first = self.db.execute("SELECT path FROM inherit WHERE NOT taken ORDER BY path LIMIT 1").fetchone()
        return count, None if first is None else str(first[0])

    def _fill(self, statement: str, values: Iterable[str]) -> None:
        batch: list[tuple[str]] = []
        try:
            for value in values:
                batch.append((value,))
                if len(batch) >= BATCH:
                    self._run(statement, batch)
            self._run(statement, batch)
        except UnicodeEncodeError:
            raise CorruptDataError("a listed path is not valid UTF-8") from None

    def _run(self, statement: str, batch: list[tuple[str]]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            try:
                self.db.executemany(statement, batch)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        batch.clear()

    def close(self) -> None:
        self.db.close()
