"""Serve a model trained by ``python -m models.training``: any file-carrying source in, one
labelled row per image out.

The checkpoint (local path or ``gs://``) brings the architecture, weights, class names and
preprocessing (size, grayscale, mean/std), so serving it is one argument. Each row carries
the message's true label when it has one (a Kafka ``label`` header or JSON-envelope field,
a Pub/Sub ``label`` attribute, a GCS object's ``label`` metadata), so the streamed accuracy
is a query over the table. An image that cannot be decoded is dead-lettered alone.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import buildflow
from buildflow.errors import ConfigurationError
from buildflow.io import BigQueryTable, FileEvent
from buildflow.io.base import SourceDeclaration
from schemas import Classification, LabelledClassificationRow

if TYPE_CHECKING:
    from models import ImageClassifier

# models (and torch) are imported in setup(), on the worker: plan, query and destroy never
# pay for importing torch.

__all__ = ["CheckpointClassificationProcessor", "true_label", "SHIPPED_CHECKPOINT"]

#: The Fashion-MNIST model the repository ships (the README's 92.64% one), relative to its root.
SHIPPED_CHECKPOINT = "models/training/artifacts/fashion_mnist_cnn.pt"


def true_label(event: FileEvent) -> str | None:
    """The true class a message says its image has, or None.

    Looked up, in order: ``event.label`` (:class:`buildflow.io.KafkaMessageEvent`: the JSON
    envelope's ``label``, else the ``label`` header), the ``label`` entry of
    ``event.metadata`` (Pub/Sub attributes, Kafka headers), and the ``label`` custom
    metadata of a GCS object (``x-goog-meta-label``). Empty strings count as none.
    """
    label = getattr(event, "label", None)
    if label:
        return str(label)
    if event.metadata.get("label"):
        return event.metadata["label"]
    object_metadata = getattr(event, "object_metadata", None) or {}
    return str(object_metadata["label"]) if object_metadata.get("label") else None


class CheckpointClassificationProcessor(buildflow.Processor):
    """Classifies every image of ``source`` with a training checkpoint into ``table_id``.

    Args:
        checkpoint: Local path or ``gs://bucket/object`` of a checkpoint written by
            ``python -m models.training`` (``model.pt`` or ``checkpoints/epoch-NNNN.pt``).
        table_id: ``project.dataset.table`` (or ``dataset.table``) of the rows
            (:class:`schemas.LabelledClassificationRow`).
        source: Any source of file events: ``KafkaTopic(...)``, ``PubSubSubscription(...)``,
            ``GCSFileStream(...)``.
        top_k: Classes kept per image in ``classifications``.
        device: ``cpu`` or ``cuda`` (an error if CUDA is not available).
        max_pixels: Decompression-bomb limit, pixels (default: models.DEFAULT_MAX_PIXELS).
    """

    name = "checkpoint_classification"
    max_batch_size = 64
    max_batch_latency_ms = 20

    def __init__(
        self,
        *,
        checkpoint: str,
        table_id: str,
        source: SourceDeclaration,
        top_k: int = 3,
        device: Literal["cpu", "cuda"] = "cpu",
        max_pixels: int | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.table_id = table_id
        self._source = source
        self.top_k = top_k
        self.device = device
        self.max_pixels = max_pixels
        self.model: ImageClassifier | None = None

    def source(self) -> SourceDeclaration:
        return self._source

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id=self.table_id)

    def check(self) -> None:
        """A local checkpoint must exist (``gs://`` ones are read by ``setup()``).

        Raises:
            ConfigurationError: the file does not exist; names the trained and the shipped one.
        """
        if self.checkpoint.startswith("gs://") or Path(self.checkpoint).is_file():
            return
        raise ConfigurationError(
            f"processor {self.processor_name()!r}: checkpoint {self.checkpoint!r} does not exist "
            f"(in {os.getcwd()!r}). Train it first (python -m models.training train "
            "models/training/configs/fashion_mnist_cnn.yaml writes runs/fashion_mnist_cnn/model.pt), "
            f"or serve the one shipped in the repository: checkpoint={SHIPPED_CHECKPOINT!r}."
        )

    def setup(self) -> None:
        from models import DEFAULT_MAX_PIXELS, load_model

        if self.max_pixels is None:
            self.max_pixels = DEFAULT_MAX_PIXELS
        self.model = load_model("checkpoint:" + self.checkpoint, device=self.device)
        self.metrics.increment("model_loads")
        self.metrics.observe("load_model_latency_ms", self.model.load_latency_ms)

    def _decode(self, event: FileEvent) -> tuple[object, float]:
        from models import decode_image

        assert self.model is not None and self.max_pixels is not None
        t0 = time.perf_counter()
        side = self.model.preprocessing.resize_short_side
        image = decode_image(event.blob, max_pixels=self.max_pixels, target_short_side=side)
        return self.model.preprocess(image), (time.perf_counter() - t0) * 1000

    def process_batch(self, events: list[FileEvent]) -> list[LabelledClassificationRow | Exception]:
        import torch

        assert self.model is not None
        decoded: list[tuple[object, float] | Exception] = []
        for event in events:
            try:
                decoded.append(self._decode(event))
            except Exception as e:  # this image alone is dead-lettered
                decoded.append(e)
        ok = [d for d in decoded if not isinstance(d, Exception)]
        predictions = []
        infer_ms = 0.0
        if ok:
            t0 = time.perf_counter()
            probs = self.model.predict_proba(torch.stack([d[0] for d in ok]))  # type: ignore[misc]
            predictions = self.model.top_k(probs, self.top_k)
            infer_ms = (time.perf_counter() - t0) * 1000 / len(ok)
        now = datetime.datetime.now(datetime.UTC)
        out: list[LabelledClassificationRow | Exception] = []
        it = iter(predictions)
        for event, d in zip(events, decoded):
            if isinstance(d, Exception):
                out.append(d)
                continue
            top = next(it)
            truth = true_label(event)
            out.append(
                LabelledClassificationRow(
                    image_name=event.name,
                    event_id=event.event_id,
                    event_time=event.event_time,
                    model=self.model.name,
                    predicted_label=top[0].label,
                    predicted_index=top[0].index,
                    confidence=top[0].confidence,
                    true_label=truth,
                    correct=None if truth is None else truth == top[0].label,
                    classifications=[
                        Classification(label=p.label, confidence=p.confidence, class_index=p.index)
                        for p in top
                    ],
                    processing_ms=d[1] + infer_ms,
                    processed_at=now,
                )
            )
        return out
