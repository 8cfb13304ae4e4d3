"""The fast half of scoped restores (engine/scoped.py): the servers do the heavy work.

**Checksum** (both ends, same SQL, computed by the server): for every row the MD5 of MatrixOne's
`serial_full(c1, ..., cn)` over all columns in table order, read as a 128-bit number, summed modulo
2**128; with `count(*)`. `serial_full` is MatrixOne's own tuple encoding (the one it stores composite
primary keys in, so it cannot change between versions): typed, positional and with NULL marked, so a
changed value, a NULL where an empty string was, or two columns' values swapped all change the
row's MD5; the sum is order-independent (a multiset hash), so neither end sorts the table. The
server sums the two 64-bit halves of each MD5 exactly (decimal(38,0)); the text is
`(high * 2**64 + low) mod 2**128` as 32 hex digits.

**Copy by export** (method `load`): the scratch MatrixOne (ours, local to the copy) writes the table
with `SELECT <column expressions> INTO OUTFILE` into a directory only we can write, and the file's
BYTES go to the live server by LOAD DATA LOCAL through sqlconn.StreamingConnection (no row is parsed
in Python). The format (what MatrixOne 1.3 writes, and its LOAD DATA reads back exactly): fields
separated by `,`, rows by `\\n`, NULL as `\\N`; strings (and float/double, JSON and enum values, cast
to text) enclosed in `"` with a `"` inside doubled (MatrixOne does that) and a backslash doubled
(our `replace()`, since LOAD DATA's escape character is the backslash); numbers, dates, times,
decimals, UUIDs as MatrixOne prints them. Floats are cast to text because INTO OUTFILE prints a
double with float32 precision. A table with a column of another type (bit: printed as raw bytes
without quotes) is copied by the row path instead. Both sessions use time zone +00:00, so a
timestamp is printed and read in the same zone.

Each LOAD DATA statement (and transaction) carries about LOAD_BATCH_BYTES of whole rows. A row ends
at a newline outside quotes: outside an enclosed field no `"` occurs, and inside one every `"` is
doubled, so a newline ends a row exactly when the bytes before it hold an even number of `"` (counted
by bytes.count, in C). MatrixOne 1.3 cannot split its own output (`max_file_size` panics), so the
file is split here.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .catalog import quote
from .errors import MobackupError

MODULUS = 1 << 128
READ_BYTES = 1 << 20
LOAD_PACKET = 64 << 10
# information_schema.columns.data_type of the types the export renders exactly (module docstring).
TEXT_TYPES = {"CHAR", "VARCHAR", "TEXT", "TINYTEXT", "MEDIUMTEXT", "LONGTEXT", "BLOB", "TINYBLOB", "MEDIUMBLOB",
              "LONGBLOB", "BINARY", "VARBINARY", "DATALINK"}
CAST_TEXT_TYPES = {"JSON", "ENUM"}
FLOAT_TYPES = {"FLOAT", "DOUBLE"}
AS_PRINTED = {"BOOL", "BOOLEAN", "TINYINT", "SMALLINT", "INT", "BIGINT", "TINYINT UNSIGNED", "SMALLINT UNSIGNED",
              "INT UNSIGNED", "BIGINT UNSIGNED", "DECIMAL", "DATE", "DATETIME", "TIME", "TIMESTAMP", "UUID", "VECF32",
              "VECF64"}
UTC_SESSION = "set time_zone = '+00:00'"



def put_unless_stopped(pending: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Queue `item` for a copy's writers unless the copy stopped meanwhile (then False)."""
    while not stop.is_set():
        try:
            pending.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False

def checksum_statement(database: str, table: str, columns: Sequence[str]) -> str:
    row = f"md5(serial_full({', '.join(quote(c) for c in columns)}))"
    half = "sum(cast(cast(concat('0x', substr(m, {}, 16)) as unsigned) as decimal(38,0)))"
    return (f"select count(*), {half.format(1)}, {half.format(17)} from (select {row} m from "
            f"{quote(database)}.{quote(table)}) x")


def column_names(connection: Any, database: str, table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"select * from {quote(database)}.{quote(table)} limit 0")
        return [_text(d[0]) for d in cursor.description]


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def table_checksum(connection: Any, database: str, table: str) -> tuple[int, str]:
    """(rows, checksum) of a table, computed by the server (module docstring)."""
    statement = checksum_statement(database, table, column_names(connection, database, table))
    with connection.cursor() as cursor:
        cursor.execute(statement)
        row = cursor.fetchone()
    try:
        count, high, low = (int(_text(v)) if v is not None else 0 for v in row)
    except (TypeError, ValueError):
        raise MobackupError(f"the checksum of {database}.{table} came back unreadable: {row!r}") from None
    return count, f"{(high * (1 << 64) + low) % MODULUS:032x}"


