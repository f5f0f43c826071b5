"""A model-free app for the UI's API tests: it "classifies" an image by its shape, so rows
arrive in milliseconds, through the real runtime, local bucket and DuckDB sink.

An image Pillow cannot fully decode (a truncated JPEG) raises, and is dead-lettered.

:data:`TOY_SHAPES` is a data set registered on import (the app-side registration of
:mod:`buildflow.datasets`), so the page of these apps offers it; tests also declare it as an
entry point (``tests.ui.toy_app:TOY_SHAPES``).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
from collections.abc import Iterator

from PIL import Image

from buildflow import Node, Processor
from buildflow.datasets import Dataset, Example, register
from buildflow.events import FileEvent
from buildflow.io import BigQueryTable, GCSFileStream

BUCKET = "ui-toy-images"
TABLE = "ui_toy.shapes"


@dataclasses.dataclass
class Shape:
    label: str
    confidence: float


@dataclasses.dataclass
class ShapeRow:
    image_name: str
    upload: datetime.datetime
    classifications: list[Shape]
    event_id: str
    model: str
    processed_at: datetime.datetime


def toy_shape_png(split: str, index: int) -> bytes:
    """Example ``index`` of ``split``: a PNG ``(10 + index) x 10`` pixels (``train``: ``10 x
    (10 + index)``)."""
    size = (10 + index, 10) if split == "test" else (10, 10 + index)
    buf = io.BytesIO()
    Image.new("RGB", size, "teal").save(buf, "PNG")
    return buf.getvalue()


def _toy_examples(split: str, start: int, end: int) -> Iterator[Example]:
    for i in range(start, end):
        label = "square" if i == 0 else "landscape" if split == "test" else "portrait"
        yield Example(f"toy-shapes/{split}/{i:05d}.png", toy_shape_png(split, i), label)


TOY_SHAPES = register(
    Dataset(
        name="toy-shapes",
        title="Toy shapes (teal rectangles)",
        splits={"test": 6, "train": 9},
        examples=_toy_examples,
        label_names=("square", "landscape", "portrait"),
        max_per_request=5,
    )
)

app = Node(name="ui-toy")


@app.processor(
    source=GCSFileStream(bucket_name=BUCKET), sink=BigQueryTable(table_id=f"buildflow-local.{TABLE}")
)
def shapes(event: FileEvent) -> ShapeRow:
    with Image.open(io.BytesIO(event.blob)) as im:
        im.load()
        w, h = im.size
    kind = "landscape" if w > h else "portrait" if h > w else "square"
    return ShapeRow(
        image_name=event.name,
        upload=event.event_time,
        classifications=[Shape(kind, 0.9), Shape(f"{w}x{h}", 0.1)],
        event_id=event.event_id,
        model="shape-of-the-image",
        processed_at=datetime.datetime.now(datetime.UTC),
    )


class LabelledShapes(Processor):
    """The same function as a processor that names its preferred data set (the page's form
    preselects it)."""

    name = "labelled"
    dataset = "toy-shapes"

    def source(self) -> GCSFileStream:
        return GCSFileStream(bucket_name="ui-toy-labelled")

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id="buildflow-local.ui_toy.labelled")

    def process(self, event: FileEvent) -> ShapeRow:
        return shapes(event)


labelled_app = Node(name="ui-toy-labelled")
labelled_app.add(LabelledShapes())
