"""Encoded sample images for the model tests, derived from a real photo.

Every sample starts from scikit-image's ``chelsea`` (a 451x300 RGB photo of a cat,
public domain, bundled with scikit-image, so nothing is downloaded). Each function
returns the encoded bytes, as an upload or bucket object would arrive.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

__all__ = [
    "CHELSEA_SIZE",
    "DARKNET_DOG_JPEG",
    "chelsea",
    "chelsea_image",
    "encode",
    "jpeg",
    "truncated_jpeg",
    "rgba_png",
    "animated_palette_gif",
    "gray16_png",
    "cmyk_jpeg",
    "gray_jpeg",
    "webp",
    "bmp",
    "tiff",
    "exif_rotated_jpeg",
    "decompression_bomb_png",
]

CHELSEA_SIZE = (451, 300)  # (width, height) of skimage.data.chelsea()
DARKNET_DOG_JPEG = Path("/usr/share/darknet/data/dog.jpg")  # Debian package darknet


@functools.cache
def chelsea() -> np.ndarray:
    """The photo as a read-only uint8 array ``(300, 451, 3)``, RGB."""
    pixels = data.chelsea()
    pixels.flags.writeable = False
    return pixels


def chelsea_image() -> Image.Image:
    """The photo as a new RGB PIL image, 451x300."""
    return Image.fromarray(chelsea())


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` saved in format ``fmt`` (Pillow's name, e.g. ``"PNG"``) as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(quality: int = 90) -> bytes:
    """Baseline RGB JPEG of the photo."""
    return encode(chelsea_image(), "JPEG", quality=quality)


def truncated_jpeg() -> bytes:
    """The first half of :func:`jpeg`: a valid header, then the data stops."""
    full = jpeg()
    return full[: len(full) // 2]


def rgba_png() -> bytes:
    """RGBA PNG: left half fully transparent (alpha 0), right half opaque."""
    alpha = np.zeros(chelsea().shape[:2], dtype=np.uint8)
    alpha[:, CHELSEA_SIZE[0] // 2 :] = 255
    return encode(Image.fromarray(np.dstack([chelsea(), alpha])), "PNG")


def animated_palette_gif() -> bytes:
    """Two-frame palette GIF: frame 0 the photo, frame 1 the photo upside down.

    Frame 0's top-left 10x10 pixels use the transparent palette index 255.
    """
    first = chelsea_image().quantize(colors=255)
    indices = np.array(first)
    indices[:10, :10] = 255
    frame0 = Image.fromarray(indices, mode="P")
    frame0.putpalette(first.getpalette())
    frame1 = Image.fromarray(np.ascontiguousarray(chelsea()[::-1])).quantize(colors=255)
    return encode(frame0, "GIF", save_all=True, append_images=[frame1], transparency=255, duration=100)


def gray16_png() -> bytes:
    """16-bit grayscale PNG (Pillow mode ``I;16``): the 8-bit gray photo times 257."""
    gray = np.asarray(chelsea_image().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def cmyk_jpeg() -> bytes:
    """CMYK JPEG (Adobe-style, 4 components)."""
    return encode(chelsea_image().convert("CMYK"), "JPEG", quality=95)


def gray_jpeg() -> bytes:
    """Single-channel (``L``) JPEG."""
    return encode(chelsea_image().convert("L"), "JPEG", quality=90)


def webp() -> bytes:
    """Lossy WebP."""
    return encode(chelsea_image(), "WEBP", quality=90)


def bmp() -> bytes:
    """24-bit BMP (lossless)."""
    return encode(chelsea_image(), "BMP")


def tiff() -> bytes:
    """Uncompressed RGB TIFF (lossless)."""
    return encode(chelsea_image(), "TIFF")


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """JPEG of the photo with EXIF Orientation ``orientation`` (6: rotate 90 CW to view)."""
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF tag 274, Orientation
    return encode(chelsea_image(), "JPEG", quality=90, exif=exif)


def decompression_bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid all-black 1-bit grayscale PNG of ``width x height``, written chunk by chunk.

    The rows are compressed incrementally with ``zlib.compressobj``, so neither the
    pixels nor the raw scanlines are ever held in memory: 20000x20000 (400 million
    pixels) gives a file of about 50 KB.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    # IHDR: width, height, bit depth 1, colour type 0 (gray), compression, filter, interlace
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then width bits of zeros
    compressor = zlib.compressobj(9)
    rows_per_step = 256
    parts = []
    for first in range(0, height, rows_per_step):
        parts.append(compressor.compress(row * min(rows_per_step, height - first)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
