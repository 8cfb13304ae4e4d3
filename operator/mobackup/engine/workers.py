"""A thread pool with bounded work in flight (so memory stays flat) that keeps the first error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any


class BoundedWorkers:
    """At most `2 * workers` tasks queued or running; the producer blocks in `submit` beyond that.

    `on_result` callbacks run in the worker threads. After the first failure `failed` is true, so the
    producer can stop early; leaving the `with` block waits for running tasks and raises that error.
    """

    def __init__(self, workers: int, name: str) -> None:
        workers = max(1, workers)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self.slots = threading.BoundedSemaphore(workers * 2)
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def submit(self, task: Callable[..., Any], *args: Any, on_result: Callable[[Any], None] | None = None) -> None:
        self.slots.acquire()
        future = self.pool.submit(task, *args)
        future.add_done_callback(lambda done: self._done(done, on_result))

    def _done(self, future: Future[Any], on_result: Callable[[Any], None] | None) -> None:
        try:
            error = future.exception()
            if error is None and on_result is not None:
                on_result(future.result())
        except BaseException as callback_error:  # an on_result failure counts as the task's
            error = callback_error
        finally:
            self.slots.release()
        if error is not None:
            with self.lock:
                if self.error is None:
                    self.error = error

    def __enter__(self) -> BoundedWorkers:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.pool.shutdown(wait=True)
        if kind is None and self.error is not None:
            raise self.error
