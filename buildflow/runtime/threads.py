"""A single daemon thread that runs blocking calls for the event loop.

Used for user code (``setup``/``process``/``teardown``: a model is often not thread-safe,
so one processor replica gets one thread) and for blocking I/O clients. Daemon threads,
unlike ``ThreadPoolExecutor``'s, never keep the process alive after a hard stop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["BlockingWorker"]

T = TypeVar("T")


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class BlockingWorker:
    """Runs callables one at a time on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut, loop = item
            try:
                result = fn()
            except BaseException as e:  # handed to the awaiting coroutine
                ok, value = False, e
            else:
                ok, value = True, result
            try:
                loop.call_soon_threadsafe(_resolve, fut, ok, value)
            except RuntimeError:  # loop closed after a hard stop
                return

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the thread and await its result (or exception)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return await fut

    def stop(self) -> None:
        """Let the thread exit after the calls already queued."""
        self._queue.put(None)
