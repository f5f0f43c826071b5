"""Real-time image classification: bucket uploads in, top-k ImageNet classes out."""

import datetime
from typing import TYPE_CHECKING, Unpack

import buildflow
from buildflow.io import BigQueryTable, FileEvent, GCSFileStream
from buildflow.io.base import SourceDeclaration
from schemas import Classification, ImageClassificationRow

if TYPE_CHECKING:
    from models import BatchClassifier, ClassifiedImage, ClassifierOptions

__all__ = ["ImageClassificationProcessor"]


class ImageClassificationProcessor(buildflow.Processor):
    """Every image uploaded to ``bucket_name`` (GCP project ``project_id``; unused in ``local``),
    or read from ``source`` (e.g. a ``KafkaTopic``), gets its top-k classes in ``table_id``, by
    ``model_name`` (``models.available_models()`` or ``checkpoint:<uri>``). Decoding and inference
    are the model layer's: ``options`` (``top_k``, ``backend``, ``precision``, ``decode_threads``,
    ...) are :meth:`models.BatchClassifier.load`'s. An undecodable image is dead-lettered alone."""

    name = "image_classification"
    max_batch_size = 16
    max_batch_latency_ms = 20

    def __init__(
        self,
        *,
        bucket_name: str,
        table_id: str,
        project_id: str | None = None,
        model_name: str = "efficientnet_lite0",
        source: SourceDeclaration | None = None,
        **options: Unpack["ClassifierOptions"],
    ) -> None:
        self.bucket_name, self.table_id, self.project_id = bucket_name, table_id, project_id
        self.model_name, self.options, self._source = model_name, options, source
        self.classifier: BatchClassifier | None = None

    def source(self) -> SourceDeclaration:
        return self._source or GCSFileStream(self.bucket_name, self.project_id)

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id=self.table_id)

    def setup(self) -> None:
        from models import BatchClassifier  # here, on the worker: plan never imports torch

        self.classifier = BatchClassifier.load(self.model_name, **self.options)
        self.metrics.increment("model_loads")
        self.metrics.observe("load_model_latency_ms", self.classifier.model.load_latency_ms)
        self.metrics.increment(f"backend_{self.classifier.model.backend}")  # metrics hold numbers

    def teardown(self) -> None:
        if self.classifier is not None:
            self.classifier.close()

    def prefetch(self, events: list[FileEvent]) -> None:
        if self.classifier is not None:
            self.classifier.prefetch(events)  # decoding starts now, on the model layer's threads

    def process_batch(self, events: list[FileEvent]) -> list[ImageClassificationRow | Exception]:
        assert self.classifier is not None
        results = self.classifier.classify(events)  # one result or exception per event
        return [r if isinstance(r, Exception) else self.row(e, r) for e, r in zip(events, results)]

    def row(self, e: FileEvent, r: "ClassifiedImage") -> ImageClassificationRow:
        return ImageClassificationRow(
            image_name=e.name,
            upload=e.event_time,
            classifications=[Classification(p.label, p.confidence, p.index) for p in r.predictions],
            event_id=e.event_id,
            model=self.model_name,
            image_width=r.width,
            image_height=r.height,
            processing_ms=r.processing_ms,
            processed_at=datetime.datetime.now(datetime.UTC),
        )
