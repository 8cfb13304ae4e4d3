"""Online backups against MatrixOne's own BACKUP, side by side, on the real server (issue 22).

    .venv/bin/python benchmarks/online.py [--rows 4000000] [--reps 3] [--baseline DIR] [--stop-mode]
                                          [--out benchmarks/results]

Starts the real mo-service (DEFAULT_VERSION, built by tests/matrixone/build) in a scratch directory,
writes a table of `--rows` rows of incompressible text (about 110 bytes a row on disk on the 1.3
line), then, with a writer committing 100-row transactions the whole time, in every repetition (the
order of the tools rotates from one repetition to the next, so that they share the noise):
- full: `BACKUP ... FILESYSTEM` into a directory alone (what mo_br does) against `mobackup backup
  --online --type full` into a fresh directory repository (the whole command: start-up, connection,
  BACKUP, checks, store, publish), and against `--baseline` (another engine's `operator` directory,
  e.g. an older commit's, run the same way) when given;
- after a 5 % change: `BACKUP ... TYPE 'incremental' TIMESTAMP <the full's BACKUPTS>` alone against
  `mobackup backup --online` (incremental on that full);
- the writer's commit latency in each tool's window (p50, p99, longest pause between two commits)
  and in a window with no backup;
- with `--stop-mode`: Stop mode's downtime for the same data (stop, cold `mobackup backup`, start).
Medians of `--reps` runs; raw numbers and the ratios go to a JSON file in `--out`. The mobackup
measured is this checkout's (`operator/` first on PYTHONPATH), whatever the venv has installed.
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from mo_server import DEFAULT_VERSION, MatrixOne, Writer, install  # noqa: E402

PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


PROFILES: list[Path] = []  # with --profile: where the next mobackup command writes its cProfile stats


def mobackup(operator_dir: Path, *args: str | Path) -> dict[str, Any]:
    env = {**os.environ, "MOBACKUP_SQL_PASSWORD": "111", "PYTHONPATH": str(operator_dir)}
    profile = ["-m", "cProfile", "-o", str(PROFILES.pop(0))] if PROFILES else []
    out = subprocess.run([str(PYTHON), *profile, "-m", "mobackup.cli", *map(str, args), "--json", "--quiet"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def fill(mo: MatrixOne, rows: int, first: int = 0, batch: int = 200_000) -> None:
    for start in range(first, first + rows, batch):
        n = min(batch, first + rows - start)
        mo.sql(f"insert into big.t select result, concat(md5(result), md5(result + 1), md5(result + 2), "
               f"md5(result + 3), md5(result + 4), md5(result + 5), md5(result + 6), md5(result + 7), "
               f"md5(result + 8), md5(result + 9)) from generate_series({start}, {start + n - 1}) g")
    mo.checkpoint()


def durable(target: Path) -> float:
    """Seconds of a syncfs of `target`'s file system right after BACKUP returned: what BACKUP's own
    output still needed to be on disk (mobackup's time includes its own syncfs, at publishing)."""
    started = time.monotonic()
    subprocess.run(["sync", "-f", str(target)], check=True)
    return round(time.monotonic() - started, 3)


def writer_stats(writer: Writer, began: datetime, ended: datetime) -> dict[str, float]:
    """The writer's commits that returned in [began, ended]: p50/p99 of their duration, and the
    longest time between two returns (or from the window's start) overlapping the window."""
    log = list(writer.log)
    inside = [(b, r) for _, b, r in log if began <= r <= ended]
    durations = sorted((r - b).total_seconds() for b, r in inside)
    returns = [r for _, _, r in log]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(returns)
            if later >= began and earlier <= ended]
    if not durations:
        return {"commits": 0, "p50_s": 0.0, "p99_s": 0.0, "longest_pause_s": (ended - began).total_seconds()}
    return {"commits": len(durations), "p50_s": round(statistics.median(durations), 4),
            "p99_s": round(durations[min(len(durations) - 1, int(len(durations) * 0.99))], 4),
            "longest_pause_s": round(max(gaps, default=0.0), 4)}


