"""The records a repository stores about a backup (the summary; the file list is streamed apart)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def completed(self) -> datetime:
        return parse_iso(self.completed_at)
