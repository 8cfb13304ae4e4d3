"""Restore drills (`mobackup drill`) of a larger database on the real MatrixOne: how long a drill
takes (restore, start, checks) and how much scratch space it needs.

    .venv/bin/python benchmarks/drill_bench.py [--rows 4000000] [--out benchmarks/results]

Starts mo-service (the suite's DEFAULT_VERSION, built by tests/matrixone/build) in a scratch
directory, writes `--rows` rows of incompressible text (about 360 bytes a row on disk, as
benchmarks/online.py), takes an online backup (its catalog counts every table at BACKUPTS) and a
cold one (MatrixOne stopped), then drills both into scratch directories with a user check. Holds the
machine's MatrixOne lock throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from online import du, fill  # noqa: E402

from mo_server import DEFAULT_VERSION, MatrixOne, ServerLock, install, wait_ports_free  # noqa: E402

MOBACKUP = REPO_ROOT / ".venv" / "bin" / "mobackup"


def mobackup(*args: Any, check: bool = True) -> dict[str, Any]:
    env = {**os.environ, "MOBACKUP_SQL_PASSWORD": "111"}
    out = subprocess.run([str(MOBACKUP), *map(str, args), "--json", "--quiet"], env=env, capture_output=True,
                         text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"mobackup {args[0]}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = p.parse_args()
    home = install(DEFAULT_VERSION)
    with tempfile.TemporaryDirectory(prefix="mobackup-drill-bench-") as tmp:
        work = Path(tmp)
        mo = MatrixOne(home, work / "mo", DEFAULT_VERSION)
        mo.start()
        try:
            mo.sql("create database big", "create table big.t (id bigint primary key, v varchar(400))")
            clock = time.monotonic()
            fill(mo, args.rows)
            fill_seconds = time.monotonic() - clock
            online = mobackup("backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                              "--data-dir", mo.data_dir, "--repo", work / "repo", "--source", "big")
        finally:
            mo.stop()  # releases the lock; the drills take it again below
        cold = mobackup("backup", "--data-dir", mo.data_dir, "--repo", work / "repo", "--source", "big-cold")
        data_bytes = du(mo.data_dir)
        results: dict[str, Any] = {"rows": args.rows, "fill_seconds": round(fill_seconds, 1),
                                   "data_dir_bytes": data_bytes, "online_backup_bytes": online["size_bytes"],
                                   "cold_backup_bytes": cold["size_bytes"]}
        lock = ServerLock()
        lock.acquire()
        try:
            for kind, backup in (("online", online), ("cold", cold)):
                wait_ports_free()
                drill = mobackup("drill", backup["id"], "--repo", work / "repo", "--mo-service", home / "mo-service",
                                 "--scratch-dir", work, "--timeout", "900",
                                 "--check-sql", "select count(*) from big.t", "--expect", str(args.rows))
                results[kind] = {k: drill[k] for k in ("ok", "restore_seconds", "start_seconds", "check_seconds",
                                                       "total_seconds", "restored_bytes", "scratch_bytes",
                                                       "mo_version")}
                results[kind]["checks"] = len(drill["checks"])
                print(f"{kind}: {json.dumps(results[kind])}", flush=True)
        finally:
            lock.release()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"drill-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
