"""The PITR history an online backup of S3-resident table data adds to MatrixOne's BACKUP output: the
same superset as engine/pitr_history.py takes from a data directory, read from the cluster's SHARED
key prefix instead.

After BACKUP returns, the prefix is listed; every object that BACKUP's list (tae_list) lacks and whose
LastModified is not after BACKUPTS is stored in the backup as `shared/<key>`, beside BACKUP's own
objects, so that a restore into a prefix puts it back before MatrixOne starts (engine/online_s3.py
restore_to_s3) and `RESTORE CLUSTER FROM PITR` finds the objects the older checkpoints name.
- Objects are write-once: one the cleaner deletes before it is read was garbage (the PITR keeps what
  its range needs) and is left out; one whose size is no longer the listed one was written after the
  listing, and is left out too.
- An object the base backup lists with the same key and size is taken from the base, not read.
- LastModified is the S3 server's clock, BACKUPTS MatrixOne's: they must agree within a second or so
  (NTP), as they do for any S3 deployment. An object written in BACKUPTS's own second may be taken
  (listings give whole seconds): a superset, never less.
The prefix is the cluster's (untrusted): keys are checked as file-list paths are (no `..`, no empty
component) before anything is read.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import MobackupError
from .model import iso, utc_now
from .online import StagedFile


@dataclass
class S3History:
    """What the listing found: objects to read, paths (below the backup's tree) taken from the base."""

    items: list[StagedFile]
    inherited: list[str]
    inherited_bytes: int = 0
    later: int = 0  # listed, but modified after BACKUPTS
    listed: int = 0

    def record(self, copied_files: int, copied_bytes: int, left_out: int) -> dict[str, Any]:
        """extra.pitr.history_added, as engine/pitr_history.History.record gives it."""
        return {"files": copied_files + len(self.inherited), "bytes": copied_bytes + self.inherited_bytes,
                "copied_files": copied_files, "from_base_files": len(self.inherited),
                "left_out": left_out + self.later, "taken_at": iso(utc_now()), "listed_objects": self.listed}


def _safe_key(key: str) -> bool:
    parts = key.split("/")
    return bool(key) and not key.startswith("/") and "\0" not in key and all(p not in ("", ".", "..") for p in parts)


def list_history(live: Any, staged_paths: Container[str], cutoff: float,
                 base_entries: Iterable[dict[str, Any]] | None = None) -> S3History:
    """The objects under `live` (the SHARED prefix's backend) that `staged_paths` (tae_list, relative
    to the prefix; looked up, never copied: it may be on disk) lacks and that were last modified at
    or before `cutoff` (BACKUPTS, seconds since the epoch); those `base_entries` (the base backup's
    file records) hold with the same size are returned as inherited `shared/<key>` paths."""
    staged = staged_paths
    found: dict[str, int] = {}
    later = listed = 0
    for info in live.list(""):
        listed += 1
        if info.key in staged:
            continue
        if not _safe_key(info.key):
            raise MobackupError(f"{live.location} holds an object named {info.key[:200]!r}: not a path a restore "
                                "can write; refusing to take the PITR history from it")
        if info.modified > cutoff:
            later += 1
            continue
        found[info.key] = info.size
    inherited: list[str] = []
    inherited_bytes = 0
    if base_entries is not None and found:
        for record in base_entries:
            path = record.get("path", "")
            if record.get("type") == "file" and path.startswith("shared/") and found.get(path[7:]) == record["size"]:
                inherited.append(path)
                inherited_bytes += record["size"]
                del found[path[7:]]
    items = [StagedFile(key, size, "", True) for key, size in sorted(found.items())]
    return S3History(items, sorted(inherited), inherited_bytes, later, listed)
