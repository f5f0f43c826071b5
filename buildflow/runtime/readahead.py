"""Read event payloads ahead of processing, many at a time, within a byte budget.

A bucket upload's bytes (or a Pub/Sub or Kafka ``gs://`` reference's) are downloaded when
``event.blob`` is first read. Read inside ``process`` (e.g. on an image processor's decode
threads) the downloads run one at a time per thread, so at a cloud store's first-byte
latency (tens of ms) a replica is capped near ``threads / round trip`` whatever its CPU
could do. :class:`BlobReadAhead` starts the reads of a micro-batch as soon as it is pulled,
on I/O threads of its own (up to ``max_requests`` requests in flight), so that by the time
``process`` asks for ``event.blob`` the bytes are there or on their way.

Memory is bounded: a read is started only while the bytes read ahead and not yet released
(:meth:`BlobReadAhead.release`, after the event's micro-batch is processed) stay within
``max_bytes``, counting each event's known size before it is read (a bucket notification's
``size``) or ``assumed_bytes`` when the size is unknown, then its real size once read. A
single payload larger than the budget is still read, alone. Reads start in the order the
events came; an event that ``process`` reaches before its read started is read there
(:attr:`buildflow.events.FileEvent.blob` reads each payload once: a second reader waits
for the first), so the budget can never deadlock the pipeline.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Iterable
from typing import Any

from buildflow.events import FileEvent

__all__ = ["BlobReadAhead", "ReadAheadStats"]

log = logging.getLogger("buildflow.runtime")


class ReadAheadStats:
    """What a :class:`BlobReadAhead` did (read under its lock; copy with :meth:`as_dict`).

    Attributes:
        reads: Payload reads it started.
        bytes_read: Bytes those reads returned.
        peak_requests: Most reads in flight at once.
        peak_bytes: Most bytes held (reserved or read, not yet released) at once.
        wait_s: Seconds that readers of ``event.blob`` (``process``) spent waiting for
            reads still in flight, summed over the released events: 0 when every read
            finished before it was needed.
    """

    def __init__(self) -> None:
        self.reads = 0
        self.bytes_read = 0
        self.peak_requests = 0
        self.peak_bytes = 0
        self.wait_s = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


class BlobReadAhead:
    """Reads the payloads of :class:`~buildflow.events.FileEvent` objects ahead, on a pool
    of I/O threads (see the module docstring).

    Thread-safety: every method may be called from any thread.

    Args:
        max_requests: Reads in flight at most (the I/O threads), at least 1.
        max_bytes: Bytes read ahead and not yet released, at most (a single larger
            payload is read alone), at least 1.
        assumed_bytes: Budget reserved for a payload of unknown size until it is read.

    Raises:
        ValueError: an argument is below 1.
    """

    def __init__(
        self, *, max_requests: int = 32, max_bytes: int = 64 << 20, assumed_bytes: int = 1 << 20
    ) -> None:
        for what, value in (
            ("max_requests", max_requests),
            ("max_bytes", max_bytes),
            ("assumed_bytes", assumed_bytes),
        ):
            if value < 1:
                raise ValueError(f"{what} must be at least 1, got {value!r}")
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.assumed_bytes = assumed_bytes
        self.stats = ReadAheadStats()
        self._lock = threading.Lock()
        self._pending: collections.deque[FileEvent] = collections.deque()
        self._held: dict[int, int] = {}  # id(event) -> bytes reserved (or read) for it
        self._held_bytes = 0
        self._running = 0
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_requests, thread_name_prefix="buildflow-read")

    def start(self, events: Iterable[Any]) -> None:
        """Queue the reads of ``events`` (those with a payload still to read; others are
        ignored) and start as many as the limits allow. Never blocks on I/O, never raises
        for an event."""
        with self._lock:
            if self._closed:
                return
            for event in events:
                if isinstance(event, FileEvent) and _needs_read(event):
                    self._pending.append(event)
            self._dispatch_locked()

    def release(self, events: Iterable[Any]) -> None:
        """The events' bytes are no longer counted (their micro-batch is processed); queued
        reads of them that did not start are dropped. Starts waiting reads."""
        with self._lock:
            gone = set()
            for event in events:
                gone.add(id(event))
                self._held_bytes -= self._held.pop(id(event), 0)
                self.stats.wait_s += getattr(event, "__dict__", {}).get("_blob_wait_s", 0.0)
            if gone and self._pending:
                self._pending = collections.deque(e for e in self._pending if id(e) not in gone)
            self._dispatch_locked()

    def close(self) -> None:
        """Drop the queued reads and stop the I/O threads (reads in flight finish on their
        own; nothing waits for them)."""
        with self._lock:
            self._closed = True
            self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def held_bytes(self) -> int:
        """Bytes reserved or read ahead and not yet released."""
        with self._lock:
            return self._held_bytes

    def _dispatch_locked(self) -> None:
        while self._pending and self._running < self.max_requests and not self._closed:
            event = self._pending[0]
            reserve = _known_size(event) or self.assumed_bytes
            if self._held_bytes and self._held_bytes + reserve > self.max_bytes:
                return  # wait for a release; the first in line goes first
            self._pending.popleft()
            future = event.start_blob_read()
            if future is None:  # read already (process got there first) or in flight
                continue
            self._held[id(event)] = self._held.get(id(event), 0) + reserve
            self._held_bytes += reserve
            self._running += 1
            self.stats.reads += 1
            self.stats.peak_requests = max(self.stats.peak_requests, self._running)
            self.stats.peak_bytes = max(self.stats.peak_bytes, self._held_bytes)
            try:
                self._pool.submit(self._read, event, future, reserve)
            except RuntimeError:  # interpreter shutdown: complete the claim off this lock
                threading.Thread(target=event._finish_blob_read, args=(future,), daemon=True).start()

    def _read(self, event: FileEvent, future: concurrent.futures.Future[bytes], reserve: int) -> None:
        event._finish_blob_read(future)  # never raises: a failure is the future's (and process's)
        size = 0 if future.exception() is not None else len(future.result())
        with self._lock:
            self._running -= 1
            self.stats.bytes_read += size
            if id(event) in self._held:  # not released meanwhile: count what was read
                self._held[id(event)] += size - reserve
                self._held_bytes += size - reserve
                self.stats.peak_bytes = max(self.stats.peak_bytes, self._held_bytes)
            self._dispatch_locked()


def _needs_read(event: FileEvent) -> bool:
    if "_blob" in event.__dict__ or "_blob_future" in event.__dict__:
        return False
    reader = event.blob_reader()
    return reader is not None and not reader.in_memory


def _known_size(event: FileEvent) -> int | None:
    size = getattr(event, "size", None)
    return size if isinstance(size, int) and size > 0 else None
