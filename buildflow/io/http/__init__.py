"""A synchronous predict endpoint: :class:`HTTPEndpoint` (a source whose events are ``POST``-ed
images, answered with their rows) and the :class:`HTTPRequestEvent` it delivers. The server
(Starlette on uvicorn) is in :mod:`.provider`, imported only when a run opens the source."""

from buildflow.io.http.declarations import HTTPEndpoint as HTTPEndpoint
from buildflow.io.http.declarations import HTTPRequestEvent as HTTPRequestEvent

__all__ = ["HTTPEndpoint", "HTTPRequestEvent"]
