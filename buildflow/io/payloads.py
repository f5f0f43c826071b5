"""The JSON payload of ``payload_format="json"``, shared by the Kafka and Pub/Sub sources:
either the buildflow envelope (the image file, base64) or the training API's pixel payload
(the image as nested lists of uint8 pixels).

Two shapes are accepted, told apart by their keys:

* the buildflow envelope ``{"image_id", "path", "label", "image_data": <base64 of the file>,
  "timestamp": <ISO 8601>}`` (what ``buildflow produce --format json`` writes);
* the pixel payload ``{"data": "Payload data", "timestamp": <float seconds since the epoch>,
  "image": <HxW grey or HxWx3 RGB nested lists of integers 0..255>}``, what a training
  script's producer sends with ``json.dumps({..., "image": img.tolist()})`` from a uint8
  NumPy array (``buildflow produce --format pixels`` writes it). It has no id and no label:
  the Kafka key / Pub/Sub ``name`` attribute name the image, a ``label`` header / attribute
  gives its true class.

A pixel array becomes a binary PGM (grey) or PPM (RGB) image in memory (Netpbm, as Pillow
reads it: https://netpbm.sourceforge.net/doc/pgm.html, .../ppm.html), so processors get
``event.blob`` as image bytes through the same decode path as any uploaded file, with no
loss: every pixel value is kept.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import itertools
import json
import math
from typing import Any, ClassVar

from buildflow.errors import BuildflowError
from buildflow.events import BlobReader

__all__ = [
    "BytesBlob",
    "DEFAULT_MAX_PIXELS",
    "JsonPayload",
    "PayloadError",
    "decode_json_payload",
    "decode_pixels",
    "encode_pixel_payload",
]

#: Largest ``height * width`` a pixel payload may have: Pillow's own decompression-bomb
#: limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels).
DEFAULT_MAX_PIXELS = 89_478_485


class PayloadError(BuildflowError, ValueError):
    """A message's payload is not a valid image payload (the event is dead-lettered with
    this reason; the stream goes on)."""


@dataclasses.dataclass(frozen=True)
class BytesBlob(BlobReader):
    """Bytes already in memory."""

    in_memory: ClassVar[bool] = True

    data: bytes

    def read(self) -> bytes:
        return self.data


@dataclasses.dataclass(frozen=True)
class JsonPayload:
    """A decoded JSON payload.

    Attributes:
        image: The image file's bytes (from ``image_data``), or a PGM/PPM made from
            ``image``'s pixels.
        name: ``image_id`` or ``path`` of the envelope; None for a pixel payload.
        label: ``label`` of the envelope, if any.
        timestamp: ``timestamp`` as an aware UTC datetime, if the payload has one.
        shape: ``(height, width)`` or ``(height, width, 3)`` of a pixel payload, else None.
    """

    image: bytes
    name: str | None
    label: str | None
    timestamp: datetime.datetime | None
    shape: tuple[int, ...] | None = None


def _timestamp(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.datetime.fromtimestamp(float(value), tz=datetime.UTC)
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)
    raise PayloadError(
        f"bad timestamp {value!r}: expected seconds since the epoch (a number) or an ISO 8601 string"
    )


def decode_pixels(image: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, tuple[int, ...]]:
    """Nested lists of uint8 pixels -> (a binary PGM or PPM image, its shape).

    Args:
        image: ``height`` rows of ``width`` integers (grey), or of ``width`` ``[r, g, b]``
            triples (RGB), each 0..255: what ``numpy.ndarray.tolist()`` gives for a uint8
            array of shape (H, W) or (H, W, 3).
        max_pixels: Largest accepted ``height * width``, checked before any pixel is read.

    Raises:
        PayloadError: wrong rank (not HxW or HxWx3), an empty image, ragged rows, a value
            that is not an integer in 0..255, or more than ``max_pixels`` pixels. The
            message names the first offending row.
    """
    if not isinstance(image, list) or not image:
        raise PayloadError(
            f"'image' must be a non-empty list of rows (HxW or HxWx3 uint8 pixels), got {_brief(image)}"
        )
    first = image[0]
    rank, probe = 0, image
    while isinstance(probe, list) and probe and rank < 8:
        rank, probe = rank + 1, probe[0]
    if rank not in (2, 3):
        raise PayloadError(
            f"'image' has rank {rank} (row 0 is {_brief(first)}): expected HxW grey or HxWx3 RGB pixels"
        )
    height, width = len(image), len(first)
    if height * width > max_pixels:
        raise PayloadError(
            f"image of {height}x{width} = {height * width} pixels is over max_pixels={max_pixels}"
        )
    rgb = isinstance(first[0], list)
    if rgb and len(first[0]) != 3:
        raise PayloadError(
            f"'image' pixels have {len(first[0])} channels: expected HxW grey or HxWx3 RGB (3 channels)"
        )
    rows: list[bytes] = []
    for i, row in enumerate(image):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else _brief(row)
            raise PayloadError(f"ragged 'image': row {i} has {got}, row 0 has {width}")
        if rgb:
            if not all(isinstance(px, list) and len(px) == 3 for px in row):
                bad = next(px for px in row if not (isinstance(px, list) and len(px) == 3))
                raise PayloadError(
                    f"'image' row {i} has pixel {_brief(bad)}: every pixel of an HxWx3 image is [r, g, b]"
                )
            values: Any = itertools.chain.from_iterable(row)
        else:
            values = row
        try:
            rows.append(bytes(values))
        except (TypeError, ValueError):
            flat = list(itertools.chain.from_iterable(row)) if rgb else row
            bad = next(v for v in flat if not (type(v) is int and 0 <= v <= 255))
            raise PayloadError(
                f"'image' row {i} has value {bad!r}: pixels must be integers in 0..255 (uint8)"
            ) from None
    header = f"{'P6' if rgb else 'P5'}\n{width} {height}\n255\n".encode()
    return header + b"".join(rows), (height, width, 3) if rgb else (height, width)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_json_payload(value: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> JsonPayload:
    """Decode a ``payload_format="json"`` message (either shape of the module docstring).

    Raises:
        PayloadError: not JSON, not an object, neither ``image_data`` nor ``image``, bad
            base64, a bad pixel array (:func:`decode_pixels`) or a bad ``timestamp``.
    """
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PayloadError(f"expected a JSON object, got {type(doc).__name__}")
    if "image_data" in doc:
        data = doc["image_data"]
        try:
            if not isinstance(data, str):
                raise TypeError(f"'image_data' must be a base64 string, got {type(data).__name__}")
            image = base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError, ValueError) as e:
            raise PayloadError(f"bad 'image_data': {e}") from None
        name = doc.get("image_id") or doc.get("path")
        label = doc.get("label")
        return JsonPayload(
            image=image,
            name=str(name) if name else None,
            label=str(label) if label else None,
            timestamp=_timestamp(doc.get("timestamp")),
        )
    if "image" in doc:
        pixels, shape = decode_pixels(doc["image"], max_pixels=max_pixels)
        label = doc.get("label")
        return JsonPayload(
            image=pixels,
            name=None,
            label=str(label) if label else None,
            timestamp=_timestamp(doc.get("timestamp")),
            shape=shape,
        )
    raise PayloadError(
        f"JSON object with keys {sorted(doc)[:8]!r}: expected 'image_data' (base64 of the image file) "
        "or 'image' (nested lists of uint8 pixels, HxW or HxWx3)"
    )


def encode_pixel_payload(image_bytes: bytes, *, timestamp: float | None = None) -> bytes:
    """An image file -> the training API's pixel payload ``{"data": "Payload data",
    "timestamp": <seconds>, "image": <nested lists>}``: grey images (Pillow modes ``1``,
    ``L``, ``I;16``...) as HxW, every other as HxWx3 RGB.

    Raises:
        MissingDependencyError: Pillow or NumPy is not installed (``pip install 'buildflow[app]'``).
        PIL.UnidentifiedImageError: the bytes are not an image Pillow reads.
    """
    from buildflow.errors import MissingDependencyError

    try:
        import io

        import numpy as np
        from PIL import Image
    except ImportError as e:
        raise MissingDependencyError(
            "the pixels format needs Pillow and NumPy: pip install 'buildflow[app]'"
        ) from e
    with Image.open(io.BytesIO(image_bytes)) as im:
        im.load()
        grey = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16")
        converted = im.convert("L" if grey else "RGB")
    pixels = np.asarray(converted, dtype=np.uint8)
    doc = {
        "data": "Payload data",
        "timestamp": datetime.datetime.now(datetime.UTC).timestamp() if timestamp is None else timestamp,
        "image": pixels.tolist(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()
