"""The server behind :class:`~buildflow.io.http.HTTPEndpoint`: a Starlette app on uvicorn, on a
thread of its own, handing each posted image to the run's event loop as one event.

How a request travels:

1. The server thread checks the request (Host, Origin, token, content type, size, image
   signature), builds an :class:`~buildflow.io.http.HTTPRequestEvent` and an
   :class:`~buildflow.io.base.Envelope` whose ``ack_id`` is a :class:`concurrent.futures.Future`,
   and puts the envelope on the runtime's queue (``loop.call_soon_threadsafe``).
2. The runtime pulls it like any event: requests waiting together form one micro-batch.
3. Once the rows (or the dead-letter record) are written, the runtime calls
   :meth:`HTTPEndpointSource.settle` with each event's outcome and then
   :meth:`~HTTPEndpointSource.ack`, which resolves the future; the request answers 200 with
   the rows or 422 with the error. A :meth:`~HTTPEndpointSource.nack` (hard stop) answers
   503.

The server runs on its own thread (as the web UI's does) so that request parsing never
delays the pipeline's event loop, and so that uvicorn does not take over the run's
SIGINT/SIGTERM handling (it installs signal handlers only on the main thread).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import decimal
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any

from buildflow.errors import BuildflowError, ConfigurationError
from buildflow.extras import import_optional
from buildflow.io.base import Envelope, EventOutcome, SourceProvider, SourceRuntime
from buildflow.io.http.declarations import TOKEN_ENV, HTTPEndpoint, HTTPRequestEvent
from buildflow.provisioning import Resource
from buildflow.ui.config import MIN_TOKEN_CHARS, is_loopback
from buildflow.ui.uploads import IMAGE_SIGNATURES, safe_object_name, sniff_image

__all__ = ["HTTPEndpointProvider", "HTTPEndpointSource"]

log = logging.getLogger("buildflow.io.http")

_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
_FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and part headers
_RAW_TYPES = {"application/octet-stream"}
_FORMATS = ", ".join(sorted({ctype.split("/")[1].upper() for _, _, ctype, _ in IMAGE_SIGNATURES}))
_STOPPED = object()  # a future's result: the run stopped before the event was processed
_MAX_KEY_CHARS = 200


def _check_token(token: str | None, host: str) -> None:
    if token is not None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigurationError(
                f"the HTTPEndpoint token is {len(token)} characters long; use at least {MIN_TOKEN_CHARS}, "
                "e.g. one from `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            )
        if not all(33 <= ord(c) <= 126 and c not in '";\\,' for c in token):
            raise ConfigurationError(
                "the HTTPEndpoint token may only contain printable ASCII characters other than space, "
                "quotes, ';', ',' and '\\' (it travels in a header)"
            )
    elif not is_loopback(host):
        raise ConfigurationError(
            f"the HTTPEndpoint would listen on {host!r}, which is not a loopback address, without an "
            f"access token; set {TOKEN_ENV} (or HTTPEndpoint(token=...)), or bind to 127.0.0.1 (the default)"
        )


def _json_value(value: Any) -> Any:
    """``json.dumps`` fallback for the values a row dict holds."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, default=_json_value, ensure_ascii=False).encode()


