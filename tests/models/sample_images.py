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
    "exif_upright_jpeg",
    "palette_png",
    "gif",
    "animated_gif_then_coffee",
    "large_jpeg",
    "padded_jpeg",
    "header_only_png",
    "pdf_like",
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


def exif_upright_jpeg(orientation: int = 6) -> bytes:
    """JPEG whose pixels are stored turned, with the EXIF Orientation that turns them back:
    :func:`PIL.ImageOps.exif_transpose` gives the upright 451x300 photo (a camera held
    sideways). Ignoring the tag gives a 300x451 (for 5-8) or mirrored cat."""
    undo = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,  # stored turned 90 degrees counter-clockwise
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF tag 274, Orientation
    return encode(chelsea_image().transpose(undo[orientation]), "JPEG", quality=90, exif=exif)


def palette_png() -> bytes:
    """8-bit palette PNG (Pillow mode ``P``, 256 colours)."""
    return encode(chelsea_image().quantize(colors=256), "PNG")


def gif() -> bytes:
    """Single-frame GIF (Pillow quantizes to a 256-colour palette)."""
    return encode(chelsea_image(), "GIF")


def animated_gif_then_coffee() -> bytes:
    """Two-frame GIF: frame 0 the cat (as :func:`gif`), frame 1 scikit-image's ``coffee``
    (a cup of espresso) at the same size, so the frame a decoder used shows in the class."""
    coffee = Image.fromarray(data.coffee()).resize(CHELSEA_SIZE, Image.Resampling.BILINEAR)
    return encode(chelsea_image(), "GIF", save_all=True, append_images=[coffee], duration=100, loop=0)


def large_jpeg(scale: int = 13, noise: int = 32, quality: int = 95) -> bytes:
    """A big but legitimate photo: the cat upscaled ``scale`` times (13: 5863x3900, 23 MP)
    with seeded pixel noise (sensor grain; it makes the file large), about 16 MB."""
    width, height = CHELSEA_SIZE
    big = np.asarray(chelsea_image().resize((width * scale, height * scale), Image.Resampling.BILINEAR))
    grain = np.random.default_rng(20261122).integers(-noise, noise + 1, size=big.shape, dtype=np.int16)
    pixels = np.clip(big.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=quality)


def padded_jpeg(total_bytes: int) -> bytes:
    """:func:`jpeg` followed by zero bytes up to ``total_bytes``: still a valid image
    (decoders ignore data after the end-of-image marker), of any size."""
    head = jpeg()
    if total_bytes < len(head):
        raise ValueError(f"total_bytes must be at least {len(head)}, got {total_bytes}")
    return head + bytes(total_bytes - len(head))


def header_only_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 57-byte PNG: signature, an IHDR claiming ``width x height`` 8-bit RGB pixels
    (10 billion by default), an empty IDAT and IEND. Only the header is valid."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def pdf_like() -> bytes:
    """The start of a small PDF document: a common non-image upload (Pillow writes PDFs
    but cannot read them)."""
    return (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


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
