"""Point-in-time recovery from backups: the cluster PITRs MatrixOne keeps history for, as a backup
records them, and the interval of instants a backup can be brought back to.

MatrixOne keeps the history of a PITR's range from garbage collection (`CREATE PITR p FOR CLUSTER
RANGE 1 'd'`; one cluster-level PITR per account). A cold copy of the whole data directory carries
that history, so a server started on it can run `RESTORE CLUSTER FROM PITR p '<ts>'` for any instant
of [max(PITR created, BACKUPTS - range), BACKUPTS]. MatrixOne's BACKUP output (online backups) does
not carry it (`table "mo_account" does not exist`): online backups record the windows but no
interval, unless they take the live objects the history needs too (engine/pitr_history.py; for table
data in S3 the objects of the cluster's prefix, engine/pitr_history_s3.py), which they do when a PITR
window exists. The record is `extra["pitr"]` (docs/repository-format.md, section 5.3).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import MobackupError
from .model import BackupSummary, iso, parse_iso, utc_now

# The shortest each unit can be (MatrixOne subtracts calendar months and years): an interval
# computed with these never claims an instant MatrixOne has let go of.
UNIT_SECONDS = {"h": 3600, "d": 86400, "mo": 28 * 86400, "y": 365 * 86400}
MAX_VALUE = 100  # MatrixOne refuses a range above 100 of any unit
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
WHAT_HOLDS_HISTORY = "a cold copy of the whole data directory (MatrixOne stopped, or a volume snapshot)"


@dataclass(frozen=True)
class PitrWindow:
    """One cluster-level PITR as `SHOW PITR` lists it (times in UTC)."""

    name: str
    created: str  # ISO 8601, UTC
    modified: str
    value: int
    unit: str  # h, d, mo, y

    @property
    def range_seconds(self) -> int:
        return self.value * UNIT_SECONDS[self.unit]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PitrWindow:
        """A recorded window; ValueError when malformed (a repository is untrusted input)."""
        if not isinstance(data, dict):
            raise ValueError("a PITR window is an object")
        name, value, unit = data.get("name"), data.get("value"), data.get("unit")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"PITR name {name!r}")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_VALUE:
            raise ValueError(f"PITR range value {value!r}")
        if unit not in UNIT_SECONDS:
            raise ValueError(f"PITR range unit {unit!r}")
        created, modified = data.get("created"), data.get("modified")
        for text in (created, modified):
            if not isinstance(text, str):
                raise ValueError(f"PITR time {text!r}")
            parse_iso(text)
        return cls(name, str(created), str(modified), value, unit)


def hlc_time(backup_ts: str) -> datetime:
    """BACKUPTS (MatrixOne's HLC, "<physical ns>-<logical>") as a UTC instant."""
    physical, _, logical = backup_ts.partition("-")
    if not (physical.isdigit() and logical.isdigit()):
        raise ValueError(f"BACKUPTS {backup_ts!r} is not physical-logical")
    nanoseconds = int(physical)
    return datetime.fromtimestamp(nanoseconds // 10**9, UTC) + timedelta(microseconds=nanoseconds % 10**9 // 1000)


def range_clause(seconds: float) -> tuple[int, str]:
    """The smallest `RANGE value 'unit'` at least `seconds` long (MatrixOne allows 1-100 of a unit)."""
    if seconds % 86400 == 0 and 0 < seconds <= MAX_VALUE * 86400:
        return int(seconds // 86400), "d"  # whole days as days: SHOW PITR then says what was asked
    for unit in ("h", "d", "mo", "y"):
        value = max(1, math.ceil(seconds / UNIT_SECONDS[unit]))
        if value <= MAX_VALUE:
            return value, unit
    raise MobackupError(f"a PITR window of {seconds / 86400:.0f} days is longer than MatrixOne's 100 years")


def _utc(value: Any) -> str:
    if not isinstance(value, datetime):
        raise MobackupError(f"SHOW PITR answered a time {value!r}")
    return iso(value.replace(tzinfo=UTC))  # read with the session in UTC


def read_windows(connection: Any) -> list[PitrWindow]:
    """The cluster-level PITRs of the server (SHOW PITR, checked: the answer is untrusted input).
    MobackupError when the server refuses (one without PITR, or a non-sys user)."""
    from .sqlconn import pymysql  # here, not above: `list` and `backup --json` read intervals without SQL (start-up)

    try:
        with connection.cursor() as cursor:
            # SHOW PITR prints its times in the session's zone: read them in UTC, then put it back.
            cursor.execute("select @@time_zone")
            zone = cursor.fetchone()[0]
            cursor.execute("set time_zone = '+00:00'")
            try:
                cursor.execute("show pitr")
                rows = cursor.fetchall()
            finally:
                cursor.execute("set time_zone = %s", (str(zone),))
    except pymysql.MySQLError as error:
        raise MobackupError(f"SHOW PITR failed: {error.args[-1]}") from None
    windows = []
    for row in rows:
        if len(row) < 9:
            raise MobackupError(f"SHOW PITR answered a row of {len(row)} columns, expected 9")
        name, created, modified, level, _account, _database, _table, value, unit = row[:9]
        if str(level) != "cluster":
            continue  # account, database and table PITRs cannot restore the whole cluster
        try:
            windows.append(PitrWindow.from_dict({"name": name, "created": _utc(created), "modified": _utc(modified),
                                                 "value": value, "unit": str(unit).lower()}))
        except ValueError as error:
            raise MobackupError(f"SHOW PITR answered an unusable cluster PITR: {error}") from None
    return windows


def ensure_window(connection: Any, name: str, seconds: float) -> tuple[str, PitrWindow]:
    """A cluster PITR of at least `seconds`: the existing one (MatrixOne allows one per account,
    whoever made it) lengthened when shorter, never shortened nor dropped; else `name`, created.
    Returns (what was done, the window)."""
    if not NAME.match(name):
        raise MobackupError(f"invalid PITR name {name!r} (letters, digits and _, at most 64)")
    value, unit = range_clause(seconds)
    existing = read_windows(connection)
    if existing:
        widest = max(existing, key=lambda w: w.range_seconds)
        if widest.range_seconds >= seconds:
            return "kept", widest
        statement, action, name = f"alter pitr `{widest.name}` range {value} '{unit}'", "lengthened", widest.name
    else:
        statement, action = f"create pitr `{name}` for cluster range {value} '{unit}'", "created"
    from .sqlconn import pymysql

    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    except pymysql.MySQLError as error:
        raise MobackupError(f"MatrixOne refused to {action[:-1] if action.endswith('ed') else action} PITR "
                            f"{name!r}: {error.args[-1]}") from None
    found = [w for w in read_windows(connection) if w.name == name]
    if not found or found[0].range_seconds < seconds:
        raise MobackupError(f"PITR {name!r} does not cover {seconds:.0f} s after it was {action}")
    return action, found[0]


def pitr_name_for(source: str) -> str:
    """The PITR a backup creates for `source`: mobackup_ and the source's letters and digits."""
    return ("mobackup_" + re.sub(r"[^A-Za-z0-9_]+", "_", source).strip("_"))[:64]


def record(connection: Any, *, history: bool, ensured: str | None = None) -> dict[str, Any]:
    """`extra["pitr"]`: the windows present now (before the backup's copy) and whether the backup
    holds the history; a refusal to list them is recorded, never fails the backup."""
    out: dict[str, Any] = {"history": history, "read_at": iso(utc_now())}
    if not history:
        out["reason"] = (f"MatrixOne's BACKUP output alone holds no PITR history; only {WHAT_HOLDS_HISTORY}, or an "
                         "online backup that also takes the live objects the history needs, does")
    if ensured:
        out["ensured"] = ensured
    try:
        out["windows"] = [w.to_dict() for w in read_windows(connection)]
    except MobackupError as error:
        out["windows"], out["error"] = [], str(error)
    return out


def has_windows(rec: Any) -> bool:
    """Whether a backup's `extra["pitr"]` (as `record` made it) lists a PITR window."""
    return isinstance(rec, dict) and bool(rec.get("windows")) and "error" not in rec


def with_history(rec: Any, added: dict[str, Any]) -> dict[str, Any]:
    """`extra["pitr"]` of an online backup that took the history (engine/pitr_history.py)."""
    out = {k: v for k, v in (rec if isinstance(rec, dict) else {}).items() if k != "reason"}
    return {**out, "history": True, "history_added": added}


def prepare(connection: Any, *, source: str, window_seconds: float | None, history: bool) -> dict[str, Any]:
    """Before a backup: with `window_seconds`, a cluster PITR of at least that range (ensure_window);
    then `extra["pitr"]` (record). What `backup --pitr-window` and the operator's backups both do."""
    ensured = None
    if window_seconds is not None:
        action, window = ensure_window(connection, pitr_name_for(source), window_seconds)
        ensured = f"{action} {window.name} ({window.value} {window.unit})"
    return record(connection, history=history, ensured=ensured)


def checked_record(data: Any) -> dict[str, Any]:
    """A record made elsewhere (the operator reads the windows before it stops MatrixOne, and hands
    them to the backup Job): the same shape as record()'s, checked; MobackupError when malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("history"), bool):
        raise MobackupError("a PITR record is an object with a boolean history")
    out: dict[str, Any] = {"history": data["history"]}
    for key in ("read_at", "reason", "ensured", "error"):
        if key in data:
            if not isinstance(data[key], str) or len(data[key]) > 1000:
                raise MobackupError(f"PITR record: {key} must be a short text")
            out[key] = data[key]
    windows = data.get("windows", [])
    if not isinstance(windows, list) or len(windows) > 100:
        raise MobackupError("PITR record: windows must be a list")
    try:
        out["windows"] = [PitrWindow.from_dict(w).to_dict() for w in windows]
    except ValueError as error:
        raise MobackupError(f"PITR record: {error}") from None
    return out


def windows_of(summary: BackupSummary) -> list[PitrWindow] | None:
    """The recorded windows; None when the backup recorded none (no SQL at backup time, or unusable)."""
    rec = summary.extra.get("pitr")
    if not isinstance(rec, dict) or not isinstance(rec.get("windows"), list) or "error" in rec:
        return None  # unknown: not recorded, or the server would not list them
    try:
        return [PitrWindow.from_dict(w) for w in rec["windows"]]
    except ValueError:
        return None


def holds_history(summary: BackupSummary) -> bool:
    """As the record says (online backups that took the history do, engine/pitr_history*.py); without
    one, cold copies of the whole directory do, MatrixOne's BACKUP output and S3-resident backups not."""
    rec = summary.extra.get("pitr")
    if isinstance(rec, dict) and "history" in rec:
        return rec["history"] is True
    return summary.extra.get("kind", "cold") == "cold" and summary.extra.get("resident") != "s3"


def interval(summary: BackupSummary) -> tuple[datetime, datetime] | None:
    """[max(PITR created, BACKUPTS - range), BACKUPTS], the widest of the recorded windows; None for
    a backup without history or without recorded windows."""
    windows = windows_of(summary)
    if not windows or not holds_history(summary):
        return None
    try:
        end = hlc_time(summary.backup_ts)
    except ValueError:
        return None
    # An online backup took the history after BACKUPTS: by then the cleaner could let go of what the
    # window no longer held, so its window is counted back from then.
    taken = _history_taken_at(summary) or end
    # MatrixOne records the creation to the second, truncated: the next second is the first sure one.
    start = min(max(parse_iso(w.created) + timedelta(seconds=1), taken - timedelta(seconds=w.range_seconds))
                for w in windows)
    return (start, end) if start <= end else None


def _history_taken_at(summary: BackupSummary) -> datetime | None:
    added = summary.extra.get("pitr", {}).get("history_added") if isinstance(summary.extra.get("pitr"), dict) else None
    try:
        return parse_iso(added["taken_at"]) if isinstance(added, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def interval_fields(summary: BackupSummary) -> dict[str, str | None]:
    """What `list`, `show` and `--json` add to a backup."""
    span = interval(summary)
    return {"recoverable_from": iso(span[0]) if span else None, "recoverable_to": iso(span[1]) if span else None}
