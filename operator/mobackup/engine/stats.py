"""What a repository's backups take, and cost: per backup the bytes it added, the bytes only it
holds (what deleting it frees) and its share of the blobs it uses; for the repository the totals,
deduplication and compression ratios, and growth per day. Given a retention policy, each backup's
retention class (what the policy keeps it for) and the bytes and monthly cost of each class.

Memory stays flat: blob sizes and reference counts live in SQLite on disk, and each file list is
streamed (from a local copy, read twice: counts first, then shares).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import CorruptDataError, MobackupError
from .index import connect
from .manifest import DIGEST
from .model import BackupSummary, utc_now
from .objectlock import recorded_until
from .prune import RetentionPolicy, keep_reasons
from .repository import Repository, files_key, summary_key

BATCH = 20_000
GB = 10**9  # prices are per decimal gigabyte, as cloud providers bill

# Retention classes: what the retention policy (prune's keep rules, a schedule's spec.retention) keeps
# a backup for. A backup several rules keep is in the class of the first rule of this order (the
# longest-lived: the newest backup of a month, also the newest of its week and day, is "monthly").
# Outside the policy: "locked" (S3 Object Lock holds it past the policy), "prunable" (the next prune
# deletes it); a source without a policy is "unmanaged".
RETENTION_CLASSES = ("monthly", "weekly", "daily", "within", "last", "newest", "unmanaged", "locked", "prunable")
CLASS_OF_RULE = {"keep-monthly": "monthly", "keep-weekly": "weekly", "keep-daily": "daily", "keep-within": "within",
                 "keep-last": "last", "newest completed backup": "newest", "no retention policy": "unmanaged"}
Retention = RetentionPolicy | Mapping[str, RetentionPolicy | None]  # one for all sources, or by source


@dataclass
class BackupStats:
    id: str
    source: str
    completed_at: str
    logical_bytes: int  # the files' total size (what a restore writes)
    blobs: int  # distinct blobs it references
    added_bytes: int = 0  # stored bytes of the blobs it referenced first (in completion order)
    unique_bytes: int = 0  # stored bytes of the blobs no other backup references: what deleting it frees
    shared_bytes: float = 0.0  # its share: each blob's stored size divided among the backups using it
    metadata_bytes: int = 0  # its summary and file list (its own: freed with it)
    monthly_cost: float | None = None  # (shared + metadata) bytes at the price
    retention_class: str | None = None  # given a retention policy: RETENTION_CLASSES

    @property
    def charged_bytes(self) -> float:
        """What its monthly cost counts: its share of the blobs and its own metadata."""
        return self.shared_bytes + self.metadata_bytes


@dataclass
class RepositoryStats:
    location: str
    backups: list[BackupStats] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # backups left out: unreadable summary or list
    stored_bytes: int = 0  # every object: blobs, file lists, summaries, the rest
    blob_bytes: int = 0
    blob_count: int = 0
    referenced_blob_bytes: int = 0
    unreferenced_blob_bytes: int = 0  # garbage prune would remove
    missing_blobs: int = 0  # referenced but absent (verify tells which)
    logical_bytes: int = 0  # sum over backups of their files' sizes
    unique_plain_bytes: int = 0  # plaintext of the distinct chunks referenced
    dedup_ratio: float | None = None  # logical / unique plaintext
    compression_ratio: float | None = None  # unique plaintext / their stored size
    growth_bytes_per_day: float | None = None  # bytes added per day, from the first backup to the last
    price_per_gb_month: float | None = None
    monthly_cost: float | None = None
    monthly_cost_by_source: dict[str, float] = field(default_factory=dict)
    # Given a retention policy: the backups' charged bytes (share + metadata) and monthly costs by
    # retention class, and by source then class (a source's classes add up to its cost).
    bytes_by_retention_class: dict[str, float] = field(default_factory=dict)
    monthly_cost_by_retention_class: dict[str, float] = field(default_factory=dict)
    monthly_cost_by_source_and_retention_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _connect(path: Path) -> sqlite3.Connection:
    db = connect(path)
    # blobs: what is stored. usage: per referenced digest, its plaintext size, the first backup (by
    # position) referencing it, the last one seen (to count each backup once) and how many do.
    db.execute("CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER) WITHOUT ROWID")
    db.execute("CREATE TABLE usage (digest TEXT PRIMARY KEY, plain INTEGER, first INTEGER, last INTEGER, "
               "count INTEGER) WITHOUT ROWID")
    db.execute("CREATE TABLE current (digest TEXT PRIMARY KEY) WITHOUT ROWID")
    return db


def _chunks(repo: Repository, summary: BackupSummary, files: Path) -> Iterator[tuple[str, int]]:
    """(digest, plaintext size) of every chunk of a backup's files, checked as untrusted input."""
    for record in repo.entries(summary, files):
        if not isinstance(record, dict) or record.get("type") != "file":
            continue
        size, chunks = record.get("size"), record.get("chunks")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(chunks, list) \
                or len(chunks) != -(-size // repo.chunk_size):
            raise CorruptDataError(f"backup {summary.id}: malformed file list entry {record!r:.200}")
        for index, digest in enumerate(chunks):
            if not isinstance(digest, str) or not DIGEST.match(digest):
                raise CorruptDataError(f"backup {summary.id}: malformed digest {digest!r:.80}")
            yield digest, repo.chunk_plain_size(size, index)


def _batched(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def retention_classes(summaries: Sequence[BackupSummary], retention: Retention,
                      now: datetime | None = None) -> dict[str, str]:
    """Backup ID -> retention class (RETENTION_CLASSES), the policy applied to each source apart as
    prune applies it."""
    now = now or utc_now()
    by_source: dict[str, list[BackupSummary]] = {}
    for summary in summaries:
        by_source.setdefault(summary.source, []).append(summary)
    classes: dict[str, str] = {}
    for name, items in by_source.items():
        policy = retention.get(name) if isinstance(retention, Mapping) else retention
        if policy is None:
            classes.update(dict.fromkeys((s.id for s in items), "unmanaged"))
            continue
        reasons = keep_reasons(items, policy, now)
        for summary in items:
            if summary.id in reasons:
                classes[summary.id] = min((CLASS_OF_RULE[r] for r in reasons[summary.id]), key=RETENTION_CLASSES.index)
            else:
                until = recorded_until(summary)
                classes[summary.id] = "locked" if until is not None and until > now else "prunable"
    return classes


def repository_stats(repo: Repository, price: float | None = None, source: str | None = None,
                     retention: Retention | None = None, now: datetime | None = None) -> RepositoryStats:
    """The figures of every completed backup (shown: those of `source`, or all). Shares count every
    backup of the repository whatever `source` says: a blob two sources use is shared by both.
    `retention`: the policy that gives each backup its retention class (evaluated at `now`)."""
    result = RepositoryStats(location=repo.location, price_per_gb_month=price)
    damaged: dict[str, str] = {}
    summaries = repo.list_backups(damaged=damaged)
    result.damaged = sorted(damaged)
    meta_sizes: dict[str, int] = {}
    for info in repo.backend.list("backups/"):
        result.stored_bytes += info.size
        meta_sizes[info.key] = info.size
    for info in repo.backend.list("locks/"):
        result.stored_bytes += info.size
    for info in repo.backend.list("runs/"):
        result.stored_bytes += info.size
    with tempfile.TemporaryDirectory(prefix="mobackup-stats-") as scratch:
        db = _connect(Path(scratch) / "stats.sqlite")
        try:
            listing = ((info.key.rsplit("/", 1)[-1], info.size) for info in repo.backend.list("blobs/"))
            for batch in _batched(listing):
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?)", batch)
                db.execute("COMMIT")
            result.blob_count, result.blob_bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
            result.stored_bytes += result.blob_bytes
            lists: list[tuple[int, BackupSummary, Path]] = []
            for position, summary in enumerate(summaries):  # oldest first: `first` is who added a blob
                local = Path(scratch) / f"{position}.files"
                try:
                    repo.download_file_list(summary, local)
                    _count(db, repo, summary, local, position)
                except MobackupError as error:  # missing or damaged list: reported, the rest counted
                    result.damaged.append(f"{summary.id}: {error}")
                    continue
                lists.append((position, summary, local))
            for position, summary, local in lists:
                stats = _backup_stats(db, repo, summary, local, position)
                stats.metadata_bytes = meta_sizes.get(summary_key(summary.id), 0) + \
                    meta_sizes.get(files_key(summary.id), 0)
                result.backups.append(stats)
                local.unlink()
            _totals(db, result)
        finally:
            db.close()
    first, last = (summaries[0], summaries[-1]) if summaries else (None, None)
    if first is not None and last is not None and result.backups:
        days = (last.completed - first.completed).total_seconds() / 86400
        if days > 0:
            later = sum(b.added_bytes for b in result.backups if b.id != first.id)
            result.growth_bytes_per_day = round(later / days, 1)
    if retention is not None:
        classes = retention_classes(summaries, retention, now)
        for stats in result.backups:
            stats.retention_class = classes.get(stats.id)
            by_class = result.bytes_by_retention_class
            by_class[stats.retention_class or "unmanaged"] = by_class.get(stats.retention_class or "unmanaged", 0.0) \
                + stats.charged_bytes
    if price is not None:
        _costs(result, price)
    if source is not None:
        result.backups = [b for b in result.backups if b.source == source]
    return result


def _count(db: sqlite3.Connection, repo: Repository, summary: BackupSummary, files: Path, position: int) -> None:
    """First pass over one backup: each distinct digest counted once for it. Backups are passed in
    completion order, so `first` is the backup that added the blob."""
    rows = ((digest, plain, position, position) for digest, plain in _chunks(repo, summary, files))
    db.execute("BEGIN")
    try:
        for batch in _batched(rows):
            db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, 1) ON CONFLICT(digest) DO UPDATE SET "
                "count = count + (last != excluded.last), last = excluded.last", batch)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")  # a damaged list counts nothing: its backup is reported apart
        raise


