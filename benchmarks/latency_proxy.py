"""A TCP proxy on 127.0.0.1 that adds a fixed round-trip time, for cloud latency on a laptop.

Every chunk of bytes is forwarded ``rtt_s / 2`` after it arrived, in each direction, in
order; a new connection waits one round trip before its first byte goes through (the TCP
handshake). So a request/response exchange on an open connection costs ``rtt_s`` more than
direct, and one on a new connection ``2 * rtt_s``: roughly what a client in a cloud region
sees from an object store's front end (tens of ms to the first byte).

It counts **requests in flight**: an exchange runs from the first client byte after the
previous answer on its connection began until the server's first byte of the answer.
``peak_in_flight`` is the most answered exchanges that overlapped in time: 1 means the client
read one object at a time. (A request never answered, e.g. sent on a connection the server
was closing and then retried by the client, is not counted.)

    with LatencyProxy("127.0.0.1", 4443, rtt_s=0.05) as proxy:
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        ...
        proxy.peak_in_flight

Used by the read-ahead test (tests/integration/test_read_ahead.py) and
:mod:`benchmarks.emulator_vs_local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Any, Self

__all__ = ["LatencyProxy"]


class LatencyProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` with ``rtt_s`` of
    added round trip (see the module docstring). Runs its own event loop on a thread.

    Attributes:
        port: The port it listens on (after :meth:`start`).
        connections: Connections accepted so far.
        peak_in_flight: The most answered exchanges that overlapped (see the module docstring).
        requests: Requests forwarded (client bytes after an answer, or first on a connection).
    """

    def __init__(self, upstream_host: str, upstream_port: int, rtt_s: float = 0.05) -> None:
        if rtt_s < 0:
            raise ValueError(f"rtt_s must be 0 or more, got {rtt_s!r}")
        self.upstream = (upstream_host, upstream_port)
        self.rtt_s = rtt_s
        self.port = 0
        self.connections = 0
        # (request's first byte, answer's first byte, the request's first bytes)
        self._exchanges: list[tuple[float, float, bytes]] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start within 10 s")
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and end the thread."""
        loop, self._loop = self._loop, None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()  # the pipes read EOF and their handlers return
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.connections = 0
            self._exchanges.clear()

    @property
    def peak_in_flight(self) -> int:
        return self.peak_in_flight_of(b"")

    def peak_in_flight_of(self, request_prefix: bytes) -> int:
        """``peak_in_flight`` of the requests that start with ``request_prefix`` (e.g.
        ``b"GET /download/"``: the object downloads of the GCS JSON API)."""
        with self._lock:
            xs = [(t0, t1) for t0, t1, head in self._exchanges if head.startswith(request_prefix)]
            marks = sorted([(t0, 1) for t0, _ in xs] + [(t1, -1) for _, t1 in xs])
        peak = now = 0
        for _, step in marks:  # at a tie the end sorts first: touching exchanges do not overlap
            now += step
            peak = max(peak, now)
        return peak

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._proxy(client_r, client_w)
        except Exception:  # a connection reset: that connection alone ends
            pass
        finally:
            self._handlers.discard(task)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.add(client_w)
        try:
            await asyncio.sleep(self.rtt_s)  # the handshake's round trip
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers.add(up_w)
        state: dict[str, Any] = {"since": None, "head": b""}
        half = self.rtt_s / 2
        await asyncio.gather(
            self._pipe(client_r, up_w, half, state, request=True),
            self._pipe(up_r, client_w, half, state, request=False),
            return_exceptions=True,
        )
        for w in (up_w, client_w):
            self._writers.discard(w)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay_s: float,
        state: dict[str, Any],
        *,
        request: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                with self._lock:
                    since = state["since"]
                    if chunk and request and since is None:
                        state["since"], state["head"] = loop.time(), chunk[:64]
                        self.requests += 1
                    elif chunk and not request and since is not None:
                        state["since"] = None
                        self._exchanges.append((since, loop.time(), state["head"]))
                queue.put_nowait((loop.time() + delay_s, chunk))
                if not chunk:
                    break
            await sender
        finally:
            sender.cancel()
