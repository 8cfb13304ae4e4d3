"""What the engine knows of MatrixOne's data directory (see shared reference matrixone-data.md)."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Never copied: FileService writes go to `.tmp.*` and are renamed when complete; `shared-cache/`
# is a disk cache that MatrixOne refills; `tmp/` is the temporary file service.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "**/.tmp.*",
    "**/*.tmp",
    "shared-cache",
    "tmp",
    ".mobackup-staging-*",
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


def detect_layout(data_dir: Path) -> str:
    """DISK (`shared/`, CRC-framed) or DISK-V2 (`shared2/`, from v4.2). Both present is suspicious."""
    v1 = (data_dir / "shared").is_dir()
    v2 = (data_dir / "shared2").is_dir()
    if v1 and v2:
        return "mixed"
    if v2:
        return "disk-v2"
    if v1:
        return "disk"
    return "unknown"


def newest_checkpoint_ts(data_dir: Path) -> str | None:
    """The end timestamp of the newest checkpoint (`ckp/meta_<start>_<end>.ckp|cpt`): the point that
    MatrixOne replays to on start, so the point at which a cold copy is consistent."""
    best: tuple[int, int] | None = None
    for service in ("shared", "shared2"):
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