def _backup_stats(db: sqlite3.Connection, repo: Repository, summary: BackupSummary, files: Path,
                  position: int) -> BackupStats:
    """Second pass: the backup's distinct digests, joined with their sizes and counts."""
    db.execute("DELETE FROM current")
    for batch in _batched((digest,) for digest, _ in _chunks(repo, summary, files)):
        db.executemany("INSERT OR IGNORE INTO current VALUES (?)", batch)
    blobs, added, unique, shared = db.execute(
        "SELECT COUNT(*), "
        "COALESCE(SUM(CASE WHEN u.first = ? THEN COALESCE(b.size, 0) ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN u.count = 1 THEN COALESCE(b.size, 0) ELSE 0 END), 0), "
        "COALESCE(SUM(COALESCE(b.size, 0) * 1.0 / u.count), 0) "
        "FROM current c JOIN usage u ON u.digest = c.digest LEFT JOIN blobs b ON b.digest = c.digest",
        (position,)).fetchone()
    return BackupStats(id=summary.id, source=summary.source, completed_at=summary.completed_at,
                       logical_bytes=summary.size_bytes, blobs=blobs, added_bytes=added, unique_bytes=unique,
                       shared_bytes=round(shared, 1))


def _totals(db: sqlite3.Connection, result: RepositoryStats) -> None:
    referenced, plain, missing = db.execute(
        "SELECT COALESCE(SUM(b.size), 0), COALESCE(SUM(u.plain), 0), SUM(b.size IS NULL) "
        "FROM usage u LEFT JOIN blobs b ON b.digest = u.digest").fetchone()
    result.referenced_blob_bytes = referenced
    result.unreferenced_blob_bytes = result.blob_bytes - referenced
    result.missing_blobs = missing or 0
    result.unique_plain_bytes = plain
    result.logical_bytes = sum(b.logical_bytes for b in result.backups)
    if plain:
        result.dedup_ratio = round(result.logical_bytes / plain, 3)
    if referenced:
        result.compression_ratio = round(plain / referenced, 3)


def _costs(result: RepositoryStats, price: float) -> None:
    """Monthly costs: the whole repository; each backup its share and its own metadata; by source
    the sum of its backups (what is left, garbage and locks, belongs to no source)."""
    result.monthly_cost = result.stored_bytes / GB * price
    for stats in result.backups:
        stats.monthly_cost = stats.charged_bytes / GB * price
        by_source = result.monthly_cost_by_source
        by_source[stats.source] = by_source.get(stats.source, 0.0) + stats.monthly_cost
        if stats.retention_class is None:
            continue
        by_class = result.monthly_cost_by_retention_class
        by_class[stats.retention_class] = by_class.get(stats.retention_class, 0.0) + stats.monthly_cost
        cell = result.monthly_cost_by_source_and_retention_class.setdefault(stats.source, {})
        cell[stats.retention_class] = cell.get(stats.retention_class, 0.0) + stats.monthly_cost
