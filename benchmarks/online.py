"""Online backups against MatrixOne's own BACKUP, and against Stop mode's downtime, on the real server.

    .venv/bin/python benchmarks/online.py [--rows 4000000] [--reps 3] [--out benchmarks/results]

Starts the real mo-service (DEFAULT_VERSION, built by tests/matrixone/build) in a scratch directory,
writes a table of `--rows` rows of incompressible text (about 360 bytes a row on disk), then, with a
writer committing 100-row transactions the whole time:
- `BACKUP ... FILESYSTEM` into a directory alone (what mo_br does), wall time;
- `mobackup backup --online --type full` into a fresh directory repository (BACKUP + check + store),
  wall time, staging space, and the writer's longest pause;
- after a 5 % change, `mobackup backup --online` (incremental): wall time, staging space, new bytes;
- Stop mode's downtime for the same data: stop MatrixOne, `mobackup backup` (cold copy), start it
  again until SQL answers.
Medians of `--reps` runs; raw numbers and the ratios go to a JSON file in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from mo_server import DEFAULT_VERSION, MatrixOne, Writer, install  # noqa: E402

MOBACKUP = REPO_ROOT / ".venv" / "bin" / "mobackup"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mobackup(*args: str | Path) -> dict[str, Any]:
    env = {**os.environ, "MOBACKUP_SQL_PASSWORD": "111"}
    out = subprocess.run([str(MOBACKUP), *map(str, args), "--json", "--quiet"], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def fill(mo: MatrixOne, rows: int, first: int = 0, batch: int = 200_000) -> None:
    for start in range(first, first + rows, batch):
        n = min(batch, first + rows - start)
        mo.sql(f"insert into big.t select result, concat(md5(result), md5(result + 1), md5(result + 2), "
               f"md5(result + 3), md5(result + 4), md5(result + 5), md5(result + 6), md5(result + 7), "
               f"md5(result + 8), md5(result + 9)) from generate_series({start}, {start + n - 1}) g")
    mo.checkpoint()


def timed(fn: Any) -> tuple[float, Any]:
    start = time.monotonic()
    result = fn()
    return time.monotonic() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mobackup-online-bench-"))
    (work / "mo").mkdir()
    mo = MatrixOne(install(DEFAULT_VERSION), work / "mo", DEFAULT_VERSION)
    results: dict[str, Any] = {"rows": args.rows, "reps": args.reps, "runs": []}
    try:
        results["start_seconds"] = mo.start()
        mo.sql("create database big", "create table big.t (id bigint primary key, v varchar(400))",
               "create database w", "create table w.t (id bigint primary key, txn int)")
        fill_seconds, _ = timed(lambda: fill(mo, args.rows))
        results["fill_seconds"] = round(fill_seconds, 1)
        results["data_bytes"] = du(mo.data_dir / "shared")
        for rep in range(args.reps):
            run: dict[str, Any] = {}
            mo.sql("delete from w.t")  # the writer numbers its transactions from 0 again
            writer = Writer().start()
            try:
                target = work / f"native-{rep}"
                run["native_backup_s"], _ = timed(
                    lambda t=target: mo.sql(f"backup '0' filesystem '{t}' parallelism '4'"))
                run["native_bytes"] = du(target)
                shutil.rmtree(target)
                repo = work / f"repo-{rep}"
                run["online_full_s"], full = timed(lambda r=repo: mobackup(
                    "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root", "--type", "full",
                    "--data-dir", mo.data_dir, "--repo", r, "--source", "bench"))
                run["online_full_staged"] = full["extra"]["staged_bytes"]
                run["online_full_stored"] = full["stored_bytes"]
                run["writer_longest_pause_s"] = round(writer.longest_pause, 3)
                fill(mo, args.rows // 20, first=args.rows * (rep + 1) * 10)  # a 5 % change
                run["online_incr_s"], incr = timed(lambda r=repo: mobackup(
                    "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                    "--data-dir", mo.data_dir, "--repo", r, "--source", "bench"))
                run["online_incr_staged"] = incr["extra"]["staged_bytes"]
                run["online_incr_new"] = incr["new_bytes"]
                assert incr["type"] == "incremental"
            finally:
                writer.stop()
            run["writer_errors"] = len(writer.errors)
            cold_repo = work / f"cold-{rep}"

            def stop_mode(r: Path = cold_repo) -> None:
                mo.stop()
                mobackup("backup", "--data-dir", mo.data_dir, "--repo", r, "--source", "cold", "--type", "full")
                mo.start()

            run["stop_mode_downtime_s"], _ = timed(stop_mode)
            shutil.rmtree(repo)
            shutil.rmtree(cold_repo)
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        mo.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results["runs"]), 3)

    summary = {k: median(k) for k in results["runs"][0]}
    summary["online_vs_native"] = round(summary["online_full_s"] / summary["native_backup_s"], 2)
    summary["incremental_vs_full"] = round(summary["online_incr_s"] / summary["online_full_s"], 2)
    summary["incremental_staging_vs_full"] = round(summary["online_incr_staged"] / summary["online_full_staged"], 3)
    results["median"] = summary
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"online-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
