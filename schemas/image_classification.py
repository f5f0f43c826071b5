"""The rows the image-classification processor writes.

Maps to this BigQuery schema (see ``buildflow.schema``)::

    image_name      STRING    REQUIRED
    upload          TIMESTAMP REQUIRED
    classifications RECORD    REPEATED  (label STRING, confidence FLOAT64, class_index INT64)
    event_id        STRING    REQUIRED
    model           STRING    REQUIRED
    image_width     INT64     REQUIRED
    image_height    INT64     REQUIRED
    processing_ms   FLOAT64   REQUIRED
    processed_at    TIMESTAMP REQUIRED
"""

from __future__ import annotations

import dataclasses
import datetime


@dataclasses.dataclass
class Classification:
    """One of the top-k classes of an image."""

    label: str
    confidence: float = dataclasses.field(metadata={"description": "softmax probability, 0..1"})
    class_index: int = dataclasses.field(metadata={"description": "index in the model's labels"})


@dataclasses.dataclass
class ImageClassificationRow:
    """One classified image: the original walkthrough's columns, plus what a user needs to
    trust and trace a prediction."""

    image_name: str = dataclasses.field(metadata={"description": "object name in the bucket"})
    upload: datetime.datetime = dataclasses.field(metadata={"description": "when the object was finalized"})
    classifications: list[Classification] = dataclasses.field(
        metadata={"description": "top-k classes, most likely first"}
    )
    event_id: str = dataclasses.field(metadata={"description": "bucket/object#generation"})
    model: str
    image_width: int = dataclasses.field(
        metadata={"description": "decoded width, pixels (after EXIF rotation)"}
    )
    image_height: int = dataclasses.field(metadata={"description": "decoded height, pixels"})
    processing_ms: float = dataclasses.field(
        metadata={"description": "decode + preprocess + this image's share of the batch's inference, ms"}
    )
    processed_at: datetime.datetime