class HTTPEndpointSource(SourceRuntime[HTTPRequestEvent]):
    """The live endpoint: the queue of requests waiting for the processor, and the server.

    Built by :meth:`HTTPEndpointProvider.open` on the run's event loop.
    """

    wants_outcomes = True

    def __init__(
        self, declaration: HTTPEndpoint, consumer: str, sock: socket.socket, token: str | None, url: str
    ) -> None:
        self.declaration = declaration
        self.consumer = consumer
        self.url = url
        self._token = token
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Envelope[HTTPRequestEvent]] = asyncio.Queue()
        self._outcomes: dict[str, EventOutcome] = {}
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()  # handed to the loop, not answered
        self._closing = False
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._start(sock)

    # -- the server -----------------------------------------------------------------------
    def _start(self, sock: socket.socket, timeout_s: float = 15.0) -> None:
        uvicorn = import_optional("uvicorn", extra="http", needed_by="HTTPEndpoint")
        server = uvicorn.Server(
            uvicorn.Config(
                self._app(),
                log_level="warning",
                access_log=False,
                log_config=None,  # keep the CLI's logging set-up
                http="h11",
                ws="none",
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"buildflow-http-{self.consumer}", daemon=True
        )
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise BuildflowError(
                    f"the HTTPEndpoint server at {self.url} did not start within {timeout_s:.0f} s"
                )
            time.sleep(0.01)
        log.info("processor %s: serving POST %s", self.consumer, self.url)

    def _app(self) -> Any:
        starlette_apps = import_optional("starlette.applications", extra="http", needed_by="HTTPEndpoint")
        routing = import_optional("starlette.routing", extra="http", needed_by="HTTPEndpoint")
        exceptions = import_optional("starlette.exceptions", extra="http", needed_by="HTTPEndpoint")
        responses = import_optional("starlette.responses", extra="http", needed_by="HTTPEndpoint")
        import_optional("python_multipart", extra="http", needed_by="HTTPEndpoint (multipart/form-data)")

        def reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
            return responses.Response(
                _dumps(body), status_code=status, media_type="application/json", headers=headers
            )

        async def on_http_error(request: Any, exc: Any) -> Any:
            return reply(exc.status_code, {"detail": exc.detail}, getattr(exc, "headers", None))

        async def healthz(request: Any) -> Any:
            if self._closing:
                return reply(503, {"status": "stopping"})
            return reply(200, {"status": "ok"})

        async def predict(request: Any) -> Any:
            status, body, headers = await self._handle(request)
            return reply(status, body, headers)

        app = starlette_apps.Starlette(
            routes=[
                routing.Route(self.declaration.route, predict, methods=["POST"]),
                routing.Route("/healthz", healthz, methods=["GET"]),
            ],
            exception_handlers={exceptions.HTTPException: on_http_error},
        )
        return _Guard(app, self.declaration.host, self._token)

    async def _handle(self, request: Any) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        decl = self.declaration
        if self._closing:
            return 503, {"detail": "the run is stopping; send the image again later"}, {"Retry-After": "5"}
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= _MAX_KEY_CHARS and all(32 < ord(c) < 127 for c in key)):
            return (
                400,
                {
                    "detail": f"Idempotency-Key {key[:60]!r} is not 1..{_MAX_KEY_CHARS} printable ASCII "
                    "characters without spaces; send e.g. a UUID"
                },
                None,
            )
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        length = request.headers.get("content-length")
        multipart = media == "multipart/form-data"
        if media and not (multipart or media.startswith("image/") or media in _RAW_TYPES):
            return (
                415,
                {
                    "detail": f"content type {media!r} is not an image; send the image as the body with "
                    "Content-Type image/jpeg (image/png, ...) or application/octet-stream, or as "
                    "multipart/form-data with one file part"
                },
                None,
            )
        most = decl.max_bytes + (_FORM_OVERHEAD_BYTES if multipart else 0)
        if length is not None and length.isdigit() and int(length) > most:
            return (
                413,
                {"detail": f"request of {int(length)} bytes is over the limit of {decl.max_bytes} bytes"},
                None,
            )
        filename: str | None = None
        if multipart:
            async with request.form(max_files=2, max_fields=8) as form:
                files = [v for _, v in form.multi_items() if not isinstance(v, str)]
                if len(files) != 1:
                    return (
                        400,
                        {
                            "detail": "send exactly one image per request (multipart/form-data with one "
                            f"file part); got {len(files)}"
                        },
                        None,
                    )
                filename = files[0].filename
                data = await files[0].read(decl.max_bytes + 1)
        else:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():  # a chunked body has no length: read up to the limit
                size += len(chunk)
                if size > decl.max_bytes:
                    return 413, {"detail": f"image is over the limit of {decl.max_bytes} bytes"}, None
                chunks.append(chunk)
            data = b"".join(chunks)
        if len(data) > decl.max_bytes:
            return 413, {"detail": f"image is over the limit of {decl.max_bytes} bytes"}, None
        if not data:
            return 400, {"detail": "empty body: send the image's bytes"}, None
        kind = sniff_image(data)
        if kind is None:
            return 415, {"detail": f"not an image: its content does not start like {_FORMATS}"}, None
        rid = uuid.uuid4().hex
        event_id = f"{decl.route}#{key or rid}"
        now = datetime.datetime.now(datetime.UTC)
        client = request.client
        metadata = {
            "route": decl.route,
            "content_type": kind[0],
            "bytes": str(len(data)),
            "client": f"{client.host}:{client.port}" if client else "",
        }
        if filename is not None:
            metadata["filename"] = filename
        name = safe_object_name(filename, kind[1]) if filename else f"request-{rid[:12]}{kind[1]}"
        event = HTTPRequestEvent(
            name=name, data=data, content_type=kind[0], event_id=event_id, event_time=now, metadata=metadata
        )
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        envelope = Envelope(event=event, event_id=event_id, ack_id=future, received_at=now, object_name=name)
        with self._lock:
            if self._closing:
                return (
                    503,
                    {"detail": "the run is stopping; send the image again later"},
                    {"Retry-After": "5"},
                )
            if len(self._pending) >= decl.max_pending:
                return (
                    503,
                    {
                        "detail": f"{len(self._pending)} requests are waiting for the processor "
                        "(max_pending); send it again"
                    },
                    {"Retry-After": "1"},
                )
            self._pending.add(future)
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, envelope)
        except RuntimeError:  # the run's loop is closed
            with self._lock:
                self._pending.discard(future)
            return 503, {"detail": "the run has stopped"}, None
        waiter = asyncio.wrap_future(future)
        done, _ = await asyncio.wait({waiter}, timeout=decl.timeout_s)  # never cancels the event
        if not done:
            return (
                504,
                {
                    "event_id": event_id,
                    "detail": f"no answer within {decl.timeout_s:g} s (timeout_s); the image is still "
                    "processed and its rows written to the sink",
                },
                None,
            )
        outcome = waiter.result()
        if outcome is _STOPPED or outcome is None:
            return (
                503,
                {
                    "event_id": event_id,
                    "detail": "the run stopped before this image was processed; send it again",
                },
                {"Retry-After": "5"},
            )
        assert isinstance(outcome, EventOutcome)
        if outcome.dead_letter is not None:
            dl = outcome.dead_letter
            return (
                422,
                {
                    "event_id": event_id,
                    "processor": self.consumer,
                    "detail": dl.get("reason"),
                    "error_type": dl.get("error_type"),
                    "stage": dl.get("stage"),
                    "dead_letter": dl,
                },
                None,
            )
        return 200, {"event_id": event_id, "processor": self.consumer, "rows": outcome.rows}, None

    # -- the SourceRuntime contract -------------------------------------------------------------
    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[HTTPRequestEvent]]:
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return []
        got = [first]
        while len(got) < max_events and not self._queue.empty():
            got.append(self._queue.get_nowait())
        return got

    async def settle(self, outcomes: Sequence[EventOutcome]) -> None:
        for o in outcomes:
            self._outcomes[o.event_id] = o

    def _resolve(self, future: concurrent.futures.Future[Any], answer: Any) -> None:
        with self._lock:
            self._pending.discard(future)
        if not future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # raced a cancel
                future.set_result(answer)

    def _answer(self, envelopes: Sequence[Envelope[HTTPRequestEvent]], result: Any) -> None:
        for env in envelopes:
            self._resolve(env.ack_id, self._outcomes.get(env.event_id) if result is None else result)
        for env in envelopes:
            self._outcomes.pop(env.event_id, None)

    async def ack(self, envelopes: Sequence[Envelope[HTTPRequestEvent]]) -> None:
        self._answer(envelopes, None)

    async def nack(self, envelopes: Sequence[Envelope[HTTPRequestEvent]]) -> None:
        self._answer(envelopes, _STOPPED)

    async def backlog(self) -> int | None:
        return self._queue.qsize()

    async def is_drained(self) -> bool:
        with self._lock:
            return not self._pending

    async def close(self) -> None:
        """Answer every request not answered yet with 503 (the run stopped before writing its
        rows: a hard stop, or requests that came during the drain), then stop the server."""
        with self._lock:
            self._closing = True
            left = list(self._pending)
        for future in left:
            self._resolve(future, _STOPPED)
        while not self._queue.empty():
            self._queue.get_nowait()
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)
            if thread.is_alive():
                log.warning("the HTTPEndpoint server at %s did not stop within 10 s", self.url)
        self._socket.close()
        self._server = self._thread = None


