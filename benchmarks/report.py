#!/usr/bin/env python3
"""Markdown tables from a results JSON of benchmarks/run.py: `python benchmarks/report.py RESULTS.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import measure

TOOLS = ("cp -r", "rsync -a", "rclone sync", "restic")
DEFAULT_PARALLELISM = 4


def summarise(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (section, tool, operation, parallelism)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["section"], s["tool"], s["op"], s.get("parallelism")), []).append(s)
    rows = []
    for (section, tool, op, parallelism), group in groups.items():
        med = measure.median_of(group)
        nbytes = group[0]["bytes"]
        rows.append({"section": section, "tool": tool, "op": op, "parallelism": parallelism, "bytes": nbytes,
                     **med, "mb_per_s": round(nbytes / 1e6 / med["durable_s"], 1) if med["durable_s"] else None})
    return rows


def _find(summary: list[dict[str, Any]], section: str, tool: str, op: str,
          parallelism: int | None = None) -> dict[str, Any] | None:
    for row in summary:
        if (row["section"], row["tool"], row["op"]) == (section, tool, op) and (
                parallelism is None or row["parallelism"] == parallelism):
            return row
    return None


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{row['durable_s']:.2f} s, {row['mb_per_s']:.0f} MB/s, {row['peak_rss_mb']:.0f} MB"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{a['durable_s'] / b['durable_s']:.2f}"


def _speedup(mine: dict[str, Any] | None, other: dict[str, Any] | None) -> str:
    return "-" if other is None or mine is None else f"{other['durable_s'] / mine['durable_s']:.2f}x"


def best_parallelism(summary: list[dict[str, Any]], section: str, op: str) -> int | None:
    rows = [r for r in summary if (r["section"], r["tool"], r["op"]) == (section, "mobackup", op)]
    return min(rows, key=lambda r: r["durable_s"])["parallelism"] if rows else None


def local_table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| operation | mobackup (--parallelism 4) | cp -r | rsync -a | rclone sync | restic "
        "| ratio vs cp -r | vs rsync | vs rclone | vs restic |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for op, label in (("full", "full backup"), ("incremental", "incremental (after the 5% change)"),
                      ("restore", "restore")):
        mine = _find(summary, "local", "mobackup", op, DEFAULT_PARALLELISM)
        # A restore by cp, rsync or rclone is the same copy as their full run.
        others = [_find(summary, "local", t, op if op != "restore" or t == "restic" else "full") for t in TOOLS]
        if op == "incremental":
            others[0] = None  # cp has no incremental mode
        cells = [_cell(mine), *(_cell(o) for o in others), *(_ratio(mine, o) for o in others)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def s3_table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| operation | mobackup (--parallelism 4) | mobackup (best: -p N) | mobackup --compression zstd (-p 4) "
        "| rclone sync | restic | best mobackup / rclone | best mobackup / restic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op, label in (("full", "full backup (upload)"), ("restore", "restore (download)"),
                      ("incremental", "incremental (after the change)")):
        default = _find(summary, "s3", "mobackup", op, DEFAULT_PARALLELISM)
        best_p = best_parallelism(summary, "s3", op)
        best = _find(summary, "s3", "mobackup", op, best_p)
        rclone, restic = _find(summary, "s3", "rclone sync", op), _find(summary, "s3", "restic", op)


        best_cell = f"{_cell(best)} (-p {best_p})" if best else "-"
        zstd = _find(summary, "s3", "mobackup zstd", op)
        lines.append(f"| {label} | {_cell(default)} | {best_cell} | {_cell(zstd)} | {_cell(rclone)} | {_cell(restic)} "
                     f"| {_speedup(best, rclone)} | {_speedup(best, restic)} |")
    return "\n".join(lines)


def parallelism_table(summary: list[dict[str, Any]]) -> str:
    lines = ["| target | operation | " + " | ".join(f"-p {p}" for p in (2, 4, 8, 16)) + " |",
             "|---|---|---|---|---|---|"]
    for section in ("local", "s3"):
        for op in ("full", "restore"):
            cells = []
            for p in (2, 4, 8, 16):
                row = _find(summary, section, "mobackup", op, p)
                cells.append("-" if row is None else f"{row['durable_s']:.2f} s ({row['mb_per_s']:.0f} MB/s)")
            if any(c != "-" for c in cells):
                lines.append(f"| {section} | {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def variant_table(summary: list[dict[str, Any]]) -> str:
    """mobackup against the --variant build, same run, same data."""
    lines = ["| target | operation | -p | mobackup | variant | variant / mobackup (time) |",
             "|---|---|---|---|---|---|"]
    for row in summary:
        if row["tool"] != "mobackup-variant":
            continue
        base = _find(summary, row["section"], "mobackup", row["op"], row["parallelism"])
        lines.append(f"| {row['section']} | {row['op']} | {row['parallelism']} | {_cell(base)} | {_cell(row)} "
                     f"| {_ratio(row, base)} |")
    return "\n".join(lines)


def memory_table(memory: list[dict[str, Any]]) -> str:
    lines = ["| files in manifest | backup full: peak RSS, time | incremental (no change) | list | restore |",
             "|---|---|---|---|---|"]
    for row in memory:
        cells = [f"{row[k]['peak_rss_mb']:.0f} MB, {row[k]['wall_s']:.1f} s"
                 for k in ("backup_full", "backup_incremental", "list", "restore")]
        lines.append(f"| {row['files']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def online_memory_table(memory: list[dict[str, Any]]) -> str:
    lines = ["| staged files | online full: peak RSS, time | online incremental (all reused, 1% new) |",
             "|---|---|---|"]
    for row in memory:
        cells = [f"{row[k]['peak_rss_mb']:.0f} MB, {row[k]['wall_s']:.1f} s"
                 for k in ("online_full", "online_incremental")]
        lines.append(f"| {row['files']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    summary = results.get("summary") or summarise(results.get("samples", []))
    parts = []
    ds = results.get("dataset")
    if ds:
        parts.append(f"Data set ({results['size']}, seed {results['seed']}): state A {ds['state_a']['files']} files, "
                     f"{ds['state_a']['bytes'] / (1 << 30):.2f} GiB; state B {ds['state_b']['files']} files, "
                     f"{ds['state_b']['bytes'] / (1 << 30):.2f} GiB; change {ds['change']}. "
                     f"Cache: {results['cache']}. Medians of {results['reps']} runs; time = wall time "
                     "including a trailing sync(2); MB/s = 10^6 bytes of the tree per second; RSS = peak.")
    if any(r["section"] == "local" for r in summary):
        parts += ["### Local directory", local_table(summary)]
    if any(r["section"] == "s3" for r in summary):
        parts += ["### S3 (SeaweedFS on loopback)", s3_table(summary)]
    if any(r["tool"] == "mobackup" for r in summary):
        parts += ["### mobackup --parallelism", parallelism_table(summary)]
    if any(r["tool"] == "mobackup-variant" for r in summary):
        parts += ["### mobackup against the scratch variant", variant_table(summary)]
    if results.get("memory"):
        parts += ["### Memory against manifest size", memory_table(results["memory"])]
    if results.get("online_memory"):
        parts += ["### Memory of online backups against staged files", online_memory_table(results["online_memory"])]
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
