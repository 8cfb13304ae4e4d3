"""Run one command and measure it: wall time, wall time until its writes are durable, peak RSS."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


class CommandFailed(RuntimeError):
    pass


def drop_caches() -> bool:
    """Write back and drop the page cache (root only). True when it worked."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        return False
    return True


def run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cold: bool, log: Path,
        cwd: Path | None = None) -> dict[str, Any]:
    """Run `cmd` (never through a shell) and return its measurements.

    `wall_s` is the command alone; `durable_s` adds a trailing sync(2), so tools that leave dirty pages
    behind (cp, rsync, rclone) pay for the write-back that mobackup and restic do themselves.
    Peak RSS comes from wait4(2): the command's own ru_maxrss (the largest of it and its children).
    """
    if cold:
        drop_caches()
    load = os.getloadavg()[0]
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file = log.with_suffix(".rss")
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        start = time.perf_counter()
        # GNU time reports the command's peak RSS; our own wait4() would also count the forked copy of this
        # Python process that precedes the exec (ru_maxrss keeps the pre-exec high-water mark).
        child = subprocess.Popen([TIME, "-f", "%M", "-o", str(rss_file), *cmd], stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(env or os.environ), cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        os.sync()
        durable = time.perf_counter() - start
    if child.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited {child.returncode}; see {log}")
    peak_kb = int(rss_file.read_text().split()[-1])
    return {
        "wall_s": round(wall, 3), "durable_s": round(durable, 3), "peak_rss_mb": round(peak_kb / 1024, 1),
        "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2), "load1": round(load, 2),
        "cold": cold,
    }


def precompile(command: str, env: Mapping[str, str] | None = None) -> None:
    """Write the bytecode of the `mobackup` package that `command` (a console script) imports, as an
    installed wheel has it (pip compiles on install): run from a source tree with
    PYTHONDONTWRITEBYTECODE=1, every run would compile the engine again (~35 ms, not the product's cost)."""
    try:
        first = Path(command).read_bytes()[:300].splitlines()[0]
    except (OSError, IndexError):
        return
    if not first.startswith(b"#!") or b"python" not in first:
        return
    python = first[2:].decode().strip().split()[0]
    subprocess.run([python, "-c", "import compileall, os, mobackup; "
                    "compileall.compile_dir(os.path.dirname(mobackup.__file__), quiet=1)"],
                   env=dict(env or os.environ), check=True)


def median_of(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each numeric measurement over repetitions."""
    keys = ("wall_s", "durable_s", "peak_rss_mb", "user_s", "sys_s", "load1")
    return {k: round(statistics.median(s[k] for s in samples), 3) for k in keys} | {"n": len(samples)}


def output_of(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, env=dict(env or os.environ), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""
