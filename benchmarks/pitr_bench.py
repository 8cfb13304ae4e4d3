"""Point-in-time recovery on the real MatrixOne (issue 19's numbers): what a PITR window costs in
backup size, and how long `restore --to-time` takes against a plain restore of the same backup.

Twice, from a fresh server whose disk cleaner runs every 2 s and may collect garbage older than 20 s
(so that, within minutes, garbage is collected where no PITR keeps it): load a table, then churn it
(rounds of deletes, inserts and checkpoints, a global checkpoint), wait for the cleaner, stop, and
take a cold backup of the whole data directory. Once with a cluster PITR of one day created before
the load, once without. For the run with the window, restore the backup plainly and to an instant
between the load and the churn, timing both, and check the restored row count. With a window, two
online backups of the same state are taken before the stop, of BACKUP's output alone and with the
history it lacks (engine/pitr_history.py), and the one with history is restored to the instant too.

    .venv/bin/python benchmarks/pitr_bench.py [--rows 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from mo_server import AGGRESSIVE_GC, DEFAULT_VERSION, MatrixOne, install  # noqa: E402

MOBACKUP = REPO_ROOT / ".venv" / "bin" / "mobackup"
def mobackup(*args: str | Path) -> tuple[float, dict[str, Any]]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
           "MOBACKUP_SQL_PASSWORD": "111"}
    start = time.monotonic()
    out = subprocess.run([str(MOBACKUP), *map(str, args), "--json", "--quiet"], env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(f"mobackup {args[0]} failed: {out.stderr}")
    return time.monotonic() - start, json.loads(out.stdout)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def scenario(work: Path, rows: int, rounds: int, window: bool, aggressive_gc: bool, gc_wait: float) -> dict[str, Any]:
    home = install(DEFAULT_VERSION)
    mo = MatrixOne(home, work / "mo", DEFAULT_VERSION)
    if aggressive_gc:
        tn = mo.workdir / "etc" / "launch" / "tn.toml"
        tn.write_text(tn.read_text() + AGGRESSIVE_GC)
    mo.start()
    out: dict[str, Any] = {"window": "1d" if window else None, "aggressive_gc": aggressive_gc, "rows": rows,
                           "rounds": rounds, "gc_wait_seconds": gc_wait}
    try:
        if window:
            mo.sql("create pitr bench for cluster range 1 'd'")
        mo.sql("create database big", "create table big.t (id bigint primary key, v varchar(400))")
        mo.sql(f"insert into big.t select result, concat(md5(result), md5(result + 1), md5(result + 2)) "
               f"from generate_series(0, {rows - 1}) g")
        mo.checkpoint()
        time.sleep(3)
        out["instant"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        out["rows_at_instant"] = rows
        time.sleep(2)
        for i in range(rounds):  # each round rewrites a tenth of the table
            mo.sql(f"delete from big.t where id % 10 = {i % 10}",
                   f"insert into big.t select result, concat(md5(result), 'churn') from generate_series("
                   f"{rows * (i + 1)}, {rows * (i + 1) + rows // 10 - 1}) g")
            mo.checkpoint()
            time.sleep(2)
        mo.sql("select mo_ctl('dn','globalcheckpoint','')")
        out["data_dir_bytes_after_churn"] = du(mo.data_dir)
        time.sleep(gc_wait)  # the cleaner collects what no PITR keeps (the 1.3 line starts after a minute or more)
        mo.checkpoint()
        out["rows_at_end"] = int(mo.sql("select count(*) from big.t")[0][0])
        if window:  # online, of the same state: BACKUP's output alone, then with the history it lacks
            for name, flags in (("online_without_history", ["--without-pitr-history"]), ("online_with_history", [])):
                seconds, summary = mobackup("backup", "--online", "--sql-host", "127.0.0.1", "--data-dir",
                                            mo.data_dir, "--repo", work / name, "--source", "bench", *flags)
                out[name] = {"seconds": round(seconds, 2), "bytes": summary["size_bytes"],
                             "files": summary["file_count"], "id": summary["id"],
                             "history_added": summary["extra"]["pitr"].get("history_added")}
    finally:
        mo.stop()
    out["data_dir_bytes"] = du(mo.data_dir)
    repo = work / "repo"
    seconds, summary = mobackup("backup", "--data-dir", mo.data_dir, "--repo", repo, "--source", "bench")
    out["backup_seconds"], out["backup_bytes"], out["backup_files"] = round(seconds, 2), summary["size_bytes"], \
        summary["file_count"]
    if window:
        seconds, _ = mobackup("restore", summary["id"], "--repo", repo, "--target", work / "plain" / "mo-data")
        out["plain_restore_seconds"] = round(seconds, 2)
        target = work / "pitr" / "mo-data"
        target.parent.mkdir()
        (work / "pitr-online").mkdir()
        mo.lock.acquire()
        try:
            seconds, result = mobackup("restore", summary["id"], "--repo", repo, "--target", target, "--mo-service",
                                       home / "mo-service", "--to-time", out["instant"], "--check-sql",
                                       "select count(*) from big.t", "--expect", str(rows))
            out["to_time_restore_seconds"] = round(seconds, 2)
            out["to_time_result"] = result
        except RuntimeError as error:  # recorded: seen with the forced cleaner (see benchmarks/README.md)
            out["to_time_error"] = str(error)[:400]
        finally:
            mo.lock.release()
        mo.lock.acquire()
        try:  # the online backup that took the history, to the same instant
            seconds, result = mobackup("restore", out["online_with_history"]["id"], "--repo",
                                       work / "online_with_history", "--target", work / "pitr-online" / "mo-data",
                                       "--mo-service", home / "mo-service", "--to-time", out["instant"],
                                       "--check-sql", "select count(*) from big.t", "--expect", str(rows))
            out["online_to_time_restore_seconds"] = round(seconds, 2)
        except RuntimeError as error:
            out["online_to_time_error"] = str(error)[:400]
        finally:
            mo.lock.release()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gc-wait", type=float, default=120.0, help="seconds the forced cleaner gets after the churn")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results = []
    # Sizes under a forced cleaner (with and without a window), then the restore timing with the stock
    # configuration (MatrixOne 1.3 did not restart on data kept by a PITR under the forced cleaner).
    for window, aggressive, wait in ((False, True, args.gc_wait), (True, True, args.gc_wait), (True, False, 5.0)):
        with tempfile.TemporaryDirectory(prefix="pitr-bench-") as work:
            results.append(scenario(Path(work), args.rows, args.rounds, window, aggressive, wait))
            print(json.dumps(results[-1], indent=2), flush=True)
    none, day, stock = results
    ratio = round(day["backup_bytes"] / none["backup_bytes"], 3)
    summary = {"runs": results, "backup_bytes_ratio_window_vs_none": ratio}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pitr-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"backup {none['backup_bytes']} B without a window, {day['backup_bytes']} B with 1 d "
          f"({ratio}x); restore {stock['plain_restore_seconds']} s plain, "
          f"{stock.get('to_time_restore_seconds')} s to a time; written to {path}")
    for run in (day, stock):
        plain, full = run["online_without_history"], run["online_with_history"]
        print(f"online ({'forced' if run['aggressive_gc'] else 'stock'} cleaner): {plain['bytes']} B in "
              f"{plain['seconds']} s without the history, {full['bytes']} B in {full['seconds']} s with it "
              f"({full['bytes'] / plain['bytes']:.2f}x); to a time from it: "
              f"{run.get('online_to_time_restore_seconds', run.get('online_to_time_error'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
