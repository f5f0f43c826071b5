"""Serving the UI from a thread of the ``run`` process (uvicorn), beside the runtime."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from buildflow.errors import BuildflowError, ConfigurationError, MissingDependencyError
from buildflow.runtime.base import BoundProcessor
from buildflow.ui.config import UiConfig
from buildflow.ui.state import UiState

__all__ = ["UiServer"]

log = logging.getLogger("buildflow.ui")


class UiServer:
    """The UI of a run, served by uvicorn on a daemon thread::

        state = UiState()
        with UiServer(bound, state, UiConfig(port=0)) as server:
            print(server.url)
            InProcessRuntime().run(bound, options, on_progress=state.update)

    Args:
        bound: The app's processors, bound to the run's environment.
        state: Fed by the runtime's ``on_progress`` (pass ``state.update``).
        config: Address, token, limits. Checked when built (see :class:`UiConfig`).
    """

    def __init__(self, bound: Sequence[BoundProcessor], state: UiState, config: UiConfig) -> None:
        self.bound = list(bound)
        self.state = state
        self.config = config
        self._server: Any = None
        self._app: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.url: str | None = None

    def _bind(self) -> socket.socket:
        host, port = self.config.host, self.config.port
        try:
            infos = socket.getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as e:
            raise ConfigurationError(f"UI host {host!r} cannot be resolved: {e.strerror}") from e
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"UI port {port} on {host} is in use; pass --ui-port 0 for a free one, or another port"
                ) from e
            raise ConfigurationError(f"cannot listen on {host}:{port} for the UI: {e.strerror}") from e
        return sock

    def start(self, timeout_s: float = 15.0) -> str:
        """Bind, start serving, and return the page's URL (``http://HOST:PORT/``).

        Raises:
            ConfigurationError: the address cannot be bound (port in use, unknown host).
            MissingDependencyError: the ``ui`` extra is not installed.
            BuildflowError: the server did not start within ``timeout_s`` seconds.
        """
        try:
            import uvicorn

            from buildflow.ui.app import create_app
        except ImportError as e:
            raise MissingDependencyError(
                f"the UI needs FastAPI and uvicorn ({e.name} is missing): "
                "run pip install 'buildflow[ui]' to fix it"
            ) from e
        app = create_app(self.bound, self.state, self.config)
        sock = self._bind()
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                log_config=None,  # keep the CLI's logging set-up
                http="h11",
                ws="none",
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="buildflow-ui", daemon=True
        )
        self._server, self._thread, self._socket, self._app = server, thread, sock, app
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise BuildflowError(f"the UI server did not start within {timeout_s:.0f} s")
            time.sleep(0.02)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (open event streams end), and stop the query helper process."""
        server, thread = self._server, self._thread
        if self._app is not None:
            self._app.state.ui.closing = True  # open event streams end at their next tick
            time.sleep(min(1.0, 2 * self.config.poll_interval_s))
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("the UI server did not stop within %.0f s", timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = self._app = None

    def __enter__(self) -> UiServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
