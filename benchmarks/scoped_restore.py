"""Scoped restores (`mobackup restore ID --only DB.TABLE --into-sql-host ...`) on the real MatrixOne,
side by side with MatrixOne's own LOAD DATA of the same rows from a local file.

    PYTHONPATH=operator .venv/bin/python benchmarks/scoped_restore.py [--rows 1000000] [--out benchmarks/results]

Starts the real mo-service (DEFAULT_VERSION) in a network namespace of its own (tests/mo_server.py,
`isolated=True`: reached through a loopback port forwarded to its Unix socket, so it runs beside any
other MatrixOne), writes table shop.b of `--rows` rows (composite primary key, a secondary index,
NULLs, decimals, JSON, blobs), takes an online backup, then for each `--copy-method`, once alone
(`scoped`, the side-by-side figure) and once with a writer committing 100-row transactions into w.t
(`scoped_beside_writer`):
- the scoped restore of shop.b into the same server under a new name: scratch restore, scratch
  start-up, rows copied (rows/s, MB/s of INSERT or LOAD bytes), the live copy's count and checksum;
- the writer's commit latency (p50, p99) and longest pause during it;
- MatrixOne's own `LOAD DATA INFILE` of the same rows (written by `SELECT ... INTO OUTFILE`) into an
  empty table of the same schema, and `LOAD DATA LOCAL INFILE` of that file through the client.
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

from mo_server import DEFAULT_VERSION, MatrixOne, Writer, connect, install  # noqa: E402

MOBACKUP = REPO_ROOT / ".venv" / "bin" / "mobackup"
B_DDL = """create table shop.b (
  region varchar(16) not null, id bigint not null, amount decimal(18,4) default null comment 'money',
  note varchar(64) default 'none', doc json, payload blob, ratio double, created datetime(6),
  primary key (region, id), key by_amount (amount)) comment 'table B'"""


def fill(mo: MatrixOne, rows: int, batch: int = 200_000) -> None:
    for first in range(1, rows + 1, batch):
        last = min(first + batch - 1, rows)
        mo.sql(f"""insert into shop.b select case result % 3 when 0 then 'eu' when 1 then 'us' else 'ap' end, result,
          case when result % 7 = 0 then null else result * 1.2345 end,
          case when result % 5 = 0 then null else concat('n-', result) end,
          case when result % 4 = 0 then null else concat('{{"i": ', result, ', "tags": ["a", "b"]}}') end,
          case when result % 6 = 0 then null else cast(concat('blob-', md5(result)) as blob) end,
          result / 7.0, date_add('2024-01-01 00:00:00', interval result second)
          from generate_series({first}, {last}) g""")


def writer_stats(writer: Writer) -> dict[str, Any]:
    """The live writer's 100-row commits during the copy: latency p50/p99 and the longest pause."""
    latencies = sorted((end - began).total_seconds() for _, began, end in writer.log)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else 0.0

    return {"errors": writer.errors, "transactions": writer.committed, "commit_p50_seconds": pct(0.5),
            "commit_p99_seconds": pct(0.99), "longest_pause_seconds": round(writer.longest_pause, 3)}


