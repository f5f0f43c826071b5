"""The JSON payloads of ``payload_format="json"``: the training API's pixel arrays become
lossless PGM/PPM images that Pillow (and so every processor) reads back pixel for pixel;
every malformed array is refused with a reason naming what is wrong."""

from __future__ import annotations

import base64
import datetime
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from buildflow.io.payloads import PayloadError, decode_json_payload, decode_pixels, encode_pixel_payload


def training_api_payload(pixels: Any, timestamp: float = 1_700_000_000.25) -> bytes:
    """Exactly what the training API's producers send."""
    return json.dumps({"data": "Payload data", "timestamp": timestamp, "image": pixels}).encode()


@pytest.mark.parametrize("shape", [(28, 28), (5, 7, 3), (1, 1), (3, 1, 3)])
def test_pixel_arrays_round_trip_through_pillow_unchanged(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    payload = decode_json_payload(training_api_payload(img.tolist()))
    assert payload.shape == shape and payload.name is None and payload.label is None
    assert payload.timestamp == datetime.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=datetime.UTC)
    with Image.open(io.BytesIO(payload.image)) as im:
        assert im.mode == ("RGB" if len(shape) == 3 else "L")
        assert (im.height, im.width) == shape[:2]
        assert np.array_equal(np.asarray(im), img)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ([1, 2, 3], r"rank 1"),
        (7, r"non-empty list of rows"),
        ([], r"non-empty list of rows"),
        ([[]], r"rank 1"),
        ([[[1, 2, 3, 4]]], r"4 channels"),
        ([[[1, 2]]], r"2 channels"),
        ([[[[1, 2, 3]]]], r"rank 4"),
        ([[1, 2], [3]], r"ragged 'image': row 1 has 1 values, row 0 has 2"),
        ([[1, 2], 5], r"ragged 'image': row 1 has 5"),
        ([[[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5]]], r"row 1 has pixel \[4, 5\]"),
        ([[0, 256]], r"row 0 has value 256: pixels must be integers in 0..255"),
        ([[0, 1], [-1, 0]], r"row 1 has value -1"),
        ([[0.5, 1]], r"row 0 has value 0.5"),
        ([[[0, 0, 300]]], r"row 0 has value 300"),
        ([["a", 1]], r"value 'a'"),
        ([[None, 1]], r"value None"),
    ],
)
def test_malformed_pixel_arrays_are_refused_with_the_reason(image: Any, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode_json_payload(training_api_payload(image))


def test_max_pixels_is_checked_before_any_pixel_is_read() -> None:
    decode_pixels([[0] * 28] * 28, max_pixels=784)
    # a 29x28 array whose pixels are all invalid: the size is what is reported
    with pytest.raises(PayloadError, match=r"29x28 = 812 pixels is over max_pixels=784"):
        decode_pixels([["x"] * 28] * 29, max_pixels=784)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", r"not JSON"),
        (b"[1, 2]", r"expected a JSON object, got list"),
        (b'{"data": "Payload data"}', r"expected 'image_data' .* or 'image'"),
        (b'{"image_data": "!!!"}', r"bad 'image_data'"),
        (b'{"image_data": 5}', r"bad 'image_data'"),
        (b'{"image": [[1]], "timestamp": "yesterday"}', r"bad timestamp 'yesterday'"),
        (b'{"image": [[1]], "timestamp": true}', r"bad timestamp True"),
    ],
)
def test_malformed_json_payloads_are_refused(value: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode_json_payload(value)


def test_the_base64_envelope_still_works() -> None:
    doc = {
        "image_id": "a.png",
        "label": "cat",
        "image_data": base64.b64encode(b"PNGDATA").decode(),
        "timestamp": "2024-01-02T03:04:05+00:00",
    }
    payload = decode_json_payload(json.dumps(doc).encode())
    assert (payload.image, payload.name, payload.label) == (b"PNGDATA", "a.png", "cat")
    assert payload.timestamp == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.mark.parametrize(("mode", "shape"), [("L", (6, 4)), ("RGB", (6, 4, 3)), ("RGBA", (6, 4, 3))])
def test_encode_pixel_payload_writes_the_training_api_shape(mode: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(6, 4, len(mode)) if len(mode) > 1 else (6, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    doc = json.loads(encode_pixel_payload(buf.getvalue(), timestamp=12.5))
    assert sorted(doc) == ["data", "image", "timestamp"]
    assert doc["data"] == "Payload data" and doc["timestamp"] == 12.5
    assert np.asarray(doc["image"]).shape == shape
    if mode != "RGBA":
        assert doc["image"] == arr.tolist()
    # and it decodes back to the same pixels
    with Image.open(io.BytesIO(decode_json_payload(json.dumps(doc).encode()).image)) as im:
        assert np.asarray(im).tolist() == doc["image"]


def test_the_processors_decoder_reads_pixel_payloads() -> None:
    """The image processors decode ``event.blob`` with models.decode_image: a pixel payload
    goes through it like an uploaded file, with its limits."""
    from models.errors import ImageTooLargeError
    from models.preprocessing import decode_image

    img = np.random.default_rng(1).integers(0, 256, size=(28, 28), dtype=np.uint8)
    blob = decode_json_payload(training_api_payload(img.tolist())).image
    decoded = decode_image(blob, max_pixels=28 * 28)
    assert np.array_equal(np.asarray(decoded.convert("L")), img)
    with pytest.raises(ImageTooLargeError):
        decode_image(blob, max_pixels=28 * 28 - 1)
