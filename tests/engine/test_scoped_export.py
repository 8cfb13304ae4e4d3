"""engine/scoped_export.py without a server (the real MatrixOne's export and load: tests/matrixone/
test_scoped_restore.py): the exported file is cut into LOAD DATA statements at row ends only (quoted
newlines and doubled quotes included), a file that ends inside a row is refused, every batch reaches
one of several loaders however slow their statements, and the export is opened without following a
link or reading a file with another name."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mobackup.engine.errors import MobackupError
from mobackup.engine.scoped_export import checksum_statement, load_batches, open_export, row_batches

# Rows as MatrixOne exports them: quoted fields with doubled quotes, newlines and commas inside.
ROWS = [b'1,"a",\\N\n', b'2,"x\ny","q""\n"""\n', b'3,"",2024-01-01 00:00:00\n', b'4,"\\\\N,\n\n",\\N\n']


def batches_of(data: bytes, batch: int, read: int) -> list[bytes]:
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    try:
        return list(row_batches(r, batch, read))
    finally:
        writer.join()
        os.close(r)


@pytest.mark.parametrize("batch", [1, 5, 17, 64, 1 << 20])
@pytest.mark.parametrize("read", [1, 3, 4096])
def test_batches_end_at_row_ends_only(batch: int, read: int) -> None:
    data = b"".join(ROWS * 7)
    parts = batches_of(data, batch, read)
    assert b"".join(parts) == data
    ends = {sum(len(r) for r in (ROWS * 7)[:i]) for i in range(1, len(ROWS) * 7 + 1)}
    offset = 0
    for part in parts:
        offset += len(part)
        assert offset in ends, (batch, read, part)
    if batch >= len(data):
        assert len(parts) == 1


def test_a_file_that_ends_inside_a_row_is_refused() -> None:
    with pytest.raises(MobackupError, match="ends inside a row"):
        batches_of(b'1,"a\n', 1 << 20, 4096)
    assert batches_of(b"", 10, 10) == []


class SlowLoader:
    """A StreamingConnection stand-in (no server can be made slow on purpose): each statement takes
    `delay` seconds and reports the rows (newlines) of the bytes it was armed with."""

    def __init__(self, delay: float) -> None:
        self.delay, self.got, self.source = delay, [], None

    def stream(self, name: str, source: Any) -> None:
        self.source = source

    def cursor(self) -> Any:
        loader = self

        class Cursor:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                return None

            def execute(self, statement: str) -> int:
                if not statement.startswith("load data"):
                    return 0
                data = b"".join(bytes(c) for c in loader.source)
                time.sleep(loader.delay)
                loader.got.append(data)
                return data.count(b"\n")

        return Cursor()


def test_every_batch_reaches_a_loader_and_all_of_them_end() -> None:
    loaders = [SlowLoader(0.7), SlowLoader(0.05), SlowLoader(0.3)]
    batches = [b"%d\n" % i for i in range(12)]
    counted: list[tuple[int, int]] = []
    started = time.monotonic()
    load_batches(iter(batches), loaders, ("db", "t"), "stream", lambda r, b: counted.append((r, b)))
    assert time.monotonic() - started < 10
    assert sorted(b for loader in loaders for b in loader.got) == sorted(batches)
    assert sum(r for r, _ in counted) == 12


def test_the_export_is_opened_without_a_link_or_another_name(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b"1\n")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_export(fd, "t.csv"))
        (tmp_path / "link.csv").symlink_to(tmp_path / "t.csv")
        with pytest.raises(OSError):
            open_export(fd, "link.csv")
        os.link(tmp_path / "t.csv", tmp_path / "second-name.csv")
        with pytest.raises(MobackupError, match="one name"):
            open_export(fd, "t.csv")
    finally:
        os.close(fd)


def test_the_checksum_covers_every_column_by_position_and_quotes_names() -> None:
    sql = checksum_statement("d`b", "t", ["a", "b`c"])
    assert "md5(serial_full(`a`, `b``c`))" in sql and "from `d``b`.`t`" in sql and "count(*)" in sql


def test_names_go_into_the_column_query_as_quoted_literals() -> None:
    from mobackup.engine.scoped_export import string_literal

    assert string_literal("it's \\ x") == "'it''s \\\\ x'"
