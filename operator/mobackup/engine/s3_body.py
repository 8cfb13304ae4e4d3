"""What both S3 clients share and the ingest's hot loop needs, without importing botocore's client:
the GC pause around botocore's imports, and read_full (a GET's body straight into a buffer).
engine/s3.py (S3Backend, botocore's client) and engine/s3_get.py (signed HEAD/GET) import it."""

from __future__ import annotations

import contextlib
import gc
import http.client
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic collector off meanwhile (unless it was off already). botocore's import and
    a client's creation allocate a few hundred thousand long-lived objects (modules, S3's service
    model) and no cyclic garbage, and the collector, run every 700 allocations, traced them over
    and over: 0.08 s of an S3 ingest's start (one full collection 0.05 s), a twentieth of its CPU."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


with collector_paused():
    import botocore.exceptions


def read_full(body: Any, view: memoryview) -> int:
    """Fills `view` from a GET's streaming body (fewer bytes only at its end); returns how many.

    A plain body (no content coding, not chunked) is read straight from the socket into `view`:
    botocore's and urllib3's own reads copy every buffer two or three times more (http.client's
    read(n) allocates and copies, urllib3 queues and joins, StreamingBody.readinto copies again).
    At its end the connection goes back to the pool, as urllib3 would do."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    direct = (isinstance(fp, http.client.HTTPResponse) and not fp.chunked and fp.length is not None
              and getattr(raw, "_decoder", None) is None and not raw.headers.get("content-encoding"))
    done = 0
    try:
        while done < len(view):
            n = fp.readinto(view[done:]) if direct else body.readinto(view[done:])  # type: ignore[union-attr]
            if not n:
                if direct:
                    raw.release_conn()  # type: ignore[union-attr]
                break
            done += n
    except TimeoutError as error:  # the socket's read timeout (botocore's, set on the connection)
        raise botocore.exceptions.ReadTimeoutError(endpoint_url=str(getattr(raw, "geturl", lambda: "")()),
                                                   error=error) from None
    except (http.client.IncompleteRead, OSError) as error:
        raise botocore.exceptions.ResponseStreamingError(error=error) from None
    return done
