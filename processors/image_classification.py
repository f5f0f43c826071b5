"""Real-time image classification: bucket uploads in, top-k ImageNet classes out.

Each micro-batch is decoded in parallel on a small thread pool (Pillow releases the GIL
while decoding), then classified in one forward pass. An image that cannot be decoded
(empty, truncated, not an image, over the decompression-bomb limit, a file over the size
limit) is returned as an exception for that event alone: the runtime dead-letters it with
its reason, and the rest of the batch still gets its rows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Literal

import buildflow
from buildflow.io import BigQueryTable, FileEvent, GCSFileStream
from buildflow.io.base import SourceDeclaration
from schemas import Classification, ImageClassificationRow

if TYPE_CHECKING:
    from models import ImageClassifier

# models (and torch) are imported in setup(), on the worker: plan, query and destroy
# never pay for importing torch.

__all__ = ["ImageClassificationProcessor"]

logger = logging.getLogger(__name__)

# One decoded image: (preprocessed tensor (C, crop, crop), width, height, decode ms).
_Decoded = tuple[object, int, int, float]


class ImageClassificationProcessor(buildflow.Processor):
    """Classifies every image uploaded to ``bucket_name`` into ``table_id``.

    Args:
        bucket_name: The bucket whose uploads are classified.
        table_id: ``project.dataset.table`` (or ``dataset.table``) of the results.
        project_id: GCP project of the bucket (not used in ``local``).
        model_name: A name from ``models.available_models()``.
        weights_path: State-dict file for models without bundled weights.
        top_k: Classes kept per image.
        device: ``cpu`` or ``cuda`` (an error if CUDA is not available).
        backend: Inference backend, passed to ``models.load_model``: ``auto`` (default:
            ONNX Runtime when it is installed and agrees with torch on the packaged real
            photos, else torch), ``torch`` or ``onnxruntime``. The backend in use is
            logged at setup and counted in the metrics as ``backend_torch`` or
            ``backend_onnxruntime`` (1 per model load).
        max_pixels: Decompression-bomb limit, pixels (default: models.DEFAULT_MAX_PIXELS,
            Pillow's own limit).
        max_bytes: Largest file (object) classified, bytes (default:
            models.DEFAULT_MAX_BYTES, 32 MiB: well above any camera or phone photo, and a
            bound on memory, as a micro-batch of 16 files is held at once). A larger file
            is dead-lettered with ``ImageFileTooLargeError``; when the event knows the
            object's size (bucket uploads) the file is not even read.
        decode_threads: Threads that decode a micro-batch in parallel (default:
            ``torch.get_num_threads()``, the cores torch would use, which follows
            ``OMP_NUM_THREADS`` and so a Ray replica's ``num_cpus``; 2 on the 2-core
            machines the benchmarks ran on, where 3 measured no better). Decoding starts as
            soon as the runtime pulls a micro-batch (:meth:`prefetch`), so batch k+1 is
            decoded while the model runs batch k.
        decode_nice: Niceness added to the decode threads (Linux; 0: none). Inference is
            the bottleneck, so it gets the cores first and decoding fills the gaps; when
            both ran at the same priority on 2 shared cores the decode threads stalled
            ONNX Runtime's parallel sections (measured: 71-74 img/s at 0 against
            76-87 img/s at 10, 800 images, benchmarks/suite.py set-up; see NOTES.md).
        inference_threads: Threads of one forward pass (of one stream).
        inference_streams: ONNX Runtime: shards a micro-batch is split into, run at the
            same time (``models.load_model(streams=...)``). Default (both None): one
            single-threaded stream per core, end to end 1.13x the throughput of one
            2-thread stream on 2 cores (median of 6 interleaved rounds, NOTES.md);
            ``inference_threads`` alone gives one stream of that many threads.
        source: Another source of file events instead of the bucket, e.g.
            ``PubSubSubscription(...)`` whose messages carry images (``bucket_name`` then
            only names the default source and is not used).
    """

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
        weights_path: str | None = None,
        top_k: int = 5,
        device: Literal["cpu", "cuda"] = "cpu",
        backend: Literal["auto", "torch", "onnxruntime"] = "auto",
        max_pixels: int | None = None,
        max_bytes: int | None = None,
        decode_threads: int | None = None,
        decode_nice: int = 10,
        inference_threads: int | None = None,
        inference_streams: int | None = None,
        source: SourceDeclaration | None = None,
    ) -> None:
        self._source = source
        self.bucket_name = bucket_name
        self.table_id = table_id
        self.project_id = project_id
        self.model_name = model_name
        self.weights_path = weights_path
        self.top_k = top_k
        self.device = device
        self.backend = backend
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.decode_threads = decode_threads
        self.decode_nice = decode_nice
        self.inference_threads = inference_threads
        self.inference_streams = inference_streams
        self.model: ImageClassifier | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # id(event) -> (event, its decode future), filled by prefetch(), emptied by
        # process_batch(); the event is kept so that a reused id() never matches.
        self._prefetched: dict[int, tuple[FileEvent, concurrent.futures.Future[_Decoded]]] = {}

    def source(self) -> SourceDeclaration:
        if self._source is not None:
            return self._source
        return GCSFileStream(project_id=self.project_id, bucket_name=self.bucket_name)

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id=self.table_id)

    def setup(self) -> None:
        from models import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_model

        if self.max_pixels is None:
            self.max_pixels = DEFAULT_MAX_PIXELS
        if self.max_bytes is None:
            self.max_bytes = DEFAULT_MAX_BYTES
        self.model = load_model(
            self.model_name,
            weights_path=self.weights_path,
            device=self.device,
            backend=self.backend,
            intra_op_threads=self.inference_threads,
            streams=self.inference_streams,
        )
        # One forward pass now, so the first real event does not pay for lazy allocation.
        import torch

        side = self.model.preprocessing.crop_size
        self.model.predict_proba(
            torch.zeros(1, self.model.preprocessing.channels, side, side, device=self.device)
        )
        self.metrics.increment("model_loads")
        self.metrics.observe("load_model_latency_ms", self.model.load_latency_ms)
        # Metrics hold numbers only: the backend in use is a counter named after it.
        self.metrics.increment(f"backend_{self.model.backend}")
        logger.info("model %r runs on %s", self.model.name, self.model.backend)
        if self.decode_threads is None:
            self.decode_threads = torch.get_num_threads()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.decode_threads,
            thread_name_prefix="decode",
            initializer=_lower_priority,
            initargs=(self.decode_nice,),
        )

    def teardown(self) -> None:
        self._prefetched.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def prefetch(self, events: list[FileEvent]) -> None:
        """Start decoding a micro-batch on the decode pool as soon as it is pulled (see
        :meth:`buildflow.Processor.prefetch`); :meth:`process_batch` collects the results."""
        if self._pool is None:
            return
        for event in events:
            self._prefetched[id(event)] = (event, self._pool.submit(self._decode, event))

    def _decode_future(self, event: FileEvent) -> concurrent.futures.Future[_Decoded]:
        assert self._pool is not None
        entry = self._prefetched.pop(id(event), None)
        if entry is not None and entry[0] is event:
            return entry[1]
        return self._pool.submit(self._decode, event)  # not prefetched: a retry, or isolation

    def _decode(self, event: FileEvent) -> _Decoded:
        from models import check_file_size, decode_image

        assert self.model is not None and self.max_pixels is not None and self.max_bytes is not None
        t0 = time.perf_counter()
        size = getattr(event, "size", None)  # known before reading for bucket uploads
        if isinstance(size, int):
            check_file_size(size, max_bytes=self.max_bytes)
        image = decode_image(
            event.blob,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            target_short_side=self.model.preprocessing.resize_short_side,
        )
        width, height = image.size
        tensor = self.model.preprocess(image)
        return tensor, width, height, (time.perf_counter() - t0) * 1000

    def process_batch(self, events: list[FileEvent]) -> list[ImageClassificationRow | Exception]:
        assert self.model is not None and self._pool is not None
        futures = [self._decode_future(e) for e in events]
        decoded: list[_Decoded | Exception] = []
        for f in futures:
            try:
                decoded.append(f.result())
            except Exception as e:  # this image alone is dead-lettered
                decoded.append(e)
        ok = [d for d in decoded if not isinstance(d, Exception)]
        predictions = []
        infer_ms = 0.0
        if ok:
            import torch

            t0 = time.perf_counter()
            probs = self.model.predict_proba(torch.stack([d[0] for d in ok]))  # type: ignore[misc]
            predictions = self.model.top_k(probs, self.top_k)
            infer_ms = (time.perf_counter() - t0) * 1000 / len(ok)
        now = datetime.datetime.now(datetime.UTC)
        out: list[ImageClassificationRow | Exception] = []
        it = iter(predictions)
        for event, d in zip(events, decoded):
            if isinstance(d, Exception):
                out.append(d)
                continue
            _, width, height, decode_ms = d
            out.append(
                ImageClassificationRow(
                    image_name=event.name,
                    upload=event.event_time,
                    classifications=[
                        Classification(label=p.label, confidence=p.confidence, class_index=p.index)
                        for p in next(it)
                    ],
                    event_id=event.event_id,
                    model=self.model.name,
                    image_width=width,
                    image_height=height,
                    processing_ms=decode_ms + infer_ms,
                    processed_at=now,
                )
            )
        return out


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux: niceness is per thread; elsewhere
    it would be the whole process's, so nothing is done)."""
    if nice and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
