"""A model-free app for the UI's API tests: it "classifies" an image by its shape, so rows
arrive in milliseconds, through the real runtime, local bucket and DuckDB sink.

An image Pillow cannot fully decode (a truncated JPEG) raises, and is dead-lettered.
"""

from __future__ import annotations

import dataclasses
import datetime
import io

from PIL import Image

from buildflow import Node
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


# The same function as a processor named ``fashion_mnist``: the UI offers its Fashion-MNIST
# test-set form (buildflow.ui.testsets.BY_PROCESSOR_NAME).
fashion_app = Node(name="ui-toy-fashion")
fashion_app.processor(
    source=GCSFileStream(bucket_name="ui-toy-fashion"),
    sink=BigQueryTable(table_id="buildflow-local.ui_toy.fashion"),
    name="fashion_mnist",
)(shapes)
