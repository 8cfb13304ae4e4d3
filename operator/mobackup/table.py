"""The `mobackup list` table in mo_br's layout (ID, SIZE, PATH, AT TIME, DURATION, COMPLETE TIME,
BACKUPTS, BACKUPTYPE, then BASE and NEW BYTES), drawn by rich. Shared by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Sequence

from .engine.model import BackupSummary, parse_iso
from .engine.text import printable

HEADERS = ("ID", "SIZE", "PATH", "AT TIME", "DURATION", "COMPLETE TIME", "BACKUPTS", "BACKUPTYPE", "BASE",
           "NEW BYTES")


def decimal_size(n: int) -> str:
    """Sizes as `mo_br list` prints them: 65 MB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError


def local_time(text: str) -> str:
    return parse_iso(text).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def rows(summaries: Sequence[BackupSummary]) -> list[list[str]]:
    """The cells, printable: every one comes from a repository (engine/text.py)."""
    return [[printable(cell) for cell in row] for row in _cells(summaries)]


def _cells(summaries: Sequence[BackupSummary]) -> list[list[str]]:
    return [[s.id, decimal_size(s.size_bytes), s.location, local_time(s.started_at), f"{s.duration_seconds:.3f}s",
             local_time(s.completed_at), s.backup_ts, s.type, s.base_id or "-", decimal_size(s.new_bytes)]
            for s in summaries]


def backup_table(summaries: Sequence[BackupSummary]) -> str:
    """The table as plain text (no colour, never wrapped: scripts cut it with `|`)."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*HEADERS, box=box.ASCII2, header_style="", show_edge=True, pad_edge=True)
    for column in table.columns:
        column.no_wrap = True
    for row in rows(summaries):
        table.add_row(*row)
    out = io.StringIO()
    # A wide, colourless, non-terminal console: the table's natural width, the same bytes everywhere.
    Console(file=out, width=100_000, color_system=None, force_terminal=False, legacy_windows=False,
            emoji=False, highlight=False, markup=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
