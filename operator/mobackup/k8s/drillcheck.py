"""The checker container of a MORestoreDrill pod: `python -m mobackup.k8s.drillcheck ...`.

It runs beside the scratch MatrixOne (same pod, so 127.0.0.1), waits until SQL answers, runs the
drill's checks (engine/drill.py: the server answers, the catalog the backup recorded, the user's
queries) and writes the outcome as JSON to its termination message, which the operator reads. The
repository is opened with the same environment as the restore container, for the backup's catalog.
Passwords come from the environment (MOBACKUP_SQL_PASSWORD), never from arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

MAX_MESSAGE = 3800  # the kubelet keeps 4096 bytes of a termination message


def compact(result: dict[str, Any]) -> str:
    """The result JSON within MAX_MESSAGE: passing row checks are summarised first, then details cut."""
    text = json.dumps(result, separators=(",", ":"), default=str)
    if len(text) <= MAX_MESSAGE:
        return text
    checks = result.get("checks") or []
    passed_rows = [c for c in checks if c.get("ok") and str(c.get("name", "")).startswith("rows ")]
    kept = [c for c in checks if c not in passed_rows]
    if passed_rows:
        kept.append({"name": "rows", "ok": True, "detail": f"{len(passed_rows)} table row count(s) as recorded"})
    result = {**result, "checks": kept}
    text = json.dumps(result, separators=(",", ":"), default=str)
    while len(text) > MAX_MESSAGE and result["checks"]:
        result["checks"] = result["checks"][:-1]
        result["truncated"] = True
        text = json.dumps(result, separators=(",", ":"), default=str)
    return text[:MAX_MESSAGE]


def main(argv: list[str] | None = None) -> int:
    from mobackup.engine.drill import DrillResult, UserCheck, run_checks, wait_for_sql
    from mobackup.engine.errors import MobackupError
    from mobackup.engine.repository import RepositoryOptions, open_repository

    p = argparse.ArgumentParser(prog="drillcheck")
    p.add_argument("--repo", required=True)
    p.add_argument("--backup-id", required=True)
    p.add_argument("--sql-port", type=int, default=6001)
    p.add_argument("--sql-user", default="root")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--checks", default="[]", help='JSON list of {"query": ..., "expect": ...}')
    p.add_argument("--termination-log", default="/dev/termination-log")
    args = p.parse_args(argv)
    clock = time.monotonic()
    deadline = clock + args.timeout
    result = DrillResult(args.backup_id)
    try:
        checks = [UserCheck(str(c["query"]), str(c["expect"])) for c in json.loads(args.checks)]
        repo = open_repository(RepositoryOptions.from_env(args.repo), create=False)
        summary = repo.load_summary(repo.resolve_id(args.backup_id))
        result.backup_kind = str(summary.extra.get("kind", "cold"))
        result.backup_ts, result.source = summary.backup_ts, summary.source
        password = os.environ.get("MOBACKUP_SQL_PASSWORD", "111")
        try:
            connection = wait_for_sql(args.sql_port, args.sql_user, password, deadline)
        except MobackupError as error:
            result.fail("start", str(error))
        else:
            result.start_seconds = round(time.monotonic() - clock, 3)
            run_checks(connection, summary.extra.get("catalog"), checks, result, deadline, args.timeout)
    except (MobackupError, OSError, ValueError, KeyError, TypeError) as error:
        result.fail("setup", str(error))
    result.total_seconds = round(time.monotonic() - clock, 3)
    report(compact(result.to_dict()), args.termination_log)
    return 0 if result.ok else 1


def report(text: str, termination_log: str) -> None:
    """The outcome on stdout (the pod's log) and as the container's termination message, which the
    operator reads (a sidecar of a scratch MatrixOne: the drill's checker, the scoped restore's loader)."""
    print(text, flush=True)
    try:
        with open(termination_log, "w") as f:
            f.write(text)
    except OSError as error:
        print(f"cannot write the termination message: {error.strerror}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
