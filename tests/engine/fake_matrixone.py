"""A stand-in for MatrixOne's `BACKUP ... FILESYSTEM` (what engine/online.py drives), for tests that
need a staged copy shaped on purpose: DISK-framed `tae/` objects, `tae_list`, `tae_sum` and
`hakeeper/hk_data`, as docs/repository-format.md section 5.1 and engine/online.py describe them.
`after` runs on the staging directory once it is written (to plant links, as a hostile server
user would). With `pause`, files are written as MatrixOne 1.3 writes them (`.tmp.<n>` in the staging
root, renamed to the final name), `pause` seconds apart, so that a writer can take them meanwhile."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from mobackup.engine.online_s3 import disk_frame


class FakeMatrixOne:
    version = "fake"
    connection = None  # no catalog to read: recorded as such, never fails a backup

    def __init__(self, objects: dict[str, bytes], reused: frozenset[str] = frozenset(),
                 stage_reused: bool = False, after: Callable[[Path], None] | None = None,
                 pause: float | None = None) -> None:
        self.objects = objects  # tae path -> content
        self.reused = reused  # listed with needCopy false (an incremental takes them from its base)
        self.stage_reused = stage_reused  # ... and written to tae/ all the same
        self.after = after
        self.pause = pause
        self.calls = 0

    def _write(self, staging: Path, rel: str, data: bytes) -> None:
        if self.pause is None:
            (staging / rel).write_bytes(data)
            return
        temp = staging / f".tmp.{len(rel)}{time.monotonic_ns()}"
        temp.write_bytes(data)
        os.rename(temp, staging / rel)
        time.sleep(self.pause)

    def backup_to_directory(self, path: str, parallelism: int, since_ts: str | None = None) -> None:
        self.calls += 1
        staging = Path(path)
        (staging / "tae").mkdir(parents=True)
        lines = []
        for rel, content in sorted(self.objects.items()):
            need_copy = rel not in self.reused
            if need_copy or self.stage_reused:
                (staging / "tae" / rel).parent.mkdir(parents=True, exist_ok=True)
                self._write(staging, f"tae/{rel}", disk_frame(content))
            lines.append(f"{rel},{len(content)},{hashlib.sha256(content).hexdigest()},"
                         f"{'true' if need_copy else 'false'},0-0")
        (staging / "tae" / "tae_list").write_bytes(disk_frame("\n".join(lines).encode()))
        kind = "incremental" if since_ts else "full"
        (staging / "tae" / "tae_sum").write_bytes(disk_frame(f"0,0,{1000 + self.calls}-0,{kind}".encode()))
        (staging / "hakeeper").mkdir()
        (staging / "hakeeper" / "hk_data").write_bytes(disk_frame(b"hakeeper state"))
        if self.after is not None:
            self.after(staging)
