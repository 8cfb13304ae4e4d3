"""Probe (issue 19): what does a PITR restore need besides MatrixOne's BACKUP output?

On the real mo-service (v1.3.0-dev): a cluster PITR, data, a checkpoint; a writer of numbered 100-row
transactions; an instant T; an accident (UPDATE, DELETE, DROP TABLE); churn with checkpoints and a
global checkpoint. Then `mobackup backup --online`, and a copy of the live `shared/` directory taken
while the server still runs. The online backup is restored twice, and `RESTORE CLUSTER FROM PITR` to
T - 1 s is tried on each: as restored, and with the live objects that BACKUP's list left out added.

    .venv/bin/python benchmarks/pitr_online_probe.py WORKDIR

Seen on 2026-12-02 (two runs): as restored, `table "mo_account" does not exist`; with the 11 (10) live
files added (BACKUP's output already held every checkpoint meta), the restore was exact (checksums
as before the accident, the writer's 15 (12) transactions committed before the instant). Not yet what
`mobackup backup --online` does: see benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from mo_server import DEFAULT_VERSION, Incident, MatrixOne, checksums, install, writer_rows  # noqa: E402

MOBACKUP = str(REPO_ROOT / ".venv" / "bin" / "mobackup")
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOBACKUP_"))},
       "MOBACKUP_SQL_PASSWORD": "111"}


def main() -> int:
    base = Path(sys.argv[1])
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    home = install(DEFAULT_VERSION)
    source = MatrixOne(home, base / "source", DEFAULT_VERSION)
    source.start()
    try:
        source.sql("create pitr pc for cluster range 1 'd'")
        incident = Incident(source)
        out = subprocess.run([MOBACKUP, "backup", "--online", "--sql-host", "127.0.0.1", "--sql-user", "root",
                              "--data-dir", str(source.data_dir), "--repo", str(base / "repo"), "--json", "--quiet"],
                             env=ENV, capture_output=True, text=True, check=True)
        backup_id = json.loads(out.stdout)["id"]
        live = base / "live-shared"  # while the server runs, as an online backup would read it
        shutil.copytree(source.data_dir / "shared", live, dirs_exist_ok=True)
    finally:
        source.stop()
    at = incident.t - timedelta(seconds=1)
    instant, committed = at.strftime("%Y-%m-%d %H:%M:%S.%f"), incident.committed_before(at)
    for variant in ("online", "online+live-objects"):
        server = MatrixOne(home, base / variant, DEFAULT_VERSION)
        subprocess.run([MOBACKUP, "restore", backup_id, "--repo", str(base / "repo"), "--target",
                        str(server.data_dir), "--quiet"], env=ENV, check=True)
        added = 0
        if variant != "online":
            for path in live.rglob("*"):
                dest = server.data_dir / "shared" / path.relative_to(live)
                if path.is_file() and not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)
                    added += 1
        try:
            server.start()
            server.sql(f"restore cluster from pitr pc '{instant}'")
            exact = checksums(server, ["db1", "db2"]) == incident.before
            print(f"{variant} (+{added} files): PITR restore done; checksums as before the accident: {exact}; "
                  f"writer {writer_rows(server)}, committed before the instant: {committed}")
        except Exception as error:
            print(f"{variant} (+{added} files): {str(error)[:300]}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
