"""A recovery point of one minute (issue 19): online incrementals every minute under a writer.

On the real mo-service (v1.3.0-dev), with a cluster PITR (so each online backup also takes the
history, engine/pitr_history.py): a base table, then a Writer committing numbered 100-row
transactions without pause for the whole run. Phases alternate, `--phase-minutes` each: without
backups, then with `mobackup backup --online --type incremental` started at every whole minute (the
cadence of a `@every 1m` schedule; each run is a fresh process, as a schedule's Job is), and so on
for `--rounds` pairs. Measured:
- the writer's throughput (transactions per second) in each kind of phase, and the ratio (goal:
  the backups cost it at most 5 %), plus its longest commit pause;
- the largest gap between consecutive BACKUPTS (goal: at most 60 s + one backup's duration), and
  each backup's duration and size added;
- repository growth per hour of backups;
- the newest backup restored and started: how many of the writer's transactions it lost (those
  that returned before its BACKUPTS must all be back: its loss is at most the gap).

    .venv/bin/python benchmarks/rpo_bench.py [--phase-minutes 4] [--rounds 2] [--out benchmarks/results]

The schedule's own start latency (operator, Job start) is not in this measurement: a Job adds its
pod start (seconds on a real node) to each gap.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from mo_server import DEFAULT_VERSION, TXN_ROWS, MatrixOne, Writer, create_db, install, writer_rows  # noqa: E402

MOBACKUP = REPO_ROOT / ".venv" / "bin" / "mobackup"
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
       "MOBACKUP_SQL_PASSWORD": "111"}


def mobackup(*args: str | Path) -> dict[str, Any]:
    out = subprocess.run([str(MOBACKUP), *map(str, args), "--json", "--quiet"], env=ENV, capture_output=True,
                         text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"mobackup {args[0]} failed: {out.stderr}")
    return json.loads(out.stdout)


def hlc_seconds(backup_ts: str) -> float:
    return int(backup_ts.split("-")[0]) / 1e9


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Backups:
    """Online incrementals at every whole minute until stopped."""

    def __init__(self, mo: MatrixOne, repo: Path) -> None:
        self.mo, self.repo = mo, repo
        self.runs: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._stop.wait(60 - time.time() % 60):  # the next whole minute, as a schedule fires
                return
            began = time.time()
            try:
                summary = mobackup("backup", "--online", "--sql-host", "127.0.0.1", "--sql-port", self.mo.port,
                                   "--data-dir", self.mo.data_dir,
                                   "--repo", self.repo, "--source", "rpo", "--type", "incremental")
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                self.errors.append(str(error)[:400])
                continue
            self.runs.append({"began": began, "seconds": round(time.time() - began, 2), "id": summary["id"],
                              "backup_ts": summary["backup_ts"], "new_bytes": summary["new_bytes"],
                              "history": summary["extra"]["pitr"].get("history_added")})

    def start(self) -> Backups:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-minutes", type=float, default=4.0, help="at least 3: backups start at whole minutes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the base table")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    home = install(DEFAULT_VERSION)
    result: dict[str, Any] = {"phase_minutes": args.phase_minutes, "rounds": args.rounds, "rows": args.rows,
                              "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="rpo-bench-") as work_dir:
        work = Path(work_dir)
        # In a network namespace of its own (SQL through a socket forwarder): the fixed ports and the
        # machine's MatrixOne lock stay free for test runs, so the long measurement blocks nothing.
        mo = MatrixOne(home, work / "mo", DEFAULT_VERSION, isolated=True)
        repo = work / "repo"
        mo.start()
        try:
            mo.sql("create pitr rpo for cluster range 1 'd'")
            create_db(mo, "db1", args.rows)
            mo.sql("create database w", "create table w.t (id bigint primary key, txn int)")
            mobackup("backup", "--online", "--sql-host", "127.0.0.1", "--sql-port", mo.port, "--data-dir", mo.data_dir,
                     "--repo", repo, "--source", "rpo", "--type", "full")
            base_bytes = du(repo)
            writer = Writer(port=mo.port).start()
            phases: list[dict[str, Any]] = []
            backups: Backups | None = None
            try:
                for _ in range(args.rounds):
                    for with_backups in (False, True):
                        backups = Backups(mo, repo).start() if with_backups else None
                        first, clock = writer.committed, time.monotonic()
                        time.sleep(args.phase_minutes * 60)
                        phases.append({"backups": with_backups, "tps": (writer.committed - first) /
                                       (time.monotonic() - clock), "load_1m_at_end": os.getloadavg()[0]})
                        if backups:
                            backups.stop()
                            result.setdefault("backup_runs", []).extend(backups.runs)
                            result.setdefault("backup_errors", []).extend(backups.errors)
                            backups = None
                        print(json.dumps(phases[-1]), flush=True)
            finally:
                if backups:
                    backups.stop()
                writer.stop()
            log = writer.log
        finally:
            mo.stop()
        runs = result.get("backup_runs", [])
        tps_without = sum(p["tps"] for p in phases if not p["backups"]) / args.rounds
        tps_with = sum(p["tps"] for p in phases if p["backups"]) / args.rounds
        result.update(writer_tps_without=round(tps_without, 2), writer_tps_with=round(tps_with, 2),
                      writer_ratio=round(tps_with / tps_without, 4),
                      writer_longest_pause=round(writer.longest_pause, 3), writer_errors=writer.errors, phases=phases)
        # Gaps only inside a phase with backups (phases without them are the control, not a gap).
        gaps = [hlc_seconds(b["backup_ts"]) - hlc_seconds(a["backup_ts"]) for a, b in itertools.pairwise(runs)
                if b["began"] - a["began"] < 90]
        hours = len(runs) / 60
        result.update(backups=len(runs), largest_gap_seconds=round(max(gaps), 2) if gaps else None,
                      longest_backup_seconds=max((r["seconds"] for r in runs), default=None),
                      median_backup_seconds=sorted(r["seconds"] for r in runs)[len(runs) // 2] if runs else None,
                      repo_growth_bytes_per_hour=round((du(repo) - base_bytes) / hours) if hours else None)
        if runs:  # the newest backup, restored: the writer's transactions it must hold, and what it lost
            newest = runs[-1]
            restored = MatrixOne(home, work / "restored", DEFAULT_VERSION, isolated=True)
            mobackup("restore", newest["id"], "--repo", repo, "--target", restored.data_dir)
            ts = datetime.fromtimestamp(hlc_seconds(newest["backup_ts"]), UTC)
            returned_before = sum(1 for _, _, ended in log if ended < ts)
            restored.start()
            try:
                count, max_id, txns = writer_rows(restored)
            finally:
                restored.stop()
            last_commit = log[-1][2]
            result["newest_restore"] = {
                "exact_prefix": count == max_id + 1 == txns * TXN_ROWS, "transactions": txns,
                "returned_before_backup_ts": returned_before, "all_back": txns >= returned_before,
                "lost_seconds_to_writer_end": round((last_commit - ts).total_seconds(), 2)}
    result["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"rpo-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("backup_runs", "phases")}, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