class _Guard:
    """Access control in front of every request (pure ASGI), as the web UI's:

    * Bound to loopback: only ``Host: 127.0.0.1|localhost|[::1]`` is answered (DNS
      rebinding cannot turn another site's name into this server); else 403.
    * A POST with an ``Origin`` header must come from this host: another web page cannot
      make a browser post images here; else 403.
    * With a token: every request but ``GET /healthz`` carries it (``Authorization: Bearer``
      or ``X-Buildflow-Token``); else 401.
    """

    def __init__(self, app: Any, host: str, token: str | None) -> None:
        self.app = app
        self.loopback = is_loopback(host)
        self.token = token

    @staticmethod
    async def _refuse(send: Any, status: int, detail: str) -> None:
        body = _dumps({"detail": detail})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host_header = headers.get("host", "")
        if self.loopback:
            hostname = urllib.parse.urlsplit(f"//{host_header}").hostname or ""
            if hostname.lower() not in _LOOPBACK_NAMES:
                await self._refuse(send, 403, f"Host {host_header!r} is not a loopback name")
                return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and urllib.parse.urlsplit(origin).netloc != host_header:
                await self._refuse(send, 403, f"cross-origin request from {origin!r} refused")
                return
        if self.token is not None and not (scope["method"] == "GET" and scope["path"] == "/healthz"):
            auth = headers.get("authorization", "")
            given = (
                auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-buildflow-token")
            )
            if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
                await self._refuse(
                    send,
                    401,
                    "this endpoint needs its access token: send the header 'Authorization: Bearer <token>'",
                )
                return
        await self.app(scope, receive, send)


