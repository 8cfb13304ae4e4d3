"""Progress reporting: a small protocol, a terminal bar (rich), plain periodic lines, and a no-op."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, total_bytes: int, total_files: int) -> None: ...
    def advance(self, nbytes: int, nfiles: int) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, nbytes: int, nfiles: int) -> None:
        pass

    def finish(self) -> None:
        pass


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as `du -h` and Kubernetes quantities use)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Counter:
    """Thread-safe totals, shared by the renderers and by callers that poll."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total_bytes = 0
        self.total_files = 0
        self.done_bytes = 0
        self.done_files = 0
        self.started = time.monotonic()

    def start(self, total_bytes: int, total_files: int) -> None:
        with self.lock:
            self.total_bytes, self.total_files = total_bytes, total_files
            self.started = time.monotonic()

    def advance(self, nbytes: int, nfiles: int) -> None:
        with self.lock:
            self.done_bytes += nbytes
            self.done_files += nfiles


class TerminalProgress(Counter):
    """A rich progress bar on a terminal: percentage, bytes, files, rate and ETA.

    The workers only add to the counters; the bar is updated from them at most 10 times a second,
    so a million small files cost a million additions, not a million redraws. rich is imported here,
    not at start-up (`mobackup --help` stays fast)."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        super().__init__()
        self.label = label
        self._last_draw = 0.0
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(binary_units=True),
            TextColumn("{task.fields[files]} files"), TransferSpeedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(file=stream), transient=False)
        self._task = self._bar.add_task(label, total=None, files="0/0")

    def start(self, total_bytes: int, total_files: int) -> None:
        super().start(total_bytes, total_files)
        self._bar.start()
        self._bar.reset(self._task, total=total_bytes or None, files=f"0/{total_files}")

    def advance(self, nbytes: int, nfiles: int) -> None:
        super().advance(nbytes, nfiles)
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self._update()

    def _update(self) -> None:
        with self.lock:
            done, files, total_files = self.done_bytes, self.done_files, self.total_files
        self._bar.update(self._task, completed=done, files=f"{files}/{total_files}")

    def finish(self) -> None:
        self._update()
        self._bar.stop()


class PlainProgress(Counter):
    """Not a terminal (a log, a pipe, a Job): one plain line every `interval` seconds, none for a run
    shorter than that, and no control characters."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, interval: float = 10.0) -> None:
        super().__init__()
        self.label, self.stream, self.interval = label, stream, interval
        self._last_line = time.monotonic()

    def start(self, total_bytes: int, total_files: int) -> None:
        super().start(total_bytes, total_files)
        self._last_line = time.monotonic()

    def advance(self, nbytes: int, nfiles: int) -> None:
        super().advance(nbytes, nfiles)
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        with self.lock:
            done, total, files, total_files = self.done_bytes, self.total_bytes, self.done_files, self.total_files
        rate = done / max(now - self.started, 1e-6)
        pct = 100.0 * done / total if total else 100.0
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total > done else "-"
        return (f"{self.label}: {pct:.1f}% {human_bytes(done)}/{human_bytes(total)} {files}/{total_files} files "
                f"{human_bytes(rate)}/s ETA {eta}")

    def finish(self) -> None:
        pass  # the command prints its result next


def for_terminal(label: str, quiet: bool = False) -> Progress:
    """A progress bar when stderr is a terminal, plain periodic lines otherwise (every
    MOBACKUP_PROGRESS_INTERVAL seconds, default 10), nothing when quiet."""
    if quiet:
        return NullProgress()
    if not sys.stderr.isatty():
        return PlainProgress(label, interval=float(os.environ.get("MOBACKUP_PROGRESS_INTERVAL") or 10))
    return TerminalProgress(label)
