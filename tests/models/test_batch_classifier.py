"""BatchClassifier: encoded images in, one result or one error per image out; its decode
pool, prefetch and pluggable decoder. A tiny hand-set model gives exactly known outputs."""

from __future__ import annotations

import io
import math
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import models.architectures
import models.registry
from models import (
    BatchClassifier,
    ClassifiedImage,
    ImageFileTooLargeError,
    Preprocessing,
    TruncatedImageError,
    UnsupportedImageError,
    load_model,
    register_model,
)
from tests.models import sample_images

LABELS = ("cat", "dog", "bird")
# 2x2 RGB crops scaled to 0..1: 12 features; logits [0, ln 2, ln 3] * mean(pixels).
PREPROCESSING = Preprocessing(2, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (10, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    isolated = dict(models.architectures._REGISTRY)  # the catalogue, also seen through registry
    monkeypatch.setattr(models.architectures, "_REGISTRY", isolated)
    monkeypatch.setattr(models.registry, "_REGISTRY", isolated)
    weight = torch.zeros(3, 12)
    weight[1], weight[2] = math.log(2) / 12, math.log(3) / 12
    torch.save({"1.weight": weight, "1.bias": torch.zeros(3)}, tmp_path / "tiny.pt")
    register_model(
        "tiny",
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
        preprocessing=PREPROCESSING,
        labels=LABELS,
    )
    model = load_model("tiny", weights_path=tmp_path / "tiny.pt", backend="torch")
    with BatchClassifier(model, top_k=3, decode_threads=2) as c:
        yield c


class Blob:
    """An encoded image read on demand, like a bucket event: counts its reads."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.data, self.reads = data, 0
        if size is not None:
            self.size = size

    @property
    def blob(self) -> bytes:
        self.reads += 1
        return self.data


def test_one_result_or_one_error_per_image_in_order(classifier: BatchClassifier) -> None:
    results = classifier.classify(
        [_png((255, 255, 255)), b"not an image", sample_images.truncated_jpeg(), _png((0, 0, 0), (3, 5))]
    )
    white, text, truncated, black = results
    assert isinstance(white, ClassifiedImage) and isinstance(black, ClassifiedImage)
    assert [p.label for p in white.predictions] == ["bird", "dog", "cat"]
    assert [p.confidence for p in white.predictions] == pytest.approx([1 / 2, 1 / 3, 1 / 6])
    assert [p.confidence for p in black.predictions] == pytest.approx([1 / 3] * 3)  # logits all 0
    assert (white.width, white.height, black.width, black.height) == (10, 6, 3, 5)
    assert white.processing_ms == white.decode_ms + white.inference_ms
    assert white.inference_ms == black.inference_ms > 0  # the batch's time, shared by its 2 images
    assert isinstance(text, UnsupportedImageError)
    assert isinstance(truncated, TruncatedImageError)
    assert classifier.classify([]) == []


def test_a_blob_whose_size_is_over_max_bytes_is_never_read(classifier: BatchClassifier) -> None:
    small = _png((255, 255, 255))
    limited = BatchClassifier(classifier.model, max_bytes=len(small), decode_threads=1)
    try:
        announced = Blob(small, size=len(small) + 1)  # a bucket event says how big it is
        unannounced = Blob(small + b"\0")  # read, then refused by its length
        fits = Blob(small, size=len(small))
        over, read_over, ok = limited.classify([announced, unannounced, fits])
        assert isinstance(over, ImageFileTooLargeError) and announced.reads == 0
        assert f"image file is {len(small) + 1} bytes" in str(over)
        assert isinstance(read_over, ImageFileTooLargeError) and unannounced.reads == 1
        assert isinstance(ok, ClassifiedImage) and fits.reads == 1
    finally:
        limited.close()


def test_prefetched_images_are_decoded_once_and_collected(
    classifier: BatchClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: Counter[int] = Counter()
    lock = threading.Lock()
    original = classifier._decode

    def counting(image: Any) -> Any:
        with lock:
            decoded[id(image)] += 1
        return original(image)

    monkeypatch.setattr(classifier, "_decode", counting)
    a, b, late = Blob(_png((255, 0, 0))), Blob(_png((0, 255, 0))), Blob(_png((0, 0, 255)))
    classifier.prefetch([a, b])
    results = classifier.classify([a, b, late])  # late was never prefetched (a retry)
    assert all(isinstance(r, ClassifiedImage) for r in results)
    assert decoded == {id(a): 1, id(b): 1, id(late): 1}
    assert (a.reads, b.reads, late.reads) == (1, 1, 1)
    assert classifier._prefetched == {}
    # An equal but different object is decoded again: prefetches match by identity.
    classifier.prefetch([a])
    copy = Blob(a.data)
    classifier.classify([copy])
    assert decoded[id(copy)] == 1 and len(classifier._prefetched) == 1


def test_a_custom_decoder_plugs_in(classifier: BatchClassifier) -> None:
    calls: list[bytes] = []

    def decode(data: bytes) -> tuple[torch.Tensor, int, int]:
        calls.append(data)
        if data == b"bad":
            raise ValueError("cannot decode this one")
        return torch.ones(3, 2, 2), 640, 480  # a white 2x2 crop, as the model expects it

    custom = BatchClassifier(classifier.model, top_k=1, decode=decode)
    try:
        good, bad = custom.classify([b"anything", b"bad"])
    finally:
        custom.close()
    assert isinstance(good, ClassifiedImage) and (good.width, good.height) == (640, 480)
    assert [(p.label, round(p.confidence, 6)) for p in good.predictions] == [("bird", 0.5)]
    assert isinstance(bad, ValueError) and calls == [b"anything", b"bad"]


def test_closed_classifier_and_bad_arguments(classifier: BatchClassifier) -> None:
    other = BatchClassifier(classifier.model, decode_threads=1)
    other.close()
    other.prefetch([b"x"])  # a no-op after close
    with pytest.raises(RuntimeError, match="closed"):
        other.classify([b"x"])
    other.close()  # twice is fine
    for bad in (
        {"top_k": 0},
        {"max_bytes": 0},
        {"max_pixels": 0},
        {"decode_threads": 0},
        {"decode_nice": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BatchClassifier(classifier.model, **bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_decode_threads_run_below_the_caller_priority(classifier: BatchClassifier) -> None:
    def niceness(decode_nice: int) -> tuple[int, int]:
        with BatchClassifier(classifier.model, decode_threads=1, decode_nice=decode_nice) as c:
            assert c._pool is not None
            tid = c._pool.submit(threading.get_native_id).result()
            return os.getpriority(os.PRIO_PROCESS, tid), os.getpriority(
                os.PRIO_PROCESS, threading.get_native_id()
            )

    decode, caller = niceness(10)
    assert decode == min(19, caller + 10)
    decode, caller = niceness(0)
    assert decode == caller