class HTTPEndpointProvider(SourceProvider):
    """:class:`~buildflow.io.http.HTTPEndpoint` in any environment: nothing to provision; the
    server starts when the run opens the source.

    :meth:`listen` binds the address early (``buildflow run`` does, to print the URL before
    the model loads); :meth:`open` serves on that socket, or binds one itself.
    """

    answers_senders = True

    def __init__(self, declaration: HTTPEndpoint, environment: Any) -> None:
        super().__init__(declaration, environment)
        self.http: HTTPEndpoint = declaration
        self._socket: socket.socket | None = None
        self.url: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_socket": None}

    def resources(self, consumer: str) -> list[Resource]:
        return []

    def token(self) -> str | None:
        """The access token: the declaration's, else ``$BUILDFLOW_HTTP_TOKEN``, else None."""
        return self.http.token or os.environ.get(TOKEN_ENV) or None

    def listen(self) -> str:
        """Bind the endpoint's address now (once) and return its URL,
        ``http://HOST:PORT/route`` (with the port the system chose for port 0).

        Raises:
            ConfigurationError: a non-loopback host without a token, a bad token, a port in
                use, or a host that cannot be resolved.
        """
        if self._socket is not None and self.url is not None:
            return self.url
        decl = self.http
        _check_token(self.token(), decl.host)
        try:
            infos = socket.getaddrinfo(
                decl.host.strip("[]"), decl.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as e:
            raise ConfigurationError(
                f"HTTPEndpoint host {decl.host!r} cannot be resolved: {e.strerror}"
            ) from e
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(256)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"HTTPEndpoint port {decl.port} on {decl.host} is in use; choose another port, "
                    "or 0 for a free one"
                ) from e
            raise ConfigurationError(
                f"cannot listen on {decl.host}:{decl.port} for the HTTPEndpoint: {e.strerror}"
            ) from e
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self._socket, self.url = sock, f"http://{shown}:{port}{decl.route}"
        return self.url

    def open(self, consumer: str) -> HTTPEndpointSource:
        """Start serving (on the socket :meth:`listen` bound, or a new one).

        Raises:
            ConfigurationError: see :meth:`listen`.
            MissingDependencyError: the ``http`` extra (Starlette, uvicorn, python-multipart)
                is not installed.
            BuildflowError: the server did not start within 15 s.
        """
        url = self.listen()
        sock, self._socket = self._socket, None
        assert sock is not None
        try:
            return HTTPEndpointSource(self.http, consumer, sock, self.token(), url)
        except BaseException:
            sock.close()
            raise
