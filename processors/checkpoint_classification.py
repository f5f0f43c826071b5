"""Serve a checkpoint of ``python -m models.training``: file events in, one row per image out,
with the message's true label, so streamed accuracy is a query over the table."""

import datetime
from typing import TYPE_CHECKING, Unpack

import buildflow
from buildflow.io import BigQueryTable, FileEvent
from buildflow.io.base import SourceDeclaration
from models.checkpoint_files import SHIPPED_CHECKPOINT, check_checkpoint_exists
from models.event_labels import true_label
from schemas import Classification, LabelledClassificationRow

if TYPE_CHECKING:
    from models import BatchClassifier, ClassifiedImage
    from models import ClassifierOptions as Options

__all__ = ["CheckpointClassificationProcessor", "true_label", "SHIPPED_CHECKPOINT"]


class CheckpointClassificationProcessor(buildflow.Processor):
    """Classifies every image of ``source`` with ``checkpoint`` (a local path or ``gs://``) into
    ``table_id``; ``options`` are :meth:`models.BatchClassifier.load`'s (``top_k``: 3 here)."""

    name = "checkpoint_classification"
    max_batch_size = 64
    max_batch_latency_ms = 20

    def __init__(
        self, *, checkpoint: str, table_id: str, source: SourceDeclaration, **options: Unpack["Options"]
    ) -> None:
        self.checkpoint, self.table_id, self._source = checkpoint, table_id, source
        self.options: Options = {"top_k": 3, **options}
        self.classifier: BatchClassifier | None = None

    def source(self) -> SourceDeclaration:
        return self._source

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id=self.table_id)

    def check(self) -> None:  # plan and run refuse a local checkpoint that does not exist
        check_checkpoint_exists(self.checkpoint, f"processor {self.processor_name()!r}")

    def setup(self) -> None:
        from models import BatchClassifier  # here, on the worker: plan never imports torch

        self.classifier = BatchClassifier.load("checkpoint:" + self.checkpoint, **self.options)
        self.metrics.increment("model_loads")
        self.metrics.observe("load_model_latency_ms", self.classifier.model.load_latency_ms)

    def teardown(self) -> None:
        if self.classifier is not None:
            self.classifier.close()

    def prefetch(self, events: list[FileEvent]) -> None:
        if self.classifier is not None:
            self.classifier.prefetch(events)

    def process_batch(self, events: list[FileEvent]) -> list[LabelledClassificationRow | Exception]:
        assert self.classifier is not None
        results = self.classifier.classify(events)  # one result or exception per event
        return [r if isinstance(r, Exception) else self.row(e, r) for e, r in zip(events, results)]

    def row(self, e: FileEvent, r: "ClassifiedImage") -> LabelledClassificationRow:
        top, truth = r.predictions[0], true_label(e)
        return LabelledClassificationRow(
            image_name=e.name,
            event_id=e.event_id,
            event_time=e.event_time,
            model="checkpoint:" + self.checkpoint,
            predicted_label=top.label,
            predicted_index=top.index,
            confidence=top.confidence,
            true_label=truth,
            correct=None if truth is None else truth == top.label,
            classifications=[Classification(p.label, p.confidence, p.index) for p in r.predictions],
            processing_ms=r.processing_ms,
            processed_at=datetime.datetime.now(datetime.UTC),
        )
