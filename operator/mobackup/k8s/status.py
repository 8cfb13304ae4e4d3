"""Status builders: phase + conditions + the result fields, as merge-patch dicts for `.status`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mobackup.engine.progress import human_bytes

TERMINAL = ("Completed", "Failed")


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime | None = None) -> str:
    return (t or now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def human_duration(seconds: float) -> str:
    """3.2 -> '3.2s', 63.2 -> '1m3.2s', 3725 -> '1h2m5s' (Go-like, as kubectl users read)."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    h, rem = divmod(round(seconds), 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{seconds - 60 * m:.1f}s"


def condition(type_: str, ok: bool, reason: str, message: str, generation: int | None = None,
              at: datetime | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "status": "True" if ok else "False", "reason": reason,
                         "message": message[:1000], "lastTransitionTime": iso(at)}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def merge_conditions(old: list[dict[str, Any]] | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace conditions by type; keep lastTransitionTime when status did not change."""
    by_type = {c["type"]: dict(c) for c in old or []}
    for c in new:
        prev = by_type.get(c["type"])
        if prev and prev.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": prev.get("lastTransitionTime", c["lastTransitionTime"])}
        by_type[c["type"]] = c
    return list(by_type.values())


# The conditions a run resource carries, per phase: (Ready, Running, Failed) as booleans.
_RUN_CONDITIONS = {
    "Pending": (False, False, False),
    "Running": (False, True, False),
    "Completed": (True, False, False),
    "Failed": (False, False, True),
}


def phase_patch(old_status: dict[str, Any] | None, phase: str, reason: str, message: str,
                generation: int | None = None, more_conditions: list[dict[str, Any]] | None = None,
                **fields: Any) -> dict[str, Any]:
    """A status patch moving a MOBackup/MORestore to `phase`, with matching conditions (and
    `more_conditions`)."""
    ready, running, failed = _RUN_CONDITIONS[phase]
    conds = [condition("Ready", ready, reason, message, generation),
             condition("Running", running, reason, message, generation),
             condition("Failed", failed, reason, message, generation), *(more_conditions or [])]
    patch: dict[str, Any] = {"phase": phase, "reason": reason, "message": message,
                             "conditions": merge_conditions((old_status or {}).get("conditions"), conds)}
    if generation is not None:
        patch["observedGeneration"] = generation
    if phase in TERMINAL:
        patch["completionTime"] = fields.pop("completionTime", None) or iso()
        started = parse_iso(fields.get("startTime") or (old_status or {}).get("startTime"))
        if started:
            secs = max(0.0, (parse_iso(patch["completionTime"]) - started).total_seconds())  # type: ignore[operator]
            patch.setdefault("durationSeconds", round(secs, 3))
            patch.setdefault("duration", human_duration(secs))
    patch.update(fields)
    return patch


def _lock_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """status.lockedUntil/lockMode: the S3 Object Lock date the backup recorded (the agent's result has
    it at the top, a summary read from the repository in `extra`); a value that is no date is left out."""
    extra = summary.get("extra") if isinstance(summary.get("extra"), dict) else {}
    until = summary.get("locked_until") or extra.get("locked_until")
    mode = summary.get("lock_mode") or extra.get("lock_mode")
    try:
        parsed = parse_iso(until) if isinstance(until, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        return {}
    if parsed.microsecond:  # whole seconds, rounded up: the bucket refuses a delete until the instant
        parsed = parsed.replace(microsecond=0) + timedelta(seconds=1)
    return {"lockedUntil": iso(parsed), "lockMode": mode if mode in ("COMPLIANCE", "GOVERNANCE") else None}


def locked_until(obj: dict[str, Any], at: datetime | None = None) -> datetime | None:
    """The S3 Object Lock date of a MOBackup's backup (status.lockedUntil) while it is ahead; None
    once the backup may be deleted (or was never locked)."""
    try:
        until = parse_iso((obj.get("status") or {}).get("lockedUntil"))
    except ValueError:
        return None
    return until if until is not None and until.tzinfo is not None and until > (at or now()) else None


def backup_result_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """Status fields of a Completed MOBackup from the engine's BackupSummary.to_dict()."""
    size = int(summary.get("size_bytes") or 0)
    out: dict[str, Any] = {
        "backupID": summary.get("id"),
        "type": _type_name(summary.get("type")),
        "baseBackupID": summary.get("base_id") or None,
        "backupTS": summary.get("backup_ts"),
        "sizeBytes": size,
        "size": human_bytes(size),
        "newBytes": int(summary.get("new_bytes") or 0),
        "fileCount": int(summary.get("file_count") or 0),
        "source": summary.get("source"),
        "mobackupVersion": summary.get("mobackup_version"),
        "storedBytes": summary.get("stored_bytes"),
        "stagedBytes": summary.get("staged_bytes"),
        "moVersion": summary.get("mo_version"),
        **_lock_fields(summary),
        "recoverableFrom": summary.get("recoverable_from"),  # engine/pitr.py interval_fields
        "recoverableTo": summary.get("recoverable_to"),
    }
    if summary.get("location"):
        out["location"] = summary["location"]
    # Jobs have no API access (they report through their termination message): the progress is
    # written by the operator, once the result is in.
    out["progress"] = progress_fields(size, size, out["fileCount"], out["fileCount"])
    secs = summary.get("duration_seconds")
    if secs is not None:
        # The copy's own duration; the run's duration (with scale-down/up) is set by phase_patch.
        out["copyDurationSeconds"] = secs
    return {k: v for k, v in out.items() if v is not None}


def restore_result_fields(result: dict[str, Any]) -> dict[str, Any]:
    size = int(result.get("restored_bytes") or result.get("size_bytes") or result.get("bytes") or 0)
    files = int(result.get("file_count") or result.get("files") or 0)
    out = {
        "backupID": result.get("backup_id") or result.get("id"),
        "restoredBytes": size,
        "size": human_bytes(size),
        "fileCount": files,
        "backupTS": result.get("backup_ts"),
        "progress": progress_fields(size, size, files, files),  # written by the operator, see above
    }
    return {k: v for k, v in out.items() if v is not None}


def _type_name(t: Any) -> str | None:
    if not t:
        return None
    return {"full": "Full", "incremental": "Incremental"}.get(str(t).lower(), str(t))


def progress_fields(done_bytes: int, total_bytes: int, done_files: int, total_files: int) -> dict[str, Any]:
    pct = int(100 * done_bytes / total_bytes) if total_bytes else (100 if done_files >= total_files else 0)
    return {"bytesDone": done_bytes, "bytesTotal": total_bytes, "filesDone": done_files,
            "filesTotal": total_files, "percent": max(0, min(100, pct)), "updatedAt": iso()}