def export_expressions(connection: Any, database: str, table: str) -> list[str] | None:
    """The SELECT list that prints each column exactly (module docstring), in table order; None when
    a column's type is not one the export renders exactly."""
    with connection.cursor() as cursor:  # inline literals: a conv=RAW connection has no parameter encoders
        cursor.execute("select column_name, data_type from information_schema.columns where table_schema = "
                       f"{string_literal(database)} and table_name = {string_literal(table)} order by ordinal_position")
        columns = [(_text(n), _text(t).upper()) for n, t in cursor.fetchall()]
    out = []
    for name, kind in columns:
        column = quote(name)
        if kind in TEXT_TYPES:
            out.append(f"replace({column}, '\\\\', '\\\\\\\\')")
        elif kind in CAST_TEXT_TYPES:
            out.append(f"replace(cast({column} as char), '\\\\', '\\\\\\\\')")
        elif kind in FLOAT_TYPES:
            out.append(f"cast({column} as char)")
        elif kind in AS_PRINTED:
            out.append(column)
        else:
            return None
    return out or None


def string_literal(text: str) -> str:
    """`text` as a quoted SQL string (backslash and quote escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def export_statement(database: str, table: str, expressions: Sequence[str], path: str) -> str:
    if "'" in path or "\\" in path:
        raise MobackupError(f"the export directory {path!r} holds a quote or backslash: choose another scratch path")
    return (f"select {', '.join(expressions)} from {quote(database)}.{quote(table)} into outfile '{path}' "
            "fields terminated by ',' enclosed by '\"' lines terminated by '\\n' header 'false'")


def load_statement(table: tuple[str, str], stream_name: str) -> str:
    return (f"load data local infile '{stream_name}' into table {quote(table[0])}.{quote(table[1])} "
            "fields terminated by ',' enclosed by '\"' escaped by '\\\\' lines terminated by '\\n'")


def open_export(directory: int, name: str) -> int:
    """The exported file, opened relative to our directory's fd without following a link; a regular
    file with one name only."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise MobackupError(f"the exported {name} is not a regular file with one name: refusing to read it")
    return fd


def row_batches(fd: int, batch_bytes: int, read_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """The file's bytes in pieces of about `batch_bytes` (or one longer row) that end at row ends
    (module docstring)."""
    buf = bytearray()
    scanned, odd, eof = 0, False, False  # `odd`: the parity of quotes in buf[:scanned]
    while True:
        cut = None
        while cut is None:
            end = len(buf)
            if scanned < batch_bytes:
                upto = min(batch_bytes, end)
                odd ^= bool(buf.count(b'"', scanned, upto) & 1)
                scanned = upto
            while batch_bytes <= scanned < end:
                newline = buf.find(b"\n", scanned)
                if newline < 0:
                    odd ^= bool(buf.count(b'"', scanned) & 1)
                    scanned = end
                    break
                odd ^= bool(buf.count(b'"', scanned, newline) & 1)
                scanned = newline + 1
                if not odd:
                    cut = scanned
                    break
            if cut is None:
                if eof:
                    break
                chunk = os.read(fd, read_bytes)
                eof = not chunk
                buf += chunk
        if cut is None:  # the end of the file
            if buf:
                if odd or not buf.endswith(b"\n"):
                    raise MobackupError("the exported file ends inside a row")
                yield bytes(buf)
            return
        yield bytes(buf[:cut])
        del buf[:cut]
        scanned, odd = 0, False


def load_batches(batches: Iterator[bytes], connections: Sequence[Any], dst: tuple[str, str], stream_name: str,
                 counted: Any) -> None:
    """LOAD DATA LOCAL each batch into `dst`, one statement (and transaction) each, over the live
    `connections` (sqlconn.StreamingConnection) at once; `counted(rows, bytes)` after each."""
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=len(connections) + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def put(item: Any) -> bool:
        return put_unless_stopped(pending, item, stop)

    def feed() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
        except BaseException as error:
            errors.append(error)
            stop.set()
        finally:  # one end mark per loader, however long their statements take (they stop on `stop`)
            for _ in connections:
                put(None)

    def drain(connection: Any) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"use {quote(dst[0])}")  # MatrixOne 1.3 refuses LOAD DATA without one
                while not stop.is_set():
                    try:
                        batch = pending.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    if batch is None:
                        return
                    view = memoryview(batch)  # in packets well under the protocol's 16 MB limit
                    connection.stream(stream_name, (view[i:i + LOAD_PACKET] for i in range(0, len(view), LOAD_PACKET)))
                    rows = cursor.execute(load_statement(dst, stream_name))
                    counted(int(rows or 0), len(batch))
        except BaseException as error:
            errors.append(error)
            stop.set()

    pump(feed, drain, connections, stop, errors, "scoped-export")


def pump(produce: Callable[[], None], drain: Callable[[Any], None], connections: Sequence[Any],
         stop: threading.Event, errors: list[BaseException], name: str) -> None:
    """`produce` in a thread of its own, `drain` once per connection (the first in this thread);
    when the drains are done, `stop` ends the producer; the first error recorded is raised."""
    threads = [threading.Thread(target=produce, name=f"{name}-reader", daemon=True)]
    threads += [threading.Thread(target=drain, args=(c,), name=f"{name}-writer", daemon=True)
                for c in connections[1:]]
    for thread in threads:
        thread.start()
    try:
        drain(connections[0])
    finally:
        for thread in threads[1:]:
            thread.join()
        stop.set()
        threads[0].join()
    if errors:
        raise errors[0]
