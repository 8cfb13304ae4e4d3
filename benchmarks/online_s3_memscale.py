"""Peak memory of the online path of S3-resident data against the number of staged objects (issue 22,
goal 4): the ingest of a staged prefix (`backup --online --run ID --shard 0/1`), its commit, and a
restore of the backup into a fresh bucket prefix, each step one process, its peak RSS from GNU time.

A staged prefix as MatrixOne's BACKUP ... S3OPTION writes it: `count` tiny objects (8 bytes, 256
distinct contents, so every record carries a real chunk digest while the repository stays at 256
blobs), `tae_list` naming them with their SHA-256s, `tae_sum`, `hakeeper/hk_data`. The run record
`runs/<run>/run.json` is written as `--stage-only` writes it for the engine measured: the pinned form
(tae_list's SHA-256) for an engine that reads it, the older form (every path listed) otherwise.

Two ways to serve the objects:
- `--mode s3`: the suite's S3 server (SeaweedFS, started here on free ports), every step the CLI as a
  user runs it. Writing, reading and restoring a million objects through it one request each takes
  hours on this machine, so this mode is for the smaller counts.
- `--mode standin`: the engine's functions (ingest_shard, commit_run, restore_to_s3) in a process of
  their own whose S3 is a stand-in (S3Place.backend replaced): the staged objects and tae_list are
  generated from their position as they are read, the restore's uploads are counted and dropped.
  Everything the engine holds is measured; only the S3 client's own costs are not.

Engines: `--engine NAME=DIR` (an `operator/` directory), several to compare (before and after), in
one run, the order rotating per count. Raw results go to benchmarks/results/online-s3-memscale-<time>.json.

    benchmarks/online_s3_memscale.py --mode standin --counts 1000,100000,1000000 \\
        --engine before=/work/main/operator --engine after=operator
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import measure  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"
TS = "1795952494563857612-1"
STAGING_NAME = "mobackup-staging-00000000000bec42"
CONTENTS = [f"blk{i:05d}".encode() for i in range(256)]
SHA = [hashlib.sha256(c).hexdigest() for c in CONTENTS]
HK = b"\x08\xc8\xd1\x10" + bytes(range(58))
SUM = f"2026-12-02 12:00:00,1,{TS},\n".encode()


def name(i: int) -> str:
    return f"{i:016x}-0000-7000-8000-000000000000_{i % 100000:05d}"


def index_of(key: str) -> int:
    return int(key.rpartition("/")[2][:16], 16)


def tae_list_lines(count: int) -> Iterator[bytes]:
    for i in range(count):
        yield f"{name(i)},{len(CONTENTS[i % 256])},{SHA[i % 256]},true,{TS}\n".encode()


def tae_list_sha(count: int) -> str:
    sha = hashlib.sha256()
    for line in tae_list_lines(count):
        sha.update(line)
    return sha.hexdigest()


# ---- the stand-in S3 (runs inside the measured process) ------------------------------------------------

class _ListReader(io.RawIOBase):
    """tae_list of `count` objects, generated as it is read."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.lines, self.buffer = tae_list_lines(count), b""

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        while len(self.buffer) < len(out):
            more = b"".join(line for _, line in zip(range(4096), self.lines, strict=False))
            if not more:
                break
            self.buffer += more
        n = min(len(out), len(self.buffer))
        out[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        return n


class StandInBucket:
    """The S3Backend methods the online path of S3-resident data calls. Under the staging prefix it
    serves the staged copy of `count` objects; anywhere else it lists nothing and takes writes and
    deletes, counted, not kept."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix, self.count = prefix, count
        self.location = f"s3://standin/{prefix}"
        self.staged = prefix.endswith(STAGING_NAME)
        self.written = self.deleted = 0

    def _staged_key(self, key: str) -> bytes:
        from mobackup.engine.storage import ObjectNotFound

        if self.staged:
            if key == "tae/tae_sum":
                return SUM
            if key == "tae/tae_list":
                return b"".join(tae_list_lines(self.count))
            if key == "hakeeper/hk_data":
                return HK
            if key.startswith("tae/") and 0 <= (i := index_of(key)) < self.count and key == f"tae/{name(i)}":
                return CONTENTS[i % 256]
        raise ObjectNotFound(f"{self.location}/{key}: missing")

    def read(self, key: str) -> bytes:
        return self._staged_key(key)

    def open_read(self, key: str) -> Any:
        if self.staged and key == "tae/tae_list":
            return io.BufferedReader(_ListReader(self.count), 1 << 20)
        return io.BytesIO(self._staged_key(key))

    def list(self, prefix: str) -> Iterator[Any]:
        from mobackup.engine.storage import ObjectInfo

        if prefix == f"{STAGING_NAME}/":  # the staging root, as remove_staging lists it
            for key in ("hakeeper/hk_data", "tae/tae_list", "tae/tae_sum"):
                yield ObjectInfo(f"{STAGING_NAME}/{key}", 1, 0.0)
            for i in range(self.count):
                yield ObjectInfo(f"{STAGING_NAME}/tae/{name(i)}", 8, 0.0)

    def write(self, key: str, data: Any, retain: Any = None) -> None:
        self.written += 1

    def delete(self, keys: Any) -> int:
        for _ in keys:
            self.deleted += 1
        return self.deleted

    def exists(self, key: str) -> bool:
        return False

    def size(self, key: str) -> int | None:
        return None


def standin_step(args: argparse.Namespace) -> int:
    """One step of the engine on PYTHONPATH, in this process, against the stand-in S3."""
    from mobackup.engine import online_s3, s3_restore
    from mobackup.engine.repository import Repository, RepositoryOptions

    try:
        from mobackup.engine import online_s3_sharded as sharded
    except ImportError:  # an engine from before the sharded steps had a module of their own
        sharded = online_s3
    count = args.count

    def backend(self: Any, connections: int = 16) -> StandInBucket:
        return StandInBucket(self.prefix, count)

    online_s3.S3Place.backend = backend  # type: ignore[method-assign]
    repo = Repository.open(RepositoryOptions(args.repo))
    root = online_s3.S3Place("standin", "staging", None, "us-east-1", True)
    if args.step == "ingest":
        totals = sharded.ingest_shard(repo, args.run, root, 0, 1)
        assert totals.files == count + 1, totals
    elif args.step == "commit":
        summary = sharded.commit_run(repo, args.run, root, 1)
        assert summary.file_count == count + 1, summary.file_count
    else:
        result = s3_restore.restore_to_s3(repo, args.run, online_s3.S3Place("standin", f"restored-{count}", None,
                                                                           "us-east-1", True))
        assert result.file_count == count, result.file_count
    return 0


# ---- the real S3 server --------------------------------------------------------------------------------

def stage_s3(s3: Any, root: str, count: int, workers: int = 32) -> float:
    """The staged prefix under `root` on the S3 server; returns the seconds it took."""
    clock = time.monotonic()
    client = s3.client()
    prefix = f"{root}/{STAGING_NAME}"

    def put(start: int) -> None:
        for i in range(start, min(count, start + 1000)):
            client.put_object(Bucket=s3.bucket, Key=f"{prefix}/tae/{name(i)}", Body=CONTENTS[i % 256])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(0, count, 1000)))
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/tae/tae_list", Body=b"".join(tae_list_lines(count)))
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/tae/tae_sum", Body=SUM)
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/hakeeper/hk_data", Body=HK)
    return time.monotonic() - clock


def count_under(s3: Any, prefix: str) -> int:
    paginator = s3.client().get_paginator("list_objects_v2")
    return sum(len(page.get("Contents", [])) for page in paginator.paginate(Bucket=s3.bucket, Prefix=f"{prefix}/"))


# ---- the driver ----------------------------------------------------------------------------------------

def write_run(repo_dir: Path, run_id: str, staging_url: str, count: int, pinned: bool) -> None:
    from mobackup.engine.online_s3 import HK_DATA, RunInfo
    from mobackup.engine.online_s3_sharded import _run_key, _write_meta
    from mobackup.engine.repository import Repository, RepositoryOptions

    repo = Repository.open(RepositoryOptions(str(repo_dir)))
    common = dict(run_id=run_id, source="memscale", staging_url=staging_url, backup_ts=TS, base_id=None,
                  started_at="2026-12-02T12:00:00.000Z", mo_version=None, matrixone_backup_seconds=0.0,
                  staged_files=count, staged_bytes=8 * count)
    if pinned:
        run = RunInfo(**common, inherit=[], tae_list_sha256=tae_list_sha(count))
    else:
        run = RunInfo(**common, inherit=[], staged_paths=sorted([*(f"shared/{name(i)}" for i in range(count)),
                                                                 HK_DATA]))
    _write_meta(repo, _run_key(run_id, "run.json"), run.to_dict())


def reads_pinned_runs(engine: Path) -> bool:
    return "tae_list_sha256" in (engine / "mobackup" / "engine" / "online_s3.py").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("s3", "standin"), default="standin")
    parser.add_argument("--counts", default="1000,100000")
    parser.add_argument("--engine", action="append", default=[], help="NAME=DIR of an operator/ directory")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--step", choices=("ingest", "commit", "restore"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return standin_step(args)

    sys.path.insert(0, str(ROOT / "operator"))
    sys.path.insert(0, str(ROOT / "tests"))
    from mobackup.engine.repository import Repository, RepositoryOptions

    engines = {n: Path(d).resolve() for n, d in (e.split("=", 1) for e in args.engine)} or \
        {"after": ROOT / "operator"}
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="mobackup-s3mem-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results: dict[str, Any] = {"mode": args.mode, "started": stamp, "engines": {n: str(d) for n, d in engines.items()},
                               "uptime": measure.output_of(["uptime"]), "rows": []}
    out = ROOT / "benchmarks" / "results" / f"online-s3-memscale-{stamp}.json"
    s3 = None
    if args.mode == "s3":
        from cluster.s3 import start_s3

        s3 = start_s3(work / "s3")
    try:
        for turn, count in enumerate(counts):
            row: dict[str, Any] = {"objects": count, "load_before": os.getloadavg()[0]}
            order = list(engines)
            order = order[turn % len(order):] + order[:turn % len(order)]
            staging_root = f"staging-{count}"
            if s3 is not None:
                row["stage_s"] = round(stage_s3(s3, staging_root, count), 1)
                print(f"[s3mem] {count} objects staged in {row['stage_s']} s", flush=True)
            bucket = s3.bucket if s3 is not None else "standin"
            url = f"s3://{bucket}/{staging_root}" if s3 is not None else "s3://standin/staging"
            setups: dict[str, tuple[dict[str, str], Path, str]] = {}
            for engine in order:
                env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
                       "PYTHONPATH": str(engines[engine]), **(s3.env() if s3 is not None else {})}
                repo_dir = work / f"repo-{engine}-{count}"
                shutil.rmtree(repo_dir, ignore_errors=True)
                Repository.create(RepositoryOptions(str(repo_dir)))
                run_id = f"memscale{engine}{count}"
                pinned = reads_pinned_runs(engines[engine])
                write_run(repo_dir, run_id, f"{url}/{STAGING_NAME}", count, pinned)
                setups[engine] = env, repo_dir, run_id
                row[engine] = {"run_record": "pinned" if pinned else "listed"}
            # Step by step, every engine in turn: a commit removes the staging (with S3, the engines
            # share one), and one of a pinned run reads its tae_list again, so those commit first.
            for step in ("ingest", "commit", "restore"):
                turn_order = sorted(order, key=lambda e: row[e]["run_record"] != "pinned") if step == "commit" \
                    else order
                for engine in turn_order:
                    env, repo_dir, run_id = setups[engine]
                    if s3 is not None:
                        cli = [str(PYTHON), "-m", "mobackup.cli"]
                        cmd = {"ingest": [*cli, "backup", "--online", "--repo", str(repo_dir), "--staging", url,
                                          "--run", run_id, "--shard", "0/1", "--quiet"],
                               "commit": [*cli, "commit", run_id, "--shards", "1", "--repo", str(repo_dir),
                                          "--staging", url, "--quiet"],
                               "restore": [*cli, "restore", run_id, "--repo", str(repo_dir), "--target-s3",
                                           f"s3://{bucket}/restored-{engine}-{count}", "--quiet"]}[step]
                    else:
                        cmd = [str(PYTHON), __file__, "--step", step, "--count", str(count), "--repo", str(repo_dir),
                               "--run", run_id]
                    row[engine][step] = measure.run(cmd, env=env, cold=False, log=log)
                    print(f"[s3mem] {count} objects, {engine}: {step} {row[engine][step]['wall_s']} s, "
                          f"{row[engine][step]['peak_rss_mb']} MB", flush=True)
            for engine in order:
                if s3 is not None:
                    restored = count_under(s3, f"restored-{engine}-{count}")
                    if restored != count:
                        raise RuntimeError(f"{engine}: restored {restored} of {count} objects")
                    row[engine]["restored_objects"] = restored
                shutil.rmtree(setups[engine][1], ignore_errors=True)
            results["rows"].append(row)
            out.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if s3 is not None:
            s3.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[s3mem] results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
