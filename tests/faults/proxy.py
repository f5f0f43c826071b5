"""A TCP proxy on 127.0.0.1 whose link can be cut and restored, for fault tests.

The local Kafka broker (tansu) and Pub/Sub server (pstest) keep their state in memory only:
restarting them would erase the topics and messages the fault tests need to survive. What a
client sees of a server restart is every connection reset and new connections refused until
the server is back; :meth:`TcpProxy.cut` does exactly that (it closes the listening socket and
resets every open connection) and :meth:`TcpProxy.restore` listens again on the same port.

This is test code on the other side of the client under test, not a mock of it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``, one thread pair per link.

    Use as a context manager, or call :meth:`close`. ``port`` is fixed for the proxy's life,
    so a client configured with it reconnects to the same address after :meth:`restore`.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._links: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self.port = port
        self.connections = 0  # accepted since start (for tests that want to see reconnects)
        self.restore()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Listen (again) on ``port`` and forward new connections."""
        with self._lock:
            if self._listener is not None or self._closed:
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(64)
            self.port = s.getsockname()[1]
            self._listener = s
        threading.Thread(
            target=self._accept, args=(s,), name=f"proxy-accept-{self.port}", daemon=True
        ).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one (RST, as a crashed server would)."""
        with self._lock:
            listener, self._listener = self._listener, None
            links, self._links = self._links, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for s in links:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close() sends RST instead of FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed = True
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._links.update((client, upstream))
                self.connections += 1
            done = [0]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, done: list[int]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            done[0] += 1
            last = done[0] == 2
            if last:
                self._links.difference_update((src, dst))
        if last:  # both directions finished: release the pair
            src.close()
            dst.close()
