"""S3 Object Lock (WORM): what a repository's `object_lock` setting means for writes, deletes and
verification (docs/repository-format.md, section 14).

Every blob, file list and summary is written with a retention date (`days` after the write), and
publishing a backup extends the retention of every blob it uses to its own date: a blob stays
locked as long as the newest backup that uses it. Locks, run records and the configuration are not
retained (they are removed or rewritten in normal operation). The server enforces the dates; this
module only keeps mobackup from attempting what it would refuse, and reports what it finds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import MobackupError
from .model import iso, parse_iso, utc_now
from .storage import ObjectNotFound

MODES = ("COMPLIANCE", "GOVERNANCE")
MAX_DAYS = 36500


class RetentionError(MobackupError):
    """A delete the bucket's Object Lock forbids until a date."""


class ObjectLockMismatch(MobackupError):
    """A run asks for another Object Lock setting than the repository was created with."""


def require_setting(repo: Any, days: float | None, mode: str = "COMPLIANCE") -> None:
    """Raise ObjectLockMismatch unless the repository's setting is the one asked (setting_mismatch)."""
    problem = setting_mismatch(repo.location, repo.object_lock, wanted(days, mode))
    if problem:
        raise ObjectLockMismatch(problem)


@dataclass(frozen=True)
class ObjectLock:
    mode: str  # COMPLIANCE: nobody can delete early; GOVERNANCE: only with the bypass permission
    days: float  # retention after each write (fractions: tests use seconds)

    @classmethod
    def from_config(cls, value: Any) -> ObjectLock | None:
        """The repository's setting (mobackup.json `object_lock`), checked: it is untrusted input."""
        if value is None:
            return None
        problem = config_problem(value)
        if problem:
            raise MobackupError(problem)
        return cls(value["mode"], float(value["days"]))

    def to_config(self) -> dict[str, Any]:
        return {"mode": self.mode, "days": self.days}

    def until(self, now: datetime | None = None) -> datetime:
        return (now or utc_now()) + timedelta(days=self.days)


def config_problem(value: Any) -> str | None:
    """Why an `object_lock` setting cannot be used, or None."""
    if not isinstance(value, dict):
        return "object_lock is not an object"
    days = value.get("days")
    if value.get("mode") not in MODES:
        return f"object_lock mode {value.get('mode')!r} is not one of {', '.join(MODES)}"
    if not isinstance(days, (int, float)) or isinstance(days, bool) or not 0 < days <= MAX_DAYS:
        return f"object_lock days {days!r} is not a number of days (0-{MAX_DAYS}]"
    return None


def wanted(days: float | None, mode: str = "COMPLIANCE") -> ObjectLock | None:
    """The setting a run asks for (`--lock-days`/`--lock-mode`, MOBackupStorage.spec.objectLock)."""
    return None if days is None else ObjectLock.from_config({"mode": mode.upper(), "days": days})


def setting_mismatch(location: str, recorded: ObjectLock | None, asked: ObjectLock | None) -> str | None:
    """Why a repository whose mobackup.json records `recorded` may not be written by a run that asks
    for `asked`, or None. Asking nothing accepts whatever the repository records (its own lock still
    applies to every write). The setting is fixed when the repository is created: a shorter one
    would let later backups be deleted sooner than the WORM promise said, a longer or a new one
    would not protect the backups already written, so any change is refused (a new repository, e.g.
    another prefix, takes another setting; `mobackup copy` moves the backups there)."""
    if asked is None or asked == recorded:
        return None
    have = f"{recorded.mode} for {recorded.days:g} days" if recorded else "no Object Lock"
    return (f"{location} was created with {have}, not the asked {asked.mode} for {asked.days:g} days: the "
            "setting is fixed when a repository is created (use a new repository for another one)")


def recorded_until(summary: Any) -> datetime | None:
    """The retention date a backup's summary recorded (`extra.locked_until`; untrusted: None when
    absent or not a date with a zone)."""
    text = summary.extra.get("locked_until")
    try:
        recorded = parse_iso(text) if isinstance(text, str) else None
    except (ValueError, OverflowError):
        return None
    return recorded if recorded is not None and recorded.tzinfo is not None else None


def held_until(backend: Any, key: str, now: datetime | None = None) -> datetime | None:
    """The date until which the bucket refuses to delete the object's current version, or None
    when it may be deleted now (no retention, or one that has passed)."""
    try:
        retention = backend.retention(key)
    except ObjectNotFound:
        return None  # nothing current to delete (a delete then removes what versions remain)
    if retention is None:
        return None
    until = retention[1]
    return until if until > (now or utc_now()) else None


def split_deletable(backend: Any, keys: Iterable[str]) -> tuple[list[str], dict[str, datetime]]:
    """The keys that may be deleted now, and those the lock holds (key -> until)."""
    now = utc_now()
    free: list[str] = []
    held: dict[str, datetime] = {}
    for key in keys:
        until = held_until(backend, key, now)
        if until is None:
            free.append(key)
        else:
            held[key] = until
    return free, held


def describe(held: dict[str, datetime]) -> str:
    return iso(max(held.values())) if held else "-"


def retention_problem(backend: Any, key: str, expected: datetime | None) -> str | None:
    """For verify: why the object's current version is not locked at least until `expected` (the
    date its backup recorded), or None. A version written over a locked one (readers get the new
    one) and a retention that was never set both show here; a deleted object shows as missing."""
    retention = backend.retention(key)
    if retention is None:
        return f"{key} is not under Object Lock retention (replaced by an unlocked version?)"
    if expected is not None and retention[1] < expected - timedelta(seconds=1):
        return f"{key} is retained until {iso(retention[1])}, before {iso(expected)} that its backup recorded"
    return None


def missing_hint(backend: Any, key: str) -> str:
    """Why a key of a locked repository reads as missing: a delete marker over a version the lock
    keeps (the data can be brought back), or nothing at all."""
    if backend.has_noncurrent_versions(key):
        return " (deleted early: a delete marker hides its locked versions, which can be restored)"
    return ""
