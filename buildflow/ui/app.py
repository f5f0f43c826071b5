"""The web UI's ASGI app (FastAPI): one page, a JSON API, and a server-sent event stream.

Endpoints (``processor`` query parameter: whose source/sink, default the first processor):

* ``GET /``: the page. ``GET /static/...``: its script, style and vendored libraries.
* ``GET /api/config``: processors (each with the data set it prefers, or null), upload
  limits, and the registered data sets (:mod:`buildflow.datasets`: ``name``, ``title``,
  ``splits`` as ``{split: size}``, ``max_per_request``).
* ``POST /api/uploads``: ``multipart/form-data`` with one or more ``files`` parts. Each
  must be at most ``max_upload_bytes`` (413) and start like an image (415); otherwise
  nothing of the request is written. Names are reduced to safe base names. 201 with
  ``{"uploaded": [{"file", "name", "where", "content_type", "bytes"}]}``.
* ``GET /api/rows?limit=N``: the newest result rows as gallery cards (see
  :class:`~buildflow.ui.tables.RowView`), read through the sink's ``query()``.
* ``GET /api/dead-letters?limit=N``: the newest dead letters of the processor.
* ``GET /api/metrics``: the run's counters, rates and latency percentiles
  (:meth:`~buildflow.ui.state.UiState.snapshot`).
* ``GET /api/events``: server-sent events: ``metrics`` (on every progress report),
  ``rows`` and ``dead_letters`` (the newest ones, whenever they change), ``sink_error``
  (a query of the sink failed).
* ``GET /api/thumbnails/{object name}``: a JPEG thumbnail, from the uploaded bytes or read
  back through the source provider's blob reader.
* ``POST /api/datasets/{name}``: ``{"processor", "split", "start", "end"}`` (split: default
  the data set's first) publishes examples ``start..end-1`` of a registered data set into
  the processor's source, each with its true label where the source carries labels (Kafka
  headers, Pub/Sub attributes). 201 with ``{"processor", "dataset", "split", "sent",
  "first"}``; 404 for a data set that is not registered, 422 for a bad split or range (at
  most ``max_per_request`` examples), 409 when its files cannot be read.

A processor states the data set its form preselects with a class attribute
``dataset = "NAME"`` (:data:`DATASET_ATTRIBUTE`); the page offers every registered one.

Errors are ``{"detail": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from buildflow.datasets import Dataset, registered
from buildflow.errors import BuildflowError, ConfigurationError, ResourceMissingError
from buildflow.io.base import SinkProvider
from buildflow.runtime.base import BoundProcessor
from buildflow.ui.config import UiConfig
from buildflow.ui.state import UiState
from buildflow.ui.tables import QueryRunner, RowView, TableRef, dead_letters_sql, latest_rows_sql, table_ref
from buildflow.ui.thumbnails import ThumbnailCache, make_thumbnail, object_reader
from buildflow.ui.uploads import IMAGE_SIGNATURES, Uploader, UploadItem, safe_object_name, sniff_image

__all__ = ["create_app", "STATIC_DIR", "TOKEN_COOKIE", "DATASET_ATTRIBUTE", "preferred_dataset"]

DATASET_ATTRIBUTE = "dataset"
"""The processor class attribute naming the registered data set its page form preselects."""


def preferred_dataset(bound: BoundProcessor) -> str | None:
    """The data set ``bound``'s processor names in its ``dataset`` attribute, or None."""
    name = getattr(bound.spec.processor, DATASET_ATTRIBUTE, None)
    return name if isinstance(name, str) else None


log = logging.getLogger("buildflow.ui")

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "buildflow_ui_token"
_FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and part headers
_ACCEPT = sorted({ctype for _, _, ctype, _ in IMAGE_SIGNATURES})
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


