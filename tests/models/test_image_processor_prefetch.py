"""ImageClassificationProcessor decodes micro-batch k+1 while the model runs batch k
(``prefetch``, handed to its :class:`models.BatchClassifier`), decodes every image once, and
still isolates a bad image."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest

from buildflow.testing import gcs_file_event, run_processor
from models.labels import CAT_CLASS_INDICES
from processors.image_classification import ImageClassificationProcessor
from schemas import ImageClassificationRow
from tests.models import sample_images


class _Recording(ImageClassificationProcessor):
    """Records when each image's decode starts and when each process_batch runs."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.lock = threading.Lock()
        self.decode_started: dict[str, list[float]] = {}
        self.batches: list[tuple[tuple[str, ...], float, float]] = []
        self.left_behind: set[int] = set()  # events of a batch still prefetched after it

    def setup(self) -> None:
        super().setup()
        assert self.classifier is not None
        decode = self.classifier._decode

        def recording(event: Any) -> Any:
            with self.lock:
                self.decode_started.setdefault(event.name, []).append(time.monotonic())
            return decode(event)

        self.classifier._decode = recording  # type: ignore[method-assign]

    def process_batch(self, events: list[Any]) -> list[ImageClassificationRow | Exception]:
        t0 = time.monotonic()
        out = super().process_batch(events)
        assert self.classifier is not None
        with self.lock:
            self.batches.append((tuple(e.name for e in events), t0, time.monotonic()))
            self.left_behind.update(set(map(id, events)) & set(self.classifier._prefetched))
        return out


@pytest.mark.slow
def test_next_batch_is_decoded_while_the_model_runs_and_each_image_once() -> None:
    good = sample_images.jpeg()
    names = [f"img-{i:02d}.jpg" for i in range(48)]
    events = [gcs_file_event(n, sample_images.truncated_jpeg() if n == "img-20.jpg" else good) for n in names]
    processor = _Recording(bucket_name="photos", table_id="demo.predictions", backend="torch")
    result = run_processor(processor, events)

    assert sorted(r["image_name"] for r in result.rows) == sorted(n for n in names if n != "img-20.jpg")
    assert all(r["classifications"][0]["class_index"] in CAT_CLASS_INDICES for r in result.rows)
    [dead] = result.dead_letters
    assert dead["object_name"] == "img-20.jpg" and dead["error_type"] == "TruncatedImageError"
    # Every image was decoded exactly once (prefetched, then collected), the bad one too.
    assert {n: len(ts) for n, ts in processor.decode_started.items()} == {n: 1 for n in names}
    assert len(processor.batches) >= 2
    # Overlap: some image of a later batch started decoding before the batch before it
    # had left process_batch (without prefetch each batch is decoded inside its own call).
    overlapped = 0
    for (_, _, end_k), (later, start_next, _) in zip(processor.batches, processor.batches[1:]):
        first_decode = min(processor.decode_started[n][0] for n in later)
        overlapped += first_decode < end_k and first_decode < start_next
    assert overlapped >= 1, processor.batches
    assert processor.left_behind == set()  # each batch collected what was prefetched for it


@pytest.mark.slow
def test_events_that_were_not_prefetched_are_decoded_in_process_batch() -> None:
    processor = ImageClassificationProcessor(
        bucket_name="photos", table_id="demo.predictions", backend="torch"
    )
    processor.setup()
    try:
        event = gcs_file_event("chelsea.jpg", sample_images.jpeg())
        [row] = processor.process_batch([event])  # e.g. a retry: never prefetched
        assert row.classifications[0].class_index in CAT_CLASS_INDICES
        processor.prefetch([event])
        [again] = processor.process_batch([event])
        assert again.classifications[0].class_index == row.classifications[0].class_index
        assert processor.classifier is not None and processor.classifier._prefetched == {}
    finally:
        processor.teardown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_decode_threads_run_below_the_inference_thread_priority() -> None:
    """Decoding yields the cores to inference (decode_nice); 0 leaves them alone."""

    def niceness(processor: ImageClassificationProcessor) -> tuple[int, int]:
        processor.setup()
        try:
            assert processor.classifier is not None and processor.classifier._pool is not None
            tid = processor.classifier._pool.submit(threading.get_native_id).result()
            return os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(
                os.PRIO_PROCESS, threading.get_native_id()
            )
        finally:
            processor.teardown()

    kw: dict[str, Any] = {"bucket_name": "photos", "table_id": "demo.predictions", "backend": "torch"}
    decode, caller = niceness(ImageClassificationProcessor(**kw, decode_threads=1))
    assert decode == min(19, caller + 10)
    decode, caller = niceness(ImageClassificationProcessor(**kw, decode_threads=1, decode_nice=0))
    assert decode == caller
