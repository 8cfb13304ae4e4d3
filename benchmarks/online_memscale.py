"""Peak memory of an online backup against the number of staged files (memscale.py's online rows).

MatrixOne cannot stage a million objects here in useful time, so this process plays its part: a
stand-in session whose BACKUP writes `count` tiny DISK-framed objects into the staging directory
(renamed from `.tmp.<n>` as MatrixOne does), then `tae_list`, `tae_sum` and `hakeeper/hk_data`,
streaming (its own memory stays flat). The engine's online path (engine/online.py: the taker that
stores files while BACKUP writes, the checks against tae_list, the ingest) runs on it unchanged.

    python benchmarks/online_memscale.py --files 100000 --data DIR --repo DIR [--incremental]

`--incremental` runs a second backup on the first, with every object listed as reused (needCopy
false) and 1% new ones staged: what an online incremental holds per reused file. Measure it with
GNU time (memscale.py does)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from mobackup.engine.online import run_online_backup
from mobackup.engine.online_s3 import crc32c
from mobackup.engine.repository import RepositoryOptions, open_repository

BLOCK = 2044  # content bytes per DISK block
CONTENTS = [f"blk{i:05d}".encode() for i in range(256)]
SHA = [hashlib.sha256(c).hexdigest() for c in CONTENTS]


def framed(content: bytes) -> bytes:
    return b"".join(crc32c(content[i:i + BLOCK]).to_bytes(4, "little") + content[i:i + BLOCK]
                    for i in range(0, len(content), BLOCK))


class FramedWriter:
    """Writes a text in DISK framing as it is given, block by block."""

    def __init__(self, path: Path) -> None:
        self.out = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.pending = bytearray()

    def write(self, text: bytes) -> None:
        self.pending += text
        while len(self.pending) >= BLOCK:
            self.out.write(framed(bytes(self.pending[:BLOCK])))
            del self.pending[:BLOCK]

    def close(self) -> None:
        if self.pending:
            self.out.write(framed(bytes(self.pending)))
        self.out.close()


def name(i: int) -> str:
    return f"{i:016x}-0000-7000-8000-000000000000_{i % 100000:05d}"


class StandInSession:
    """What engine/online.py asks of a MatrixOne session, BACKUP writing `count` objects."""

    version = "stand-in"
    connection = None  # no catalog: recorded as such

    def __init__(self, count: int, reused: int = 0) -> None:
        self.count = count  # objects listed
        self.reused = reused  # the first `reused` of them are listed with needCopy false, not written

    def backup_to_directory(self, path: str, parallelism: int, since_ts: str | None = None) -> None:
        staging = Path(path)
        tae = staging / "tae"
        tae.mkdir(parents=True)
        listing = FramedWriter(tae / "tae_list")
        for i in range(self.count):
            content = CONTENTS[i % 256]
            need_copy = i >= self.reused
            if need_copy:
                temp = staging / f".tmp.{i}"
                temp.write_bytes(framed(content))
                os.rename(temp, tae / name(i))
            listing.write(f"{name(i)},{len(content)},{SHA[i % 256]},{'true' if need_copy else 'false'},0-0\n"
                          .encode())
        listing.close()
        kind = "incremental" if since_ts else "full"
        (tae / "tae_sum").write_bytes(framed(f"0,0,{2000 if since_ts else 1000}-0,{kind}".encode()))
        (staging / "hakeeper").mkdir()
        (staging / "hakeeper" / "hk_data").write_bytes(framed(b"hakeeper state"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the data volume (staging goes there)")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--incremental", action="store_true", help="the second backup (see the module's doc)")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    repo = open_repository(RepositoryOptions.from_env(args.repo), create=True)
    if args.incremental:
        added = max(1, args.files // 100)
        session = StandInSession(args.files + added, reused=args.files)
    else:
        session = StandInSession(args.files)
    summary = run_online_backup(repo, args.data, session, source="memscale",
                                backup_type="incremental" if args.incremental else "full")
    json.dump({"id": summary.id, "type": summary.type, "file_count": summary.file_count,
               "taken_files": summary.extra.get("taken_files"), "staged_files": summary.extra.get("staged_files")},
              sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
