"""Peak memory of mobackup against the number of files in a manifest (1,000 to 1,000,000).

Each tree is one flat directory (as MatrixOne's `shared/` is) of tiny files: 8 bytes each, drawn from
256 distinct contents, so every manifest entry carries a real chunk digest while the repository stays
at 256 blobs. Caches are left warm here: the point is memory, not I/O.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import measure

MTIME_NS = 1_715_745_404 * 1_000_000_000


def make_tree(root: Path, count: int) -> float:
    """`count` files under root/shared; returns the seconds it took."""
    clock = time.monotonic()
    shared = root / "shared"
    shared.mkdir(parents=True)
    contents = [f"blk{i:05d}".encode() for i in range(256)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    base = str(shared) + "/"
    for i in range(count):
        fd = os.open(f"{base}{i:016x}-0000-7000-8000-000000000000_{i % 100000:05d}", flags, 0o644)
        os.write(fd, contents[i % 256])
        os.utime(fd, ns=(MTIME_NS, MTIME_NS))
        os.close(fd)
    (root / "local").mkdir()
    (root / "local" / "hk_data").write_bytes(b"hk")
    return time.monotonic() - clock


def _remove(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)  # much faster than shutil.rmtree at 1M files


def run(root: Path, mobackup: str, counts: list[int], env: dict[str, str], log: Path,
        on_result: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for count in counts:
        _remove(root)
        src, repo, target = root / "src", root / "repo", root / "restore"
        print(f"[memory] {count} files: generating", flush=True)
        row: dict[str, Any] = {"files": count, "generate_s": round(make_tree(src, count), 1)}
        steps = {
            "backup_full": [mobackup, "backup", "--data-dir", str(src), "--repo", str(repo), "--type", "full",
                            "--json"],
            "backup_incremental": [mobackup, "backup", "--data-dir", str(src), "--repo", str(repo),
                                   "--type", "incremental", "--json"],
            "list": [mobackup, "list", "--repo", str(repo), "--json"],
        }
        for name, cmd in steps.items():
            row[name] = measure.run(cmd, env=env, cold=False, log=log)
            print(f"[memory] {count} files: {name} {row[name]['wall_s']} s, {row[name]['peak_rss_mb']} MB", flush=True)
        listing = json.loads(subprocess.run([mobackup, "list", "--repo", str(repo), "--json"], env=env,
                                            capture_output=True, text=True, check=True).stdout)
        full = next(s for s in listing if s["type"] == "full")
        row["manifest_entries"] = full.get("entry_count")
        row["restore"] = measure.run([mobackup, "restore", full["id"], "--repo", str(repo), "--target", str(target),
                                      "--json"], env=env, cold=False, log=log)
        print(f"[memory] {count} files: restore {row['restore']['wall_s']} s, {row['restore']['peak_rss_mb']} MB",
              flush=True)
        restored = sum(1 for _ in os.scandir(target / "shared"))
        if restored != count:
            raise RuntimeError(f"memory test: restored {restored} of {count} files")
        results.append(row)
        if on_result:
            on_result(results)
        _remove(root)
    shutil.rmtree(root, ignore_errors=True)
    return results


def run_online(root: Path, counts: list[int], env: dict[str, str], log: Path, python: str,
               on_result: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Peak RSS of an online full backup of `count` staged files, then of an online incremental that
    reuses them all and stages 1% more (online_memscale.py plays MatrixOne's BACKUP)."""
    driver = str(Path(__file__).with_name("online_memscale.py"))
    results: list[dict[str, Any]] = []
    for count in counts:
        _remove(root)
        row: dict[str, Any] = {"files": count}
        for name, extra in (("online_full", []), ("online_incremental", ["--incremental"])):
            cmd = [python, driver, "--files", str(count), "--data", str(root / "data"), "--repo", str(root / "repo"),
                   *extra]
            row[name] = measure.run(cmd, env=env, cold=False, log=log)
            print(f"[memory] {count} staged files: {name} {row[name]['wall_s']} s, {row[name]['peak_rss_mb']} MB",
                  flush=True)
        results.append(row)
        if on_result:
            on_result(results)
        _remove(root)
    return results