class _Guard:
    """Access control in front of every HTTP request (pure ASGI, so event streams pass
    through untouched).

    * Bound to loopback: only ``Host: 127.0.0.1|localhost|[::1]`` is answered (DNS
      rebinding cannot turn another site's name into this server).
    * A POST must not come from another origin (``Origin`` header, when present, must
      match ``Host``): another web page cannot make the browser upload files here.
    * With a token: the request must carry it (header, ``?token=``, or the cookie set when
      the page was opened with ``?token=``); else 401.
    """

    def __init__(self, app: ASGIApp, config: UiConfig) -> None:
        self.app = app
        self.config = config

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _given_token(self, scope: Scope, headers: Headers) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query string."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        if "x-buildflow-token" in headers:
            return headers["x-buildflow-token"], False
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                return urllib.parse.unquote(value), False
        return None, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host_header = headers.get("host", "")
        if self.config.loopback:
            hostname = urllib.parse.urlsplit(f"//{host_header}").hostname or ""
            if hostname.lower() not in _LOOPBACK_NAMES:
                await self._refuse(send, 403, f"Host {host_header!r} is not a loopback name")
                return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and urllib.parse.urlsplit(origin).netloc != host_header:
                await self._refuse(send, 403, f"cross-origin request from {origin!r} refused")
                return
        token = self.config.token
        if token is None:
            await self.app(scope, receive, send)
            return
        given, in_query = self._given_token(scope, headers)
        if given is None or not secrets.compare_digest(given.encode(), token.encode()):
            await self._refuse(
                send,
                401,
                "this buildflow UI needs its access token: open the page as /?token=<token>, or send "
                "the header 'Authorization: Bearer <token>'",
            )
            return
        if not in_query:
            await self.app(scope, receive, send)
            return
        cookie = f"{TOKEN_COOKIE}={urllib.parse.quote(token)}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


@dataclasses.dataclass
class _Feed:
    """The newest rows and dead letters of one processor, refreshed by the poller."""

    rows: list[dict[str, Any]] | None = None
    rows_error: str | None = None
    dead_letters: list[dict[str, Any]] | None = None
    dead_letters_error: str | None = None
    version: int = 0
    counts: tuple[int, int] | None = None
    queried_at: float = 0.0


