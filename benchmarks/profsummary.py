#!/usr/bin/env python3
"""Where the time goes, from py-spy collapsed stacks (`py-spy record --idle --threads --format raw`):
`python benchmarks/profsummary.py PROFILE.txt[.gz] [N]`.

For the copy workers (threads `mobackup-copy_*` / `mobackup-restore_*`) and for the main thread
apart, prints the share of wall-clock samples per leaf function (self, idle waits included) and per
engine function on the stack (inclusive).
"""

from __future__ import annotations

import gzip
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
WORKERS = ("mobackup-copy", "mobackup-restore", "mobackup-verify", "ThreadPoolExecutor")


def _name(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    file = match["file"].split("site-packages/")[-1].split("operator/")[-1]
    return f"{match['func']} ({file})"


def _group(thread: str) -> str | None:
    if any(w in thread for w in WORKERS):
        return "workers"
    if "MainThread" in thread:
        return "main thread"
    return None  # the lock refresher and other helpers, idle nearly all the time


def summarise(path: Path, top: int = 12) -> str:
    leaf: dict[str, Counter[str]] = {"workers": Counter(), "main thread": Counter()}
    inclusive: dict[str, Counter[str]] = {"workers": Counter(), "main thread": Counter()}
    totals: Counter[str] = Counter()
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in raw.decode().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        group = _group(frames[0]) if stack else None
        if group is None:
            continue
        count = int(count_text)
        names = [_name(f) for f in frames[1:] if f]
        totals[group] += count
        leaf[group][names[-1] if names else frames[0]] += count
        for name in set(names):
            if "mobackup/" in name or "botocore/" in name or "urllib3/" in name:
                inclusive[group][name] += count
    lines = [f"== {path.name}"]
    for group in ("workers", "main thread"):
        total = totals[group] or 1
        lines.append(f"-- {group}: {totals[group]} samples; self time:")
        lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in leaf[group].most_common(top)]
        lines.append(f"-- {group}: inclusive (engine, botocore, urllib3):")
        lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in inclusive[group].most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if not arg.isdigit():
            print(summarise(Path(arg), int(sys.argv[-1]) if sys.argv[-1].isdigit() else 12))
