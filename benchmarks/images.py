"""Distinct real JPEGs for benchmarks, made from the packaged real photos.

Each image is a random crop (60-100% of each side) of one of the photos of
:func:`models.samples.sample_photos`, flipped left-right half of the time, resized to one of
two sizes (~500x375 like a web image, ~1350x900 like a downscaled camera photo; landscape or
portrait as the crop is), and JPEG-encoded at quality 80-95. So no two files have the same
bytes (no cache or de-duplication can help) while every one is a real photo.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

__all__ = ["SIZES", "distinct_jpegs", "write_distinct_jpegs"]

SIZES = ((500, 375), (1350, 900))
"""(long side, short side) in pixels of the two kinds of images, half of each."""


def distinct_jpegs(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` (file name, JPEG bytes), alternating the two :data:`SIZES`; deterministic for a seed."""
    from PIL import Image, ImageOps

    from models.samples import sample_photos

    rng = random.Random(seed)
    photos = [
        (name.rsplit(".", 1)[0], Image.open(io.BytesIO(data)).convert("RGB"))
        for name, data in sample_photos().items()
    ]
    out = []
    for i in range(n):
        stem, img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        long_side, short_side = SIZES[i % len(SIZES)]
        size = (long_side, short_side) if cw >= ch else (short_side, long_side)
        buf = io.BytesIO()
        crop.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=rng.randint(80, 95))
        out.append((f"{stem}_{size[0]}x{size[1]}_{i:05d}.jpg", buf.getvalue()))
    return out


def write_distinct_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Write :func:`distinct_jpegs` into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in distinct_jpegs(n, seed):
        p = folder / name
        p.write_bytes(data)
        paths.append(p)
    return paths
