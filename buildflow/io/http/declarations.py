"""The :class:`HTTPEndpoint` source declaration and the :class:`HTTPRequestEvent` it delivers."""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from typing import ClassVar

from buildflow.errors import ConfigurationError
from buildflow.events import FileEvent
from buildflow.io.base import SourceDeclaration

__all__ = ["HTTPEndpoint", "HTTPRequestEvent", "TOKEN_ENV"]

#: The environment variable an :class:`HTTPEndpoint` without ``token`` reads its token from.
TOKEN_ENV = "BUILDFLOW_HTTP_TOKEN"

_ROUTE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


@dataclasses.dataclass(frozen=True, eq=False)
class HTTPRequestEvent(FileEvent):
    """One image sent to an :class:`HTTPEndpoint` (one ``POST``).

    Attributes:
        name: The multipart part's file name, reduced to a safe base name, or
            ``request-<id>.<ext>`` for a raw body (the extension from the sniffed format).
        data: The image's bytes, as sent.
        content_type: The image type sniffed from the bytes' signature (``image/jpeg``,
            ``image/png``, ...), not the one the client claimed.
        event_id: ``<route>#<id>``: ``<id>`` is the request's ``Idempotency-Key`` header when
            it sends one (a retried request then updates its rows instead of adding rows),
            else a random UUID.
        event_time: When the request's body was read (UTC).
        metadata: ``route``, ``content_type``, ``bytes`` (decimal), ``client`` (the peer's
            address) and ``filename`` (multipart only), all strings.
    """

    name: str
    data: bytes = dataclasses.field(repr=False)
    content_type: str
    event_id: str
    event_time: datetime.datetime
    metadata: Mapping[str, str]

    @property
    def blob(self) -> bytes:
        """The image's bytes (already in memory)."""
        return self.data

    @property
    def size(self) -> int:
        """Bytes of the image (the model layer checks its size limit on it)."""
        return len(self.data)


@dataclasses.dataclass(frozen=True)
class HTTPEndpoint(SourceDeclaration):
    """A synchronous predict endpoint: each ``POST`` of an image to ``route`` is one event; the
    request waits for the processor's rows and gets them back as JSON.

    The rows are written to the processor's sink (and a failure to its dead-letter
    destination) like those of any source, and the answer is sent only once they are
    written. Requests that arrive while the processor is busy are micro-batched together
    (up to the processor's ``max_batch_size``, within ``max_batch_latency_ms``). Runs in the
    in-process runtime (``buildflow run``); the ray runtime refuses it.

    Request: ``POST <route>`` with the image as the raw body (``Content-Type: image/...``
    or ``application/octet-stream``) or as ``multipart/form-data`` with exactly one file
    part. Answers:

    * 200 ``{"event_id", "processor", "rows": [...]}``: the rows as written to the sink.
    * 422 ``{"event_id", "processor", "detail", "error_type", "stage", "dead_letter"}``:
      ``process`` (or decoding, validation, the sink) failed for this image; the dead-letter
      record is written. The other images of its micro-batch are not affected.
    * 400 (malformed multipart, not exactly one file, an empty body, a bad
      ``Idempotency-Key``), 401 (token missing or wrong), 403 (a non-loopback ``Host`` on a
      loopback bind, or another ``Origin``), 404/405 (another path or method), 413 (over
      ``max_bytes``; a chunked body is read up to it), 415 (a non-image content type, or
      bytes that do not start like JPEG, PNG, GIF, WebP, BMP or TIFF), 503 (too many requests waiting, or the
      run is stopping; ``Retry-After`` says when to try again), 504 (no answer within
      ``timeout_s``; the image is still processed and written).
    * ``GET /healthz``: 200 ``{"status": "ok"}`` while the run accepts requests.

    Args:
        route: The path images are posted to, e.g. ``"/classify"``.
        host: Address to listen on. Loopback (``127.0.0.1``, the default) needs no token;
            any other address requires one.
        port: TCP port; 0 picks a free one (``buildflow run`` prints the URL).
        token: Access token every request must carry (``Authorization: Bearer <token>`` or
            ``X-Buildflow-Token: <token>``); at least 16 printable ASCII characters. Default:
            the ``BUILDFLOW_HTTP_TOKEN`` environment variable at run time, if set (keep
            tokens out of code).
        max_bytes: Largest image accepted, bytes (413 above it). Default 20 MiB.
        timeout_s: How long a request waits for its rows before a 504, seconds.
        max_pending: Requests waiting for the processor at most; more get a 503.

    Raises:
        ConfigurationError: a route that is not ``/`` followed by URL-safe path segments, a
            port outside 0..65535, or a limit that is not positive. (The token rules are
            checked when the endpoint starts, with the environment's token.)
    """

    event_type: ClassVar[type] = HTTPRequestEvent

    route: str = "/classify"
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = dataclasses.field(default=None, repr=False)
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 60.0
    max_pending: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.route, str) or not _ROUTE.match(self.route) or self.route == "/healthz":
            raise ConfigurationError(
                f"HTTPEndpoint: invalid route {self.route!r}: expected '/' followed by path segments "
                "of letters, digits and '._~-' (e.g. '/classify'), other than '/healthz'"
            )
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigurationError(f"HTTPEndpoint: port {self.port!r} is not in 0..65535 (0: a free port)")
        for name in ("max_bytes", "timeout_s", "max_pending"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(
                    f"HTTPEndpoint: {name} must be positive, got {getattr(self, name)!r}"
                )

    def describe(self) -> str:
        return f"HTTPEndpoint(route={self.route!r}, host={self.host!r}, port={self.port})"
