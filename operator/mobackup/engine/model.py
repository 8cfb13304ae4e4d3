"""The records a repository stores about a backup (the summary; the file list is streamed apart)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

MAX_SKIPPED = 100


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class BackupSummary:
    """`backups/<id>.json`: written last, so its presence means the backup is complete."""

    id: str
    type: str  # "full" | "incremental"
    base_id: str | None
    source: str
    backup_ts: str  # MatrixOne HLC "<physical ns>-<logical>"
    backup_ts_source: str  # "checkpoint" (newest ckp/meta_*) | "clock"
    started_at: str
    completed_at: str
    duration_seconds: float
    size_bytes: int  # logical size of every file in the backup
    new_bytes: int  # plaintext bytes of blobs this backup had to store
    stored_bytes: int  # bytes those new blobs take in the repository
    file_count: int
    read_file_count: int  # files read and hashed (the rest were unchanged since the base)
    chunk_count: int
    new_blob_count: int
    data_dir: str
    host: str
    layout: str  # "disk" (shared/), "disk-v2" (shared2/), "mixed", "unknown"
    location: str
    files_digest: str  # BLAKE3 of the plaintext file list
    files_frames: int
    entry_count: int  # lines in the file list (files, directories, symlinks)
    mo_version: str | None = None
    mobackup_version: str = ""
    format_version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # FIFOs, sockets and devices are not data and are not copied; they are named here (at most
    # MAX_SKIPPED of them, as {"path", "type"}), so that leaving them out is never silent.
    skipped_count: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> BackupSummary:
        """A summary from its JSON; ValueError with the reason when it is malformed (a repository
        is untrusted input: a bad summary must be reported, not crash every command)."""
        if not isinstance(data, dict):
            raise ValueError(f"a summary is a JSON object, not {type(data).__name__}")
        for name, types in _FIELD_TYPES.items():
            if name not in data:
                raise ValueError(f"no field {name!r}")
            value = data[name]
            if not isinstance(value, types) or isinstance(value, bool):
                raise ValueError(f"field {name!r} is {value!r}")
        for name in ("started_at", "completed_at"):
            parse_iso(data[name])  # ValueError names the bad text
        if data["type"] not in ("full", "incremental"):
            raise ValueError(f"field 'type' is {data['type']!r}")
        if not isinstance(data.get("extra", {}), dict):
            raise ValueError("field 'extra' is not an object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def completed(self) -> datetime:
        return parse_iso(self.completed_at)


_TEXT = (str,)
_COUNT = (int,)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": _TEXT, "type": _TEXT, "base_id": (str, type(None)), "source": _TEXT, "backup_ts": _TEXT,
    "started_at": _TEXT, "completed_at": _TEXT, "duration_seconds": (int, float), "size_bytes": _COUNT,
    "new_bytes": _COUNT, "file_count": _COUNT, "files_digest": _TEXT, "files_frames": _COUNT,
    "entry_count": _COUNT, "location": _TEXT,
}
