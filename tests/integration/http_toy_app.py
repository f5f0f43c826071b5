"""A model-free app behind an :class:`~buildflow.io.HTTPEndpoint`, for the endpoint's
end-to-end tests: it "classifies" an image by its shape, through the real runtime, server
and DuckDB sink.

Each batch costs ``HTTP_TOY_BATCH_MS`` milliseconds (default 200), as a model's would, so that
requests arriving meanwhile form the next micro-batch; every row records the size of the
micro-batch it came from. An image Pillow cannot fully decode (a truncated JPEG) raises, and
is dead-lettered alone. Settings (environment): ``HTTP_TOY_MAX_BYTES`` (the endpoint's
``max_bytes``, default 100000), ``HTTP_TOY_HOST`` (default ``127.0.0.1``).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import time

from PIL import Image

import buildflow
from buildflow import Node
from buildflow.events import FileEvent
from buildflow.io import DuckDBTable, HTTPEndpoint

TABLE = "http_toy.shapes"


@dataclasses.dataclass
class ShapeRow:
    image_name: str
    event_id: str
    label: str
    width: int
    height: int
    batch_size: int
    processed_at: datetime.datetime


class Shapes(buildflow.Processor):
    name = "shapes"
    max_batch_size = 32
    max_batch_latency_ms = 50

    def source(self) -> HTTPEndpoint:
        return HTTPEndpoint(
            route="/classify",
            host=os.environ.get("HTTP_TOY_HOST", "127.0.0.1"),
            port=0,
            max_bytes=int(os.environ.get("HTTP_TOY_MAX_BYTES", "100000")),
        )

    def sink(self) -> DuckDBTable:
        return DuckDBTable(TABLE)

    def process_batch(self, events: list[FileEvent]) -> list[ShapeRow | Exception]:
        time.sleep(int(os.environ.get("HTTP_TOY_BATCH_MS", "200")) / 1000)  # a model's batch cost
        out: list[ShapeRow | Exception] = []
        for e in events:
            try:
                with Image.open(io.BytesIO(e.blob)) as im:
                    im.load()
                    w, h = im.size
            except Exception as ex:
                out.append(ex)
                continue
            out.append(
                ShapeRow(
                    image_name=e.name,
                    event_id=e.event_id,
                    label="landscape" if w > h else "portrait" if h > w else "square",
                    width=w,
                    height=h,
                    batch_size=len(events),
                    processed_at=datetime.datetime.now(datetime.UTC),
                )
            )
        return out


app = Node(name="http-toy")
app.add(Shapes())