def mobackup(*args: str | Path) -> dict[str, Any]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
           "MOBACKUP_SQL_PASSWORD": "111", "MOBACKUP_INTO_SQL_PASSWORD": "111"}
    out = subprocess.run([str(MOBACKUP), *map(str, args), "--json", "--quiet"], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"mobackup {args[0]} failed: {out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--insert-connections", type=int, default=1)
    parser.add_argument("--copy-method", nargs="+", default=["insert"], choices=("insert", "load"),
                        help="copy the table once with each (side by side, one scratch server each)")
    args = parser.parse_args()
    home = install(DEFAULT_VERSION)
    work = Path(tempfile.mkdtemp(prefix="mobackup-scoped-bench-"))
    (work / "mo").mkdir()
    mo = MatrixOne(home, work / "mo", DEFAULT_VERSION, isolated=True)
    out: dict[str, Any] = {"rows": args.rows, "server": DEFAULT_VERSION, "insert_connections": args.insert_connections,
                           "copy_methods": args.copy_method}
    try:
        out["live_start_seconds"] = round(mo.start(), 2)
        mo.sql("create database shop", B_DDL, "create database w",
               "create table w.t (id bigint primary key, txn int)")
        started = time.monotonic()
        fill(mo, args.rows)
        out["fill_seconds"] = round(time.monotonic() - started, 2)
        mo.checkpoint()
        started = time.monotonic()
        backup = mobackup("backup", "--online", "--sql-host", "127.0.0.1", "--sql-port", str(mo.port),
                          "--data-dir", mo.data_dir, "--repo", work / "repo")
        out["backup_seconds"] = round(time.monotonic() - started, 2)
        out["backup_bytes"] = backup["size_bytes"]
        for method in args.copy_method:
            # Twice: alone (side by side with LOAD DATA, which runs alone), then beside the writer.
            for beside in (False, True):
                mo.sql("delete from w.t")  # the writer numbers its rows from 0 again
                writer = Writer(port=mo.port).start() if beside else None
                try:
                    result = mobackup("restore", backup["id"], "--repo", work / "repo", "--only", "shop.b",
                                      "--into-sql-host", "127.0.0.1", "--into-sql-port", str(mo.port),
                                      "--mo-service", home / "mo-service", "--scratch-dir", work,
                                      "--insert-connections", str(args.insert_connections), "--copy-method", method,
                                      "--suffix", f"_scoped_{method}{'_w' if beside else ''}")
                finally:
                    if writer is not None:
                        writer.stop()
                key = ("scoped" if method == args.copy_method[0] else f"scoped_{method}") + \
                    ("_beside_writer" if beside else "")
                out[key] = {k: result[k] for k in ("restore_seconds", "start_seconds", "copy_seconds",
                                                    "total_seconds", "scratch_bytes")}
                out[key]["method"] = method
                out[key]["table"] = result["tables"][0]
                if writer is not None:
                    out[key]["writer"] = writer_stats(writer)
                mo.sql(f"drop table shop.b_scoped_{method}{'_w' if beside else ''}")
        out["writer"] = out["scoped_beside_writer"]["writer"]
        csv = work / "b.csv"
        mo.sql(f"select * from shop.b into outfile '{csv}'")
        out["csv_bytes"] = csv.stat().st_size
        for mode in ("infile", "local infile"):
            name = "b_load" if mode == "infile" else "b_local"
            mo.sql(B_DDL.replace("shop.b (", f"shop.{name} (", 1))
            started = time.monotonic()
            with connect(port=mo.port, local_infile=True) as conn, conn.cursor() as cur:
                cur.execute(f"load data {mode} '{csv}' into table shop.{name} fields terminated by ',' "
                            "enclosed by '\"' lines terminated by '\\n' ignore 1 lines")
            seconds = time.monotonic() - started
            loaded = mo.sql(f"select count(*) from shop.{name}")[0][0]
            out[f"load_data_{mode.replace(' ', '_')}"] = {
                "seconds": round(seconds, 2), "rows": int(loaded), "rows_per_second": round(loaded / seconds, 1),
                "mb_per_second": round(out["csv_bytes"] / 1e6 / seconds, 2)}
        for method in args.copy_method:
            key = "scoped" if method == args.copy_method[0] else f"scoped_{method}"
            table = out[key]["table"]
            out[f"copy_vs_load_data_{method}"] = round(table["rows_seconds"] / out["load_data_infile"]["seconds"], 2)
            out[f"copy_and_check_vs_load_data_{method}"] = round(
                (table["rows_seconds"] + table["check_seconds"]) / out["load_data_infile"]["seconds"], 2)
    finally:
        mo.stop()
        if mo.forwarder is not None:
            mo.forwarder.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / time.strftime("scoped-restore-%Y%m%d-%H%M%S.json", time.gmtime())).write_text(
        json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
