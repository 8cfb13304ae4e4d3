"""A thread pool with bounded work in flight (so memory stays flat) that keeps the first error.

Plain threads and a queue rather than concurrent.futures: that module imports logging and more (about
10 ms of a CLI start-up, which a small incremental backup pays in full)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from types import TracebackType
from typing import Any

_Task = tuple[Callable[..., Any], tuple[Any, ...], "Callable[[Any], None] | None"]


class BoundedWorkers:
    """At most `2 * workers` tasks queued or running; the producer blocks in `submit` beyond that.

    `on_result` callbacks run in the worker threads. After the first failure `failed` is true, so the
    producer can stop early; leaving the `with` block waits for running tasks and raises that error.
    Threads are started as tasks arrive, up to `workers`.
    """

    def __init__(self, workers: int, name: str) -> None:
        self.size = max(1, workers)
        self.name = name
        self.slots = threading.BoundedSemaphore(self.size * 2)
        self.lock = threading.Lock()
        self.settled = threading.Condition(self.lock)  # notified when no task is queued or running
        self.in_flight = 0
        self.error: BaseException | None = None
        self.tasks: SimpleQueue[_Task | None] = SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0  # threads waiting for a task (under `lock`)
        self.cancelled = False  # drop queued tasks (shutdown(cancel=True))
        self.closed = False

    @property
    def failed(self) -> bool:
        return self.error is not None

    def submit(self, task: Callable[..., Any], *args: Any, on_result: Callable[[Any], None] | None = None) -> None:
        if self.closed:
            raise RuntimeError("BoundedWorkers: submit after shutdown")
        self.slots.acquire()
        with self.lock:
            self.in_flight += 1
            start = self.idle == 0 and len(self.threads) < self.size
            if not start:
                self.idle -= 1 if self.idle else 0
        if start:
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self.threads)}", daemon=True)
            self.threads.append(thread)
            thread.start()
        self.tasks.put((task, args, on_result))

    def _work(self) -> None:
        while True:
            item = self.tasks.get()
            if item is None:
                return
            task, args, on_result = item
            error: BaseException | None = None
            try:
                if not self.cancelled:
                    result = task(*args)
                    if on_result is not None:
                        on_result(result)  # an on_result failure counts as the task's
            except BaseException as failure:
                error = failure
            finally:
                del item, task, args
                self.slots.release()
            with self.lock:
                if error is not None and self.error is None:
                    self.error = error
                self.idle += 1
                self.in_flight -= 1
                if not self.in_flight:
                    self.settled.notify_all()

    def wait(self) -> None:
        """Until every task submitted so far has run; then raises the first error, if any."""
        with self.lock:
            while self.in_flight:
                self.settled.wait()
        if self.error is not None:
            raise self.error

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the threads; with `cancel`, tasks not started yet are dropped."""
        if cancel:
            self.cancelled = True
        if not self.closed:
            self.closed = True
            for _ in self.threads:
                self.tasks.put(None)
        for thread in self.threads:
            thread.join()

    def __enter__(self) -> BoundedWorkers:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.shutdown()
        if kind is None and self.error is not None:
            raise self.error
