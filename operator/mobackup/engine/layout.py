"""What the engine knows of MatrixOne's data directory (see shared reference matrixone-data.md)."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Never copied: FileService writes go to `.tmp.*` and are renamed when complete; `shared-cache/`
# and `file-service-cache/` are disk caches that MatrixOne refills (the second is the
# `[fileservice.cache] disk-path` of many configs); `tmp/` is the temporary file service.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "**/.tmp.*",
    "**/*.tmp",
    "shared-cache",
    "file-service-cache",
    "tmp",
    ".mobackup-staging-*",  # leftovers of a killed restore (engine/restore.py): never data
    ".mobackup-old-*",
)
# Files that may legitimately change or vanish while being copied; the backup keeps what it read.
DEFAULT_VOLATILE: tuple[str, ...] = ("etl/**",)

CKP_NAME = re.compile(r"^meta_(\d+)-(\d+)_(\d+)-(\d+)\.(ckp|cpt)$")


@dataclass(frozen=True)
class PathRules:
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    volatile: tuple[str, ...] = DEFAULT_VOLATILE
    extra_excludes: tuple[str, ...] = field(default=())

    def _match(self, rel: str, patterns: Iterable[str]) -> bool:
        name = rel.rsplit("/", 1)[-1]
        for pattern in patterns:
            if pattern.startswith("**/"):
                if fnmatch.fnmatchcase(name, pattern[3:]):
                    return True
            elif pattern.endswith("/**"):
                if rel.startswith(pattern[:-3] + "/"):
                    return True
            elif fnmatch.fnmatchcase(rel, pattern):
                return True
        return False

    def excluded(self, rel: str) -> bool:
        return self._match(rel, self.excludes) or self._match(rel, self.extra_excludes)

    def is_volatile(self, rel: str) -> bool:
        return self._match(rel, self.volatile)


# Where table storage lives: `shared/` (DISK backend, CRC-framed blocks), `shared2/` (DISK-V2, the
# default from v4.2), `s3/` (older configs with a local "S3" file service).
TABLE_STORAGE = {"shared": "disk", "shared2": "disk-v2", "s3": "local-s3"}


def detect_layout(data_dir: Path) -> str:
    """Which table storage a data directory holds. More than one is suspicious: MatrixOne uses one,
    and DISK-V2 refuses to start on CRC-framed data, so layouts must never be mixed."""
    found = [layout for name, layout in TABLE_STORAGE.items() if (data_dir / name).is_dir()]
    if len(found) > 1:
        return "mixed"
    return found[0] if found else "unknown"


def log_hostnames(paths: Iterable[str]) -> set[str]:
    """Hostnames in `logservice-data/<uuid>/<hostname>/...`: the log service (dragonboat) records the
    hostname and refuses to start on data written under another one."""
    names = set()
    for rel in paths:
        parts = rel.split("/")
        if len(parts) >= 3 and parts[0] == "logservice-data":
            names.add(parts[2])
    return names


def newest_checkpoint_ts(data_dir: Path) -> str | None:
    """The end timestamp of the newest checkpoint (`ckp/meta_<start>_<end>.ckp|cpt`): the point that
    MatrixOne replays to on start, so the point at which a cold copy is consistent."""
    best: tuple[int, int] | None = None
    for service in TABLE_STORAGE:
        ckp = data_dir / service / "ckp"
        if not ckp.is_dir():
            continue
        with os.scandir(ckp) as entries:
            for entry in entries:
                match = CKP_NAME.match(entry.name)
                if match:
                    end = (int(match.group(3)), int(match.group(4)))
                    if best is None or end > best:
                        best = end
    return f"{best[0]}-{best[1]}" if best else None
