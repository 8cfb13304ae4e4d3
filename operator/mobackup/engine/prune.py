"""Delete backups, apply retention policies, and collect blobs no backup references any more."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from .errors import CorruptDataError
from .index import DigestSet
from .model import BackupSummary, iso, utc_now
from .objectlock import RetentionError, describe, split_deletable
from .repository import CONFIG_KEY, Repository, files_key, summary_key
from .storage import CHUNK_TEMPORARY, LocalBackend, temporary_names

# Where the directory backend leaves temporaries of this repository's objects, and their exact
# names (storage.py): the configuration's beside it, blobs' (and chunk copies) in blobs/, summaries'
# and file lists' in backups/, locks' in locks/, run records' in runs/<run>/. Nothing else under the
# root is ours: the repository may sit above a MatrixOne data directory with its own `.tmp.*` files.
TEMPORARY_PLACES = (
    ("", temporary_names(re.escape(CONFIG_KEY))),
    ("blobs", CHUNK_TEMPORARY),
    ("blobs/*", temporary_names("[0-9a-f]{64}")),
    ("backups", temporary_names(r"[^/]+\.(?:json|files)")),
    ("locks", temporary_names(r"[0-9a-f]{32}\.json")),
    ("runs/*", temporary_names(r"[^/]+\.json")),
)
# A temporary lives from its creation to its rename, well under a second to minutes (a large file
# list). Lock records and the configuration are written without the exclusive lock, so age alone
# tells a leftover from a write in flight; an hour leaves a wide margin, and a leftover only wastes space.
TEMPORARY_MIN_AGE = 3600.0


@dataclass(frozen=True)
class RetentionPolicy:
    """Which backups of a source to keep (restic/K8up semantics). The newest completed backup is
    always kept. Bases are not kept for their dependents: every file list is complete, so a backup
    restores from its own list and the blobs it references, which garbage collection keeps."""

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_within: timedelta | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in asdict(self).values())


class RetentionItem(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def completed(self) -> datetime: ...


def select_kept(items: Sequence[RetentionItem], policy: RetentionPolicy,
                now: datetime | None = None) -> dict[str, str]:
    """IDs to keep, each with the first reason found. `items` are the completed backups of ONE
    source. With an empty policy everything is kept."""
    return {item_id: reasons[0] for item_id, reasons in keep_reasons(items, policy, now).items()}


def keep_reasons(items: Sequence[RetentionItem], policy: RetentionPolicy,
                 now: datetime | None = None) -> dict[str, list[str]]:
    """IDs to keep, each with every rule that keeps it (in the order select_kept tries them)."""
    if policy.empty:
        return {item.id: ["no retention policy"] for item in items}
    now = now or utc_now()
    newest_first = sorted(items, key=lambda i: (i.completed, i.id), reverse=True)
    kept: dict[str, list[str]] = {}

    def keep(item: RetentionItem, reason: str) -> None:
        kept.setdefault(item.id, []).append(reason)

    if newest_first:
        keep(newest_first[0], "newest completed backup")
    for item in newest_first[: policy.keep_last or 0]:
        keep(item, "keep-last")
    if policy.keep_within is not None:
        for item in newest_first:
            if item.completed >= now - policy.keep_within:
                keep(item, "keep-within")
    buckets = (
        (policy.keep_daily, "keep-daily", lambda d: d.strftime("%Y-%m-%d")),
        (policy.keep_weekly, "keep-weekly", lambda d: "{}-W{:02d}".format(*d.isocalendar()[:2])),
        (policy.keep_monthly, "keep-monthly", lambda d: d.strftime("%Y-%m")),
    )
    for count, reason, bucket_of in buckets:
        if not count:
            continue
        seen: set[str] = set()
        for item in newest_first:  # the newest backup of each of the `count` newest periods
            bucket = bucket_of(item.completed)
            if bucket not in seen:
                seen.add(bucket)
                if len(seen) > count:
                    break
                keep(item, reason)
    return kept


@dataclass
class GarbageResult:
    blobs_removed: int = 0
    bytes_freed: int = 0
    partial_backups_removed: int = 0
    # Unreferenced objects S3 Object Lock keeps until a date (objectlock.py): removed by a later prune.
    objects_held: int = 0
    held_until: str | None = None

    def _held(self, held: dict[str, datetime]) -> None:
        if held:
            self.objects_held += len(held)
            self.held_until = max(self.held_until or "", iso(max(held.values())))

    def _deletable(self, repo: Repository, keys: list[str]) -> list[str]:
        """The keys the bucket lets us delete now; the others are counted, never attempted."""
        if repo.object_lock is None:
            return keys
        free, held = split_deletable(repo.backend, keys)
        self._held(held)
        return free


@dataclass
class PruneResult(GarbageResult):
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeleteResult(GarbageResult):
    deleted: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)  # backups that name it as base: still restorable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unpublish(repo: Repository, backup_ids: Iterable[str]) -> None:
    """The summary goes first: from then on the backup is not listed, and its file list is garbage."""
    for backup_id in backup_ids:
        repo.backend.delete([summary_key(backup_id)])
        repo.backend.delete([files_key(backup_id)])


def collect_garbage(repo: Repository) -> GarbageResult:
    """Remove blobs no completed backup references, and leftovers of interrupted backups.
    The caller holds the exclusive lock, so no backup is writing meanwhile."""
    result = GarbageResult()
    problems: list[str] = []
    summaries = repo.list_backups(problems)
    if problems:
        raise CorruptDataError(f"refusing to delete blobs while a backup summary is unreadable: {problems[0]}")
    published = {s.id for s in summaries}
    with tempfile.TemporaryDirectory(prefix="mobackup-gc-") as scratch:
        referenced = DigestSet(Path(scratch) / "referenced.sqlite")
        try:
            for summary in summaries:
                for record in repo.entries(summary):
                    chunks = record.get("chunks", ()) if isinstance(record, dict) else None
                    if not isinstance(chunks, (list, tuple)):
                        raise CorruptDataError(f"backup {summary.id}: malformed file list entry {record!r:.200}; "
                                               "refusing to delete blobs")
                    for digest in chunks:
                        referenced.add(str(digest))
            referenced.flush()
            leftovers = [
                info.key for info in repo.backend.list("backups/")
                if info.key.endswith(".files") and info.key[len("backups/"):-len(".files")] not in published
            ]
            result.partial_backups_removed = repo.backend.delete(result._deletable(repo, leftovers))
            garbage: dict[str, int] = {}  # key -> size

            def remove() -> None:
                free = result._deletable(repo, list(garbage))
                result.bytes_freed += sum(garbage[key] for key in free)
                result.blobs_removed += repo.backend.delete(free)
                garbage.clear()

            for info in repo.backend.list("blobs/"):
                if info.key.rsplit("/", 1)[-1] not in referenced:
                    garbage[info.key] = info.size
                    if len(garbage) >= 1000:
                        remove()
            remove()
        finally:
            referenced.close()
    if isinstance(repo.backend, LocalBackend):
        root = repo.backend.root
        stale = repo.backend.list_temporary(TEMPORARY_PLACES, older_than=time.time() - TEMPORARY_MIN_AGE)
        # By key, through descriptors: a directory swapped for a link since the listing is refused.
        repo.backend.delete([path.relative_to(root).as_posix() for path in stale])
    return result


def delete_backup(repo: Repository, backup_id: str, *, force: bool = False) -> DeleteResult:
    with repo.lock(exclusive=True, purpose=f"delete of {backup_id}", wait_seconds=60):
        backup_id = repo.resolve_id(backup_id)
        try:
            repo.load_summary(backup_id)
        except CorruptDataError as error:
            # A damaged summary blocks garbage collection for the whole repository: it can be
            # deleted, but only on purpose (what it referenced is unknown; GC then decides).
            if not force:
                raise CorruptDataError(f"{error}; delete it with --force") from None
        if repo.object_lock is not None:
            _, held = split_deletable(repo.backend, [summary_key(backup_id), files_key(backup_id)])
            if held:
                raise RetentionError(f"backup {backup_id} is under S3 Object Lock ({repo.object_lock.mode}) until "
                                     f"{describe(held)}: it can be deleted from then on")
        # Its dependents are no reason to refuse: each restores from its own complete file list,
        # and garbage collection keeps every blob they reference.
        dependents = sorted(s.id for s in repo.list_backups() if s.base_id == backup_id)
        _unpublish(repo, [backup_id])
        garbage = collect_garbage(repo)
    return DeleteResult(deleted=[backup_id], dependents=dependents, **asdict(garbage))


def prune(repo: Repository, policy: RetentionPolicy, *, source: str | None = None,
          dry_run: bool = False, now: datetime | None = None) -> PruneResult:
    """Apply `policy` to every source (or one), then collect garbage (unless `dry_run`)."""
    with repo.lock(exclusive=True, purpose="prune", wait_seconds=60):
        by_source: dict[str, list[BackupSummary]] = {}
        for summary in repo.list_backups():
            if source is None or summary.source == source:
                by_source.setdefault(summary.source, []).append(summary)
        kept: dict[str, str] = {}
        doomed: list[str] = []
        for items in by_source.values():
            keep = select_kept(items, policy, now)
            kept.update(keep)
            doomed.extend(s.id for s in items if s.id not in keep)
        if repo.object_lock is not None:  # what the lock holds stays, and says until when
            for backup_id in list(doomed):
                _, held = split_deletable(repo.backend, [summary_key(backup_id), files_key(backup_id)])
                if held:
                    doomed.remove(backup_id)
                    kept[backup_id] = f"object lock until {describe(held)}"
        if dry_run:
            return PruneResult(deleted=doomed, kept=kept, dry_run=True)
        _unpublish(repo, doomed)
        garbage = collect_garbage(repo)
    return PruneResult(deleted=doomed, kept=kept, **asdict(garbage))