class _Ui:
    """Everything the endpoints share."""

    def __init__(self, bound: Sequence[BoundProcessor], state: UiState, config: UiConfig) -> None:
        if not bound:
            raise ConfigurationError("the UI needs at least one processor")
        self.bound = {b.name: b for b in bound}
        self.first = bound[0].name
        self.state = state
        self.config = config
        self.queries = QueryRunner()
        self.thumbnails = ThumbnailCache()
        self.uploaders = {b.name: Uploader(b) for b in bound}
        self.views = {b.name: RowView(b.spec.schema) for b in bound}
        self.row_tables: dict[str, TableRef | None] = {}
        self.dead_tables: dict[str, TableRef | None] = {}
        for b in bound:
            self.row_tables[b.name] = self._ref(b, rows=True)
            self.dead_tables[b.name] = self._ref(b, rows=False)
        self.feeds = {b.name: _Feed() for b in bound}
        self.listeners = 0
        self.closing = False

    @staticmethod
    def _ref(b: BoundProcessor, rows: bool) -> TableRef | None:
        try:
            return table_ref(b.sink, b.spec.schema) if rows else table_ref(b.dead_letter, None)
        except BuildflowError as e:  # e.g. BigQuery without a project
            log.warning("UI: cannot query %s of %s: %s", "rows" if rows else "dead letters", b.name, e)
            return None

    def pick(self, processor: str | None) -> BoundProcessor:
        name = processor or self.first
        if name not in self.bound:
            raise HTTPException(
                404, f"no processor named {name!r}; processors: {', '.join(map(repr, self.bound))}"
            )
        return self.bound[name]

    async def rows(self, b: BoundProcessor, limit: int) -> list[dict[str, Any]]:
        ref = self.row_tables[b.name]
        if ref is None:
            raise HTTPException(501, f"the sink {b.spec.sink.describe()} cannot be queried with SQL")
        rows = await self._query(b.sink, ref, latest_rows_sql(ref, limit))
        return self.views[b.name].cards(rows)

    async def dead_letters(self, b: BoundProcessor, limit: int) -> list[dict[str, Any]]:
        ref = self.dead_tables[b.name]
        if ref is None:
            raise HTTPException(
                501, f"the dead-letter sink {b.spec.dead_letter.describe()} cannot be queried"
            )
        return await self._query(b.dead_letter, ref, dead_letters_sql(ref, b.name, limit))

    async def _query(self, sink: SinkProvider, ref: TableRef, sql: str) -> list[dict[str, Any]]:
        try:
            return await self.queries.query(sink, sql)
        except NotImplementedError as e:
            raise HTTPException(501, str(e)) from e
        except ResourceMissingError as e:
            raise HTTPException(409, str(e)) from e
        except Exception as e:
            raise HTTPException(502, f"query of {ref.sql_name} failed: {type(e).__name__}: {e}") from e

    async def refresh(self, name: str) -> None:
        """Re-read the newest rows and dead letters of ``name`` into its feed."""
        b, feed = self.bound[name], self.feeds[name]
        feed.counts = self.state.counts(name)
        feed.queried_at = time.monotonic()
        changed = False
        for attr, fetch, limit in (
            ("rows", self.rows, self.config.gallery_size),
            ("dead_letters", self.dead_letters, self.config.dead_letter_limit),
        ):
            try:
                value: Any = await fetch(b, limit)
                error = None
            except HTTPException as e:
                value, error = getattr(feed, attr), str(e.detail)
            if value != getattr(feed, attr) or error != getattr(feed, f"{attr}_error"):
                setattr(feed, attr, value)
                setattr(feed, f"{attr}_error", error)
                changed = True
        if changed:
            feed.version += 1

    async def poll(self) -> None:
        """While a page listens: refresh a processor's feed when its row or dead-letter
        count changed, and every ``refresh_interval_s`` regardless."""
        while True:
            if self.listeners:
                for name, feed in self.feeds.items():
                    stale = time.monotonic() - feed.queried_at >= self.config.refresh_interval_s
                    if feed.counts != self.state.counts(name) or stale:
                        await self.refresh(name)
            await asyncio.sleep(self.config.poll_interval_s)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _bounded(value: int | None, default: int, most: int) -> int:
    if value is None:
        return default
    if not 1 <= value <= most:
        raise HTTPException(422, f"limit must be in 1..{most}, got {value!r}")
    return value


