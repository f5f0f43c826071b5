"""The rows of a classifier served from a training checkpoint, with the true label when the
message carries one, so accuracy can be queried from the table.

Maps to this BigQuery schema (see ``buildflow.schema``)::

    image_name       STRING    REQUIRED
    event_id         STRING    REQUIRED
    event_time       TIMESTAMP REQUIRED
    model            STRING    REQUIRED
    predicted_label  STRING    REQUIRED
    predicted_index  INT64     REQUIRED
    confidence       FLOAT64   REQUIRED
    true_label       STRING    NULLABLE
    correct          BOOL      NULLABLE
    classifications  RECORD    REPEATED  (label STRING, confidence FLOAT64, class_index INT64)
    processing_ms    FLOAT64   REQUIRED
    processed_at     TIMESTAMP REQUIRED

Streamed accuracy, e.g. in ``local`` (DuckDB)::

    SELECT count(*) AS images, avg(CAST(correct AS DOUBLE)) AS accuracy
    FROM fashion_mnist.predictions WHERE true_label IS NOT NULL
"""

from __future__ import annotations

import dataclasses
import datetime

from schemas.image_classification import Classification


@dataclasses.dataclass
class LabelledClassificationRow:
    """One classified image: the top class, the top-k, and the message's true label."""

    image_name: str = dataclasses.field(metadata={"description": "image name from the message or object"})
    event_id: str = dataclasses.field(metadata={"description": "stable id of the source event"})
    event_time: datetime.datetime = dataclasses.field(
        metadata={"description": "when the message was published or the object finalized"}
    )
    model: str = dataclasses.field(metadata={"description": "checkpoint:<uri> of the served model"})
    predicted_label: str = dataclasses.field(metadata={"description": "the most probable class"})
    predicted_index: int = dataclasses.field(metadata={"description": "its index in the model's labels"})
    confidence: float = dataclasses.field(metadata={"description": "its softmax probability, 0..1"})
    true_label: str | None = dataclasses.field(
        metadata={"description": "the message's label (Kafka header / JSON field, Pub/Sub attribute)"}
    )
    correct: bool | None = dataclasses.field(
        metadata={"description": "predicted_label = true_label; NULL without a true label"}
    )
    classifications: list[Classification] = dataclasses.field(
        metadata={"description": "top-k classes, most likely first"}
    )
    processing_ms: float = dataclasses.field(
        metadata={"description": "decode + preprocess + this image's share of the batch's inference, ms"}
    )
    processed_at: datetime.datetime
