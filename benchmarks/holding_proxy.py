"""A TCP proxy that lets traffic through until a marked request passes, then holds every
answer: the client's write reaches the server and is applied, and the client never hears
back. What a crash between "the warehouse committed" and "the runner acked" looks like,
made deterministic for the ``kill -9`` scenarios (:mod:`benchmarks.bigquery_redelivery`).

It forwards bytes as they come (HTTP/1.1 and HTTP/2 cleartext alike, so both the BigQuery
REST API and the Storage Write API's gRPC go through it unchanged). Once :meth:`arm`\\ ed,
the first client->server chunk that contains ``marker`` (``b"MERGE "`` in a jobs.query
body, the default stream's name ``b"/streams/_default"`` in an AppendRows request) sets
:attr:`caught`, and from then on no byte from the server reaches the client, on any
connection. Requests still go through whole (a request longer than one read is never cut),
so the server applies the caught write; whether it did is for the caller to see on the
server itself.

Only for tests and benchmarks: one thread per direction per connection, 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["HoldingProxy"]

_CHUNK = 65536


class HoldingProxy:
    """Listen on 127.0.0.1 (a free port) and forward every connection to
    ``upstream_host:upstream_port``; see the module docstring.

    Use as a context manager (``start`` / ``close``); :attr:`address` is ``host:port``.
    """

    def __init__(self, upstream_host: str, upstream_port: int, marker: bytes) -> None:
        if not marker:
            raise ValueError("HoldingProxy: marker must not be empty")
        self.upstream = (upstream_host, upstream_port)
        self.marker = marker
        self.caught = threading.Event()
        """Set when the armed proxy saw the first chunk containing ``marker``."""
        self._armed = False
        self._holding = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    @property
    def address(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def arm(self) -> None:
        """From now on, a chunk containing ``marker`` stops every answer."""
        with self._lock:
            self._armed = True

    def start(self) -> HoldingProxy:
        t = threading.Thread(target=self._accept, name="holding-proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> HoldingProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the forwarding ---------------------------------------------------------------
    def _accept(self) -> None:
        n = 0
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            n += 1
            with self._lock:
                self._sockets += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                t = threading.Thread(
                    target=self._pump, args=(src, dst, up), name=f"holding-proxy-{n}", daemon=True
                )
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        tail = b""  # the end of the previous chunk: a marker split across two reads
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                caught = False
                with self._lock:
                    if upstream and self._armed and not self._holding and self.marker in tail + data:
                        self._holding = caught = True
                    forward = upstream or not self._holding
                if forward:
                    dst.sendall(data)
                if caught:
                    self.caught.set()  # after the chunk went out: the server has it
                if upstream:
                    tail = (tail + data)[-(len(self.marker) - 1) :] if len(self.marker) > 1 else b""
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