def timed(writer: Writer, fn: Any) -> tuple[float, Any, dict[str, float]]:
    began, start = datetime.now(UTC), time.monotonic()
    result = fn()
    seconds = time.monotonic() - start
    time.sleep(0.3)  # the commits that were under way when it ended return
    return seconds, result, writer_stats(writer, began, began + (datetime.now(UTC) - began) - _SETTLE)


_SETTLE = datetime.fromtimestamp(0.3, UTC) - datetime.fromtimestamp(0, UTC)


def repetition(mo: MatrixOne, work: Path, engines: dict[str, Path], rep: int, rows: int,
               repo_parent: Path | None = None) -> tuple[dict[str, Any], Writer]:
    """One repetition: full (native, then each engine; the order rotates with `rep`), a 5 % change,
    incremental the same way; the writer commits throughout."""
    run: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    mo.sql("delete from w.t")  # the writer numbers its transactions from 0 again
    writer = Writer().start()
    repos = {name: (repo_parent or work) / f"repo-{name}-{rep}" for name in engines}
    try:
        _, _, run["writer_idle"] = timed(writer, lambda: time.sleep(2.0))

        def native_full(r: int = rep) -> None:
            target = work / f"native-{r}"
            run["native_full_s"], _, run["native_full_writer"] = timed(
                writer, lambda: mo.sql(f"backup '0' filesystem '{target}' parallelism '4'"))
            run["native_full_sync_s"] = durable(target)
            run["native_full_bytes"] = du(target)
            shutil.rmtree(target)

        def online_full(name: str) -> None:
            run[f"{name}_full_s"], full, run[f"{name}_full_writer"] = timed(writer, lambda: mobackup(
                engines[name], "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                "--type", "full", "--data-dir", mo.data_dir, "--repo", repos[name], "--source", "bench"))
            run[f"{name}_full_staged"] = full["extra"]["staged_bytes"]
            run[f"{name}_full_taken_early"] = full["extra"].get("taken_while_staging")
            run[f"{name}_full_taken"] = full["extra"].get("taken_files")
            run[f"{name}_full_files"] = full["extra"]["staged_files"]
            run[f"{name}_full_mo_backup_s"] = full["extra"]["matrixone_backup_seconds"]
            if "backup_statement_seconds" in full["extra"]:
                run[f"{name}_full_statement_s"] = full["extra"]["backup_statement_seconds"]
            run[f"{name}_full_backup_ts"] = full["backup_ts"]

        steps = [native_full, *(lambda n=name: online_full(n) for name in engines)]
        for step in steps[rep % len(steps):] + steps[:rep % len(steps)]:
            step()
        fill(mo, rows // 20, first=rows * (rep + 1) * 10)  # a 5 % change

        def native_incr(r: int = rep) -> None:
            target = work / f"native-incr-{r}"
            since = run["mobackup_full_backup_ts"]
            run["native_incr_s"], _, run["native_incr_writer"] = timed(writer, lambda: mo.sql(
                f"backup '0' filesystem '{target}' parallelism '4' type 'incremental' timestamp '{since}'"))
            run["native_incr_sync_s"] = durable(target)
            run["native_incr_bytes"] = du(target)
            shutil.rmtree(target)

        def online_incr(name: str) -> None:
            run[f"{name}_incr_s"], incr, run[f"{name}_incr_writer"] = timed(writer, lambda: mobackup(
                engines[name], "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                "--data-dir", mo.data_dir, "--repo", repos[name], "--source", "bench"))
            assert incr["type"] == "incremental"
            run[f"{name}_incr_staged"] = incr["extra"]["staged_bytes"]
            run[f"{name}_incr_new"] = incr["new_bytes"]

        steps = [native_incr, *(lambda n=name: online_incr(n) for name in engines)]
        for step in steps[rep % len(steps):] + steps[:rep % len(steps)]:
            step()
    finally:
        writer.stop()
        for repo in repos.values():
            shutil.rmtree(repo, ignore_errors=True)
    return run, writer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another engine's operator/ directory, measured beside")
    parser.add_argument("--stop-mode", action="store_true", help="also Stop mode's downtime")
    parser.add_argument("--profile", type=Path, help="after the repetitions, one full and one incremental of "
                        "this engine under cProfile, their stats written into this directory")
    parser.add_argument("--repo-parent", type=Path, help="where mobackup's repositories go (default: beside "
                        "MatrixOne's data, on its disk); e.g. /dev/shm, standing in for a backup volume of its own, "
                        "as BACKUP's target and the staged copy stay on MatrixOne's disk")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    engines = {"mobackup": REPO_ROOT / "operator"}
    if args.baseline:
        engines["baseline"] = args.baseline.absolute()
    for engine in engines.values():  # as an installed wheel has it (pip compiles on install)
        compileall.compile_dir(str(engine / "mobackup"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="mobackup-online-bench-"))
    (work / "mo").mkdir()
    mo = MatrixOne(install(DEFAULT_VERSION), work / "mo", DEFAULT_VERSION)
    results: dict[str, Any] = {"rows": args.rows, "reps": args.reps, "repo_parent": str(args.repo_parent or work),
                               "engines": {k: str(v) for k, v in engines.items()},
                               "runs": []}
    try:
        results["start_seconds"] = mo.start()
        mo.sql("create database big", "create table big.t (id bigint primary key, v varchar(400))",
               "create database w", "create table w.t (id bigint primary key, txn int)")
        fill_started = time.monotonic()
        fill(mo, args.rows)
        results["fill_seconds"] = round(time.monotonic() - fill_started, 1)
        results["data_bytes"] = du(mo.data_dir / "shared")
        for rep in range(args.reps):
            run, writer = repetition(mo, work, engines, rep, args.rows, args.repo_parent)
            run["writer_errors"] = len(writer.errors)
            run["load_after"] = os.getloadavg()[0]
            if args.stop_mode:
                cold_repo = work / f"cold-{rep}"
                started = time.monotonic()
                mo.stop()
                mobackup(engines["mobackup"], "backup", "--data-dir", mo.data_dir, "--repo", cold_repo,
                         "--source", "cold", "--type", "full")
                mo.start()
                run["stop_mode_downtime_s"] = round(time.monotonic() - started, 3)
                shutil.rmtree(cold_repo)
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            PROFILES.extend([args.profile / "online-full.prof", args.profile / "online-incremental.prof"])
            profiled = {"mobackup": engines["mobackup"]}
            run, writer = repetition(mo, work, profiled, args.reps, args.rows)
            writer.stop()
            results["profiled_run"] = run
    finally:
        mo.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(path: tuple[str, ...]) -> float:
        values = []
        for run in results["runs"]:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
        return round(statistics.median(values), 4)

    summary: dict[str, Any] = {}
    for key, value in results["runs"][0].items():
        if isinstance(value, dict):
            summary[key] = {k: median((key, k)) for k in value}
        elif isinstance(value, int | float) and not key.endswith("backup_ts"):
            summary[key] = median((key,))
    for name in engines:
        summary[f"{name}_full_vs_native"] = round(summary[f"{name}_full_s"] / summary["native_full_s"], 3)
        summary[f"{name}_incr_vs_native"] = round(summary[f"{name}_incr_s"] / summary["native_incr_s"], 3)
        # The ratio of each repetition's pair (same noise), then their median.
        summary[f"{name}_full_vs_native_paired"] = round(statistics.median(
            r[f"{name}_full_s"] / r["native_full_s"] for r in results["runs"]), 3)
        summary[f"{name}_incr_vs_native_paired"] = round(statistics.median(
            r[f"{name}_incr_s"] / r["native_incr_s"] for r in results["runs"]), 3)
        # Against BACKUP and then a syncfs of its output: both copies on disk when the time stops.
        for kind in ("full", "incr"):
            summary[f"{name}_{kind}_vs_native_durable_paired"] = round(statistics.median(
                r[f"{name}_{kind}_s"] / (r[f"native_{kind}_s"] + r[f"native_{kind}_sync_s"])
                for r in results["runs"]), 3)
    results["median"] = summary
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"online-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
