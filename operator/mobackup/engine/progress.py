"""Progress reporting: a small protocol, a terminal renderer and a no-op."""

from __future__ import annotations

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
    """One status line on a terminal, redrawn at most 10 times a second."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        super().__init__()
        self.label = label
        self.stream = stream
        self._last_draw = 0.0

    def advance(self, nbytes: int, nfiles: int) -> None:
        super().advance(nbytes, nfiles)
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        with self.lock:
            done, total = self.done_bytes, self.total_bytes
            files, total_files = self.done_files, self.total_files
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 and total > done else 0.0
        self.stream.write(
            f"\r{self.label}: {pct:5.1f}% {human_bytes(done)}/{human_bytes(total)} "
            f"{files}/{total_files} files {human_bytes(rate)}/s ETA {eta:4.0f}s "
        )
        self.stream.flush()

    def finish(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def for_terminal(label: str, quiet: bool = False) -> Progress:
    """A terminal renderer when stderr is a terminal, else nothing (logs stay clean)."""
    if quiet or not sys.stderr.isatty():
        return NullProgress()
    return TerminalProgress(label)