def create_app(bound: Sequence[BoundProcessor], state: UiState, config: UiConfig | None = None) -> FastAPI:
    """The UI for ``bound`` (the app's processors, bound to their environment), showing
    ``state`` (fed by the runtime's ``on_progress``). Serve it with :class:`UiServer`, or
    any ASGI server.

    Raises:
        ConfigurationError: ``bound`` is empty, or ``config`` is invalid.
    """
    cfg = config or UiConfig()
    ui = _Ui(bound, state, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        poller = asyncio.create_task(ui.poll(), name="buildflow-ui-poll")
        try:
            yield
        finally:
            ui.closing = True
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await run_in_threadpool(ui.queries.close)

    app = FastAPI(
        title="buildflow UI",
        docs_url=None,  # the interactive docs load their scripts from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ui = ui
    app.add_middleware(_Guard, config=cfg)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/config")
    async def get_config() -> dict[str, Any]:
        procs = [
            {
                "name": b.name,
                "source": b.spec.source.describe(),
                "sink": b.spec.sink.describe(),
                "delivery": ui.uploaders[b.name].kind,
                "rows_queryable": ui.row_tables[b.name] is not None,
                "dataset": preferred_dataset(b),
            }
            for b in ui.bound.values()
        ]
        return {
            "processors": procs,
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_files_per_request": cfg.max_files_per_request,
            "accept": _ACCEPT,
            "gallery_size": cfg.gallery_size,
            "datasets": [
                {
                    "name": d.name,
                    "title": d.title,
                    "splits": dict(d.splits),
                    "max_per_request": d.max_per_request,
                }
                for d in registered().values()
            ],
        }

    @app.get("/api/metrics")
    async def get_metrics() -> dict[str, Any]:
        return state.snapshot()

    @app.get("/api/rows")
    async def get_rows(processor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        b = ui.pick(processor)
        n = _bounded(limit, cfg.gallery_size, 1000)
        return {"processor": b.name, "rows": await ui.rows(b, n)}

    @app.get("/api/dead-letters")
    async def get_dead_letters(processor: str | None = None, limit: int | None = None) -> dict[str, Any]:
        b = ui.pick(processor)
        n = _bounded(limit, cfg.dead_letter_limit, 1000)
        return {"processor": b.name, "dead_letters": await ui.dead_letters(b, n)}

    @app.post("/api/uploads", status_code=201)
    async def post_uploads(request: Request, processor: str | None = None) -> JSONResponse:
        b = ui.pick(processor)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise HTTPException(411, "send the upload with a Content-Length header")
        most = cfg.max_upload_bytes * cfg.max_files_per_request + _FORM_OVERHEAD_BYTES
        if int(length) > most:
            raise HTTPException(
                413,
                f"request of {int(length)} bytes is over the limit of {cfg.max_files_per_request} files of "
                f"{cfg.max_upload_bytes} bytes",
            )
        items: list[UploadItem] = []
        refused: list[dict[str, Any]] = []
        files: list[str] = []
        async with request.form(max_files=cfg.max_files_per_request, max_fields=16) as form:
            parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not parts:
                raise HTTPException(400, "no files: send multipart/form-data with one or more 'files' parts")
            taken: set[str] = set()
            for part in parts:
                label = part.filename or "(unnamed)"
                files.append(label)
                data = await part.read(cfg.max_upload_bytes + 1)
                if len(data) > cfg.max_upload_bytes:
                    refused.append(
                        {
                            "file": label,
                            "status": 413,
                            "reason": f"larger than the limit of {cfg.max_upload_bytes} bytes",
                        }
                    )
                    continue
                kind = sniff_image(data)
                if kind is None:
                    refused.append(
                        {
                            "file": label,
                            "status": 415,
                            "reason": "not an image: its content does not start like "
                            + ", ".join(t.split("/")[1].upper() for t in _ACCEPT),
                        }
                    )
                    continue
                name = safe_object_name(part.filename, kind[1])
                stem, dot, ext = name.rpartition(".")
                n = 2
                while name in taken:  # two files of one request with one name keep both
                    name, n = f"{stem}-{n}{dot}{ext}", n + 1
                taken.add(name)
                items.append(UploadItem(name, data, kind[0]))
        if refused:
            state.record_upload(0, len(files))
            status = 413 if any(r["status"] == 413 for r in refused) else 415
            detail = "; ".join(f"{r['file']}: {r['reason']}" for r in refused) + " (nothing was uploaded)"
            return JSONResponse({"detail": detail, "refused": refused, "uploaded": []}, status_code=status)

        def thumbnails() -> None:
            for i in items:
                ui.thumbnails.put(b.name, i.name, make_thumbnail(i.data))

        await run_in_threadpool(thumbnails)
        wheres = await _deliver(ui.uploaders[b.name], items)
        state.record_upload(len(items), 0)
        uploaded = [
            {"file": f, "name": i.name, "where": w, "content_type": i.content_type, "bytes": len(i.data)}
            for f, i, w in zip(files, items, wheres)
        ]
        return JSONResponse({"uploaded": uploaded}, status_code=201)

    @app.post("/api/datasets/{name}", status_code=201)
    async def post_dataset(name: str, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
            processor, split = body.get("processor"), body.get("split")
            start, end = int(body["start"]), int(body["end"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise HTTPException(
                422, 'send JSON {"processor": name, "split": name, "start": int, "end": int}'
            ) from e
        b = ui.pick(processor)
        dataset = registered().get(name)
        if dataset is None:
            raise HTTPException(
                404, f"no data set {name!r} is registered; registered: {', '.join(registered())}"
            )
        split = dataset.default_split if split is None else str(split)
        if split not in dataset.splits:
            raise HTTPException(
                422, f"data set {name!r} has no split {split!r}; use one of {list(dataset.splits)}"
            )
        size = dataset.splits[split]
        if not 0 <= start < end <= size or end - start > dataset.max_per_request:
            raise HTTPException(
                422,
                f"range {start}..{end}: give 0 <= start < end <= {size}, "
                f"at most {dataset.max_per_request} images",
            )
        items = await run_in_threadpool(_dataset_items, dataset, split, start, end)
        wheres = await _deliver(ui.uploaders[b.name], items)
        state.record_upload(len(items), 0)
        for i in items:
            ui.thumbnails.put(b.name, i.name, None)  # read back through the provider if asked
        return {"processor": b.name, "dataset": name, "split": split, "sent": len(items), "first": wheres[:1]}

    @app.get("/api/thumbnails/{name:path}")
    async def get_thumbnail(name: str, processor: str | None = None) -> Response:
        b = ui.pick(processor)
        if _bad_object_name(name):
            raise HTTPException(400, f"invalid object name {name!r}")
        known, thumb = ui.thumbnails.get(b.name, name)
        if not known or thumb is None:
            reader = object_reader(b.source, name)
            if reader is not None:
                try:
                    data = await run_in_threadpool(reader.read)
                except FileNotFoundError:
                    data = None
                except Exception as e:  # outside the root, a cloud error: no thumbnail
                    log.debug("UI: no thumbnail for %r: %s", name, e)
                    data = None
                if data is not None:
                    thumb = await run_in_threadpool(make_thumbnail, data)
                    ui.thumbnails.put(b.name, name, thumb)
        if thumb is None:
            raise HTTPException(404, f"no thumbnail for {name!r}")
        return Response(thumb, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/events")
    async def get_events(processor: str | None = None) -> StreamingResponse:
        b = ui.pick(processor)

        async def stream() -> AsyncIterator[str]:
            ui.listeners += 1
            feed = ui.feeds[b.name]
            try:
                if feed.version == 0:
                    await ui.refresh(b.name)
                seen_metrics, seen_feed, last_sent = -1, -1, time.monotonic()
                while not ui.closing:
                    chunks = []
                    if state.version != seen_metrics:
                        seen_metrics = state.version
                        chunks.append(_sse("metrics", state.snapshot()))
                    if feed.version != seen_feed:
                        seen_feed = feed.version
                        for kind in ("rows", "dead_letters"):
                            error = getattr(feed, f"{kind}_error")
                            if error is not None:
                                chunks.append(_sse("sink_error", {"what": kind, "detail": error}))
                            if getattr(feed, kind) is not None:
                                chunks.append(_sse(kind, {"processor": b.name, kind: getattr(feed, kind)}))
                    if chunks:
                        last_sent = time.monotonic()
                        yield "".join(chunks)
                    elif time.monotonic() - last_sent > 15:
                        last_sent = time.monotonic()
                        yield ": keep-alive\n\n"
                    await asyncio.sleep(cfg.poll_interval_s)
            finally:
                ui.listeners -= 1

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app


def _bad_object_name(name: str) -> bool:
    """Names a thumbnail request may not use: empty, absolute, with ``..``/``.``/empty
    components, backslashes or control characters."""
    if not name or name.startswith("/") or "\\" in name:
        return True
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return True
    return any(p in ("", ".", "..") for p in name.split("/"))


def _dataset_items(dataset: Dataset, split: str, start: int, end: int) -> list[UploadItem]:
    try:
        return [
            UploadItem(n, d, dataset.content_type, label) for n, d, label in dataset.read(split, start, end)
        ]
    except BuildflowError as e:  # files missing, Pillow missing
        raise HTTPException(409, str(e)) from e


async def _deliver(uploader: Uploader, items: list[UploadItem]) -> list[str]:
    """Put ``items`` into the source; provider and producer errors become HTTP errors."""
    try:
        return await run_in_threadpool(uploader.send, items)
    except NotImplementedError as e:
        raise HTTPException(501, str(e)) from e
    except ConfigurationError as e:
        raise HTTPException(400, str(e)) from e
    except ResourceMissingError as e:
        raise HTTPException(409, str(e)) from e
    except (BuildflowError, RuntimeError) as e:
        raise HTTPException(502, str(e)) from e
