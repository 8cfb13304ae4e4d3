"""Checks of a backup's file list before anything acts on it.

A repository is untrusted input: whoever can write to the bucket of a plain repository can edit a
file list (the format is documented). Every entry is checked here, and restore checks the whole list
(including its digest, see Repository.entries) before it writes the first file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import CorruptDataError
from .index import IN_MEMORY_FILES, connect

DIGEST = re.compile(r"^[0-9a-f]{64}$")
_BATCH = 20_000
# Most components a path may have. MatrixOne's trees are a few levels deep; a list that nests
# thousands of directories would cost quadratic time to restore and leave a tree that recursive
# tools (shutil.rmtree among them) cannot remove.
MAX_PATH_DEPTH = 256
# What a failed check means: of a stored list; of the list a backup is about to publish (a repository
# whose chunk size was changed under an incremental's base, a path both staged and taken from a base).
DAMAGED = "the list is damaged or was altered, refusing to use it"
UNPUBLISHED = ("a restore would refuse this list, so the backup is not published (was the repository's chunk size "
               "changed, or a file both staged and taken from the base?)")


def path_problem(path: object) -> str | None:
    """Why `path` cannot be a file-list path (relative, `/`-separated, no `..`, `.`, empty
    component or NUL, at most MAX_PATH_DEPTH components), or None."""
    if (type(path) is str and path and "//" not in path and "\x00" not in path and path[0] not in "./"
            and path[-1] not in "./" and "/." not in path and path.count("/") < MAX_PATH_DEPTH):
        return None  # the usual case, decided by substring tests alone (a restore checks millions)
    if not isinstance(path, str) or not path:
        return "an empty or non-text path"
    if path.count("/") >= MAX_PATH_DEPTH:
        return f"more than {MAX_PATH_DEPTH} path components"
    if "\x00" in path:
        return "a NUL byte in the path"
    if path.startswith("/"):
        return "an absolute path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"a path component {part!r}"
    return None


class ManifestChecker:
    """Checks each entry of one file list, in order: its fields, its path, that its parent is a
    directory listed before it (so no entry lies below a symbolic link or a file); and, when
    `finish` is called, that no path is listed twice and that every hard link names a file listed
    before it.

    Paths are remembered by their 64-bit hash: in memory for a list of up to `in_memory` entries,
    beyond that on disk (SQLite, appended in batches and grouped once at the end: a restore checks
    millions). The hash is this process's randomised SipHash: a false
    "listed twice" is a 1e-8 chance at a million paths and cannot be forced. Memory stays flat;
    directory paths, which are few, are kept in memory."""

    def __init__(self, scratch: Path, chunk_size: int, where: str, verdict: str = DAMAGED,
                 in_memory: int = IN_MEMORY_FILES) -> None:
        self.chunk_size = chunk_size
        self.where = where  # "backup <id>", for messages
        self.verdict = verdict  # what a failed check means, for messages
        self.scratch = scratch
        self.in_memory = in_memory  # a list this long is checked in memory (no SQLite to start)
        self.db: Any = None
        self.pending: list[tuple[int, int, str]] = []
        self.links: list[tuple[int, int, str, str]] = []  # (n, hash of target, path, target)
        self.dirs: set[str] = {""}
        self.count = 0

    def _spill(self) -> None:
        """Continue on disk: the list is longer than memory should hold."""
        self.db = connect(self.scratch / "paths.sqlite")
        self.db.execute("CREATE TABLE paths (n INTEGER PRIMARY KEY, h INTEGER, kind TEXT)")
        self.db.execute("CREATE TABLE links (n INTEGER, target INTEGER, path TEXT, link TEXT)")
        self.db.executemany("INSERT INTO links VALUES (?,?,?,?)", self.links)
        self.links = []

    def _fail(self, reason: str, record: Any) -> CorruptDataError:
        path = record.get("path") if isinstance(record, dict) else None
        shown = f"entry {path!r}" if isinstance(path, str) else f"entry {self.count}" if record else "list"
        return CorruptDataError(f"{self.where}: file {shown} is invalid: {reason}; {self.verdict}")

    def check(self, record: Any) -> None:
        self.count += 1
        if type(record) is not dict:
            raise self._fail("not an object", record)
        path = record.get("path")
        problem = path_problem(path)
        if problem:
            raise self._fail(problem, record)
        kind = record.get("type")
        mode = record.get("mode")
        if type(mode) is not int or not 0 <= mode <= 0o7777:
            raise self._fail(f"mode {mode!r}", record)
        if type(record.get("mtime_ns")) is not int:
            raise self._fail(f"mtime_ns {record.get('mtime_ns')!r}", record)
        if kind == "file":
            size, chunks = record.get("size"), record.get("chunks")
            if type(size) is not int or size < 0:
                raise self._fail(f"size {size!r}", record)
            if type(chunks) is not list or not all(type(c) is str and DIGEST.match(c) for c in chunks):
                raise self._fail("chunk digests that are not 64 hex digits", record)
            if len(chunks) != -(-size // self.chunk_size):
                raise self._fail(f"{len(chunks)} chunks for {size} bytes", record)
            link = record.get("hardlink_of")
            if link is not None:
                if path_problem(link):
                    raise self._fail(f"a hard link to {link!r}", record)
                if self.db is None:
                    self.links.append((self.count, hash(link), path, link))
                else:
                    self.db.execute("INSERT INTO links VALUES (?,?,?,?)", (self.count, hash(link), path, link))
        elif kind == "dir":
            if path in self.dirs:
                raise self._fail("listed twice", record)
        elif kind == "symlink":
            target = record.get("target")
            if type(target) is not str or not target or "\x00" in target:
                raise self._fail("a symbolic link without a valid target", record)
        else:
            raise self._fail(f"unknown entry type {kind!r}", record)
        if kind != "file" and "hardlink_of" in record:
            raise self._fail("a hard link that is not a file", record)
        parent = path.rpartition("/")[0]
        if parent not in self.dirs:
            raise self._fail(f"its parent {parent!r} is not a directory listed before it", record)
        if kind == "dir":
            self.dirs.add(path)
        self.pending.append((self.count, hash(path), kind))
        if self.db is None and len(self.pending) > self.in_memory:
            self._spill()
        if self.db is not None and len(self.pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending and self.db is not None:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO paths VALUES (?,?,?)", self.pending)
            self.db.execute("COMMIT")
            self.pending.clear()

    def finish(self) -> None:
        """The checks that need the whole list: no path twice, hard links to earlier files."""
        if self.db is None:
            self._finish_in_memory()
            return
        self.flush()
        twice = self.db.execute("SELECT MIN(n), MAX(n) FROM paths GROUP BY h HAVING COUNT(*) > 1 LIMIT 1").fetchone()
        if twice:
            raise self._fail(f"entries {twice[0]} and {twice[1]} have the same path (listed twice)", {})
        if self.db.execute("SELECT 1 FROM links LIMIT 1").fetchone():
            self.db.execute("CREATE INDEX paths_h ON paths (h)")
            bad = self.db.execute(
                "SELECT path, link FROM links l WHERE NOT EXISTS "
                "(SELECT 1 FROM paths p WHERE p.h = l.target AND p.kind = 'file' AND p.n < l.n) LIMIT 1"
            ).fetchone()
            if bad:
                raise self._fail(f"a hard link to {bad[1]!r}, which is not a file listed before it", {"path": bad[0]})

    def _finish_in_memory(self) -> None:
        """finish() for a list held in `pending`: the same answers as the SQL above."""
        first: dict[int, tuple[int, str]] = {}  # hash -> (n, kind) of its first entry
        twice: dict[int, int] = {}  # hash -> n of its last entry, for hashes listed more than once
        for n, h, kind in self.pending:
            if h in first:
                twice[h] = n
            else:
                first[h] = (n, kind)
        if twice:
            h = min(twice, key=lambda h: first[h][0])
            raise self._fail(f"entries {first[h][0]} and {twice[h]} have the same path (listed twice)", {})
        for n, target, path, link in self.links:
            found = first.get(target)
            if found is None or found[1] != "file" or found[0] >= n:
                raise self._fail(f"a hard link to {link!r}, which is not a file listed before it", {"path": path})

    def close(self) -> None:
        self.pending = []
        if self.db is not None:
            self.db.close()
