"""Classify micro-batches of encoded images: decode them in parallel, run the model once,
and return one result or one error per image.

:class:`BatchClassifier` is what a stream processor calls: it owns the decode thread pool,
starts decoding a micro-batch as soon as it is handed over (:meth:`BatchClassifier.prefetch`,
so that batch k+1 is decoded while the model runs batch k), and turns every image that
cannot be read, is too large or is not an image into an exception for that image alone::

    from models import BatchClassifier

    with BatchClassifier.load("efficientnet_lite0", top_k=5) as classifier:
        results = classifier.classify([jpeg_bytes, b"not an image"])
    results[0].predictions[0].label   # "tabby"
    results[1]                        # UnsupportedImageError(...)

Encoded images are ``bytes`` (or ``bytearray``/``memoryview``) or any object with a
``blob`` attribute holding the bytes (read on a decode thread, so a lazily downloaded
object is fetched there) and optionally an integer ``size``: the byte count known before
reading (a bucket notification's object size), checked against ``max_bytes`` so that an
oversized file is never read. :class:`buildflow.events.FileEvent` objects qualify.

Decoding is pluggable: pass ``decode=`` a function from the encoded bytes to the model
input (see :data:`Decode`); the default is :func:`models.decode_image` (Pillow) followed
by the model's :class:`~models.Preprocessing`. The inference backend is the
:class:`~models.ImageClassifier`'s (:func:`models.load_model`'s ``backend``).

Images are decoded and preprocessed into NumPy arrays and run through the model's
:meth:`~models.ImageClassifier.predict_proba_array`: with the model served from the export
cache (:mod:`models.serving_cache`) this module never imports torch.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias, TypedDict

import numpy as np

from .classifier import Backend, Device, ImageClassifier, Prediction
from .onnx_backend import default_threads
from .openvino_backend import Precision
from .preprocessing import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_file_size, decode_image
from .registry import load_model

if TYPE_CHECKING:
    import torch

__all__ = ["BatchClassifier", "ClassifiedImage", "ClassifierOptions", "Decode", "EncodedImage", "HasBlob"]


class HasBlob(Protocol):
    """An encoded image read on demand: ``blob`` holds (or fetches) its bytes."""

    @property
    def blob(self) -> bytes: ...


EncodedImage: TypeAlias = bytes | bytearray | memoryview | HasBlob
"""What :meth:`BatchClassifier.classify` takes per image (see the module docstring)."""

Decode: TypeAlias = Callable[[bytes], "tuple[np.ndarray | torch.Tensor, int, int]"]
"""Encoded bytes -> ``(model input, width, height)``: a float32 NumPy array (or CPU torch
tensor) ``(C, crop_size, crop_size)`` as the model's :class:`~models.Preprocessing` makes it
(:meth:`~models.Preprocessing.array`), and
the decoded image's size in pixels. Raises (any exception) for an image it cannot decode;
the exception becomes that image's result. Called from the decode threads, several at once."""


@dataclass(frozen=True)
class ClassifiedImage:
    """The classification of one image.

    Attributes:
        predictions: The ``top_k`` most probable classes, most probable first.
        width: Width of the decoded image, pixels (after EXIF rotation; a JPEG decoded at
            reduced scale reports the reduced size).
        height: Height of the decoded image, pixels.
        decode_ms: Wall time of reading, decoding and preprocessing this image, ms.
        inference_ms: This image's share of its micro-batch's forward pass and top-k:
            the batch's wall time divided by the images classified in it, ms.
    """

    predictions: list[Prediction]
    width: int
    height: int
    decode_ms: float
    inference_ms: float

    @property
    def processing_ms(self) -> float:
        """``decode_ms + inference_ms``."""
        return self.decode_ms + self.inference_ms


_Decoded = tuple[np.ndarray, int, int, float]  # model input, width, height, decode ms


class ClassifierOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`BatchClassifier.load` after the model name, for
    callers that pass them through (``**options: Unpack[ClassifierOptions]``)."""

    weights_path: str | os.PathLike[str] | None
    device: Device
    backend: Backend
    precision: Precision
    inference_threads: int | None
    inference_streams: int | None
    top_k: int
    max_pixels: int | None
    max_bytes: int | None
    decode_threads: int | None
    decode_nice: int


class BatchClassifier:
    """An :class:`~models.ImageClassifier` behind a decode pool, for micro-batches.

    Thread-safety: :meth:`prefetch` may be called from one thread (e.g. a runtime's event
    loop) while :meth:`classify` runs on another; :meth:`classify` itself is not meant to
    run concurrently with itself.

    Args:
        model: The loaded model (:func:`models.load_model`).
        top_k: Classes kept per image, at least 1.
        max_pixels: Decompression-bomb limit of the default decoder, pixels.
        max_bytes: Largest encoded image, bytes; a larger one gets
            :class:`~models.ImageFileTooLargeError` (from its ``size`` before reading when
            it has one).
        decode_threads: Threads of the decode pool (default:
            :func:`models.onnx_backend.default_threads`, the cores torch would use, which
            follows ``OMP_NUM_THREADS`` and so a Ray replica's ``num_cpus``; computed
            without importing torch).
        decode_nice: Niceness added to each decode thread (Linux, where niceness is per
            thread; ignored elsewhere; 0: none). Inference gets the cores first and
            decoding fills the gaps, so decode threads do not stall the backend's parallel
            sections.
        decode: Replaces the default decoder (see :data:`Decode`); ``max_pixels`` is then
            the replacement's business, ``max_bytes`` is still checked.

    Raises:
        ValueError: ``top_k``, ``max_pixels``, ``max_bytes`` or ``decode_threads`` is below 1,
            or ``decode_nice`` is negative.
    """

    def __init__(
        self,
        model: ImageClassifier,
        *,
        top_k: int = 5,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        decode_threads: int | None = None,
        decode_nice: int = 10,
        decode: Decode | None = None,
    ) -> None:
        for what, value in (("top_k", top_k), ("max_pixels", max_pixels), ("max_bytes", max_bytes)):
            if value < 1:
                raise ValueError(f"{what} must be at least 1, got {value!r}")
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1 or None, got {decode_threads!r}")
        if decode_nice < 0:
            raise ValueError(f"decode_nice must be 0 or more, got {decode_nice!r}")
        self.model = model
        self.top_k = top_k
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.decode_threads = decode_threads or default_threads()
        self.decode_nice = decode_nice
        self._decode_bytes: Decode = decode or self._pillow_decode
        self._pool: concurrent.futures.ThreadPoolExecutor | None = concurrent.futures.ThreadPoolExecutor(
            self.decode_threads,
            thread_name_prefix="decode",
            initializer=_lower_priority,
            initargs=(decode_nice,),
        )
        # id(image) -> (image, its decode future), filled by prefetch(), emptied by
        # classify(); the image is kept so that a reused id() never matches.
        self._prefetched: dict[int, tuple[EncodedImage, concurrent.futures.Future[_Decoded]]] = {}

    @classmethod
    def load(
        cls,
        model_name: str = "efficientnet_lite0",
        *,
        weights_path: str | os.PathLike[str] | None = None,
        device: Device = "cpu",
        backend: Backend = "auto",
        precision: Precision = "fp32",
        inference_threads: int | None = None,
        inference_streams: int | None = None,
        top_k: int = 5,
        max_pixels: int | None = None,
        max_bytes: int | None = None,
        decode_threads: int | None = None,
        decode_nice: int = 10,
    ) -> BatchClassifier:
        """Load a model with :func:`models.load_model`, run one forward pass on zeros (so
        the first micro-batch does not pay for lazy allocation) and wrap it.

        Args:
            model_name: A name of :func:`models.available_models`, or ``checkpoint:<uri>``.
            weights_path, device, backend, precision: As for :func:`models.load_model`
                (``backend``: ``"auto"``, ``"torch"``, ``"onnxruntime"``, ``"openvino"``;
                ``precision``: ``"fp32"``, ``"bf16"``, ``"int8"``, ``"auto"``).
            inference_threads: Threads of one forward pass (of one stream):
                ``load_model(intra_op_threads=...)``.
            inference_streams: ONNX Runtime: shards a micro-batch is split into, run at
                the same time (``load_model(streams=...)``). Default (both None): one
                single-threaded stream per core; ``inference_threads`` alone gives one
                stream of that many threads.
            top_k, decode_threads, decode_nice: As for :class:`BatchClassifier`.
            max_pixels: Decompression-bomb limit, pixels (None:
                :data:`models.DEFAULT_MAX_PIXELS`, Pillow's own limit).
            max_bytes: Largest encoded image, bytes (None: :data:`models.DEFAULT_MAX_BYTES`,
                32 MiB).

        Raises:
            ModelError: As :func:`models.load_model` raises it.
            ValueError: As :class:`BatchClassifier` raises it.
        """
        model = load_model(
            model_name,
            weights_path=weights_path,
            device=device,
            backend=backend,
            intra_op_threads=inference_threads,
            streams=inference_streams,
            precision=precision,
        )
        side = model.preprocessing.crop_size
        model.predict_proba_array(np.zeros((1, model.preprocessing.channels, side, side), np.float32))
        return cls(
            model,
            top_k=top_k,
            max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
            max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
            decode_threads=decode_threads,
            decode_nice=decode_nice,
        )

    def prefetch(self, images: Sequence[EncodedImage]) -> None:
        """Start decoding ``images`` on the decode pool and return at once; a later
        :meth:`classify` of the same objects collects the results. Never raises for a bad
        image (its error is collected too). Does nothing after :meth:`close`."""
        if self._pool is None:
            return
        for image in images:
            self._prefetched[id(image)] = (image, self._pool.submit(self._decode, image))

    def classify(self, images: Sequence[EncodedImage]) -> list[ClassifiedImage | Exception]:
        """Decode ``images`` in parallel (or collect what :meth:`prefetch` started) and
        classify the decodable ones in one forward pass.

        Returns:
            One result per image, in order: a :class:`ClassifiedImage`, or the exception
            that image raised (:class:`~models.ImageDecodeError` subclasses for bad
            bytes, or whatever reading ``blob`` raised), so that one bad image fails alone.

        Raises:
            RuntimeError: After :meth:`close`.
            ModelError: The model failed on the batch (every image fails together).
        """
        if self._pool is None:
            raise RuntimeError("BatchClassifier is closed")
        futures = [self._decode_future(image) for image in images]
        decoded: list[_Decoded | Exception] = []
        for f in futures:
            try:
                decoded.append(f.result())
            except Exception as e:  # this image alone fails
                decoded.append(e)
        ok = [d for d in decoded if not isinstance(d, Exception)]
        predictions: list[list[Prediction]] = []
        inference_ms = 0.0
        if ok:
            t0 = time.perf_counter()
            probs = self.model.predict_proba_array(np.stack([d[0] for d in ok]))
            predictions = self.model.top_k(probs, self.top_k)
            inference_ms = (time.perf_counter() - t0) * 1000 / len(ok)
        it = iter(predictions)
        return [
            d if isinstance(d, Exception) else ClassifiedImage(next(it), d[1], d[2], d[3], inference_ms)
            for d in decoded
        ]

    def close(self) -> None:
        """Drop what was prefetched and stop the decode pool (waits for running decodes)."""
        self._prefetched.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def name(self) -> str:
        """The model's registry name (``model.name``)."""
        return self.model.name

    def _decode_future(self, image: EncodedImage) -> concurrent.futures.Future[_Decoded]:
        assert self._pool is not None
        entry = self._prefetched.pop(id(image), None)
        if entry is not None and entry[0] is image:
            return entry[1]
        return self._pool.submit(self._decode, image)  # not prefetched: a retry, or isolation

    def _decode(self, image: EncodedImage) -> _Decoded:
        t0 = time.perf_counter()
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
        else:
            size = getattr(image, "size", None)  # known before reading, e.g. bucket uploads
            if isinstance(size, int):
                check_file_size(size, max_bytes=self.max_bytes)
            data = image.blob
        check_file_size(len(data), max_bytes=self.max_bytes)
        tensor, width, height = self._decode_bytes(data)
        return _as_array(tensor), width, height, (time.perf_counter() - t0) * 1000

    def _pillow_decode(self, data: bytes) -> tuple[np.ndarray, int, int]:
        image = decode_image(
            data,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            target_short_side=self.model.preprocessing.resize_short_side,
        )
        width, height = image.size
        return self.model.preprocess_array(image), width, height


def _as_array(model_input: Any) -> np.ndarray:
    """A decoder's output as a float32 NumPy array (a torch tensor is moved to the CPU)."""
    if isinstance(model_input, np.ndarray):
        return model_input
    if hasattr(model_input, "detach"):  # a torch tensor: any device
        model_input = model_input.detach().cpu().numpy()
    return np.asarray(model_input, dtype=np.float32)


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux: niceness is per thread; elsewhere
    it would be the whole process's, so nothing is done)."""
    if nice and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
