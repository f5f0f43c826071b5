"""Distinct real JPEGs for benchmarks, made from the packaged real photos.

:func:`models.samples.distinct_photos` makes them: random crops (60-100% of each side) of
the photos of :func:`models.samples.sample_photos`, flipped half of the time, resized to
one of two sizes (~500x375 like a web image, ~1350x900 like a downscaled camera photo) and
JPEG-encoded at quality 80-95. So no two files have the same bytes (no cache or
de-duplication can help) while every one is a real photo.
"""

from __future__ import annotations

from pathlib import Path

from models.samples import DISTINCT_SIZES

__all__ = ["SIZES", "distinct_jpegs", "write_distinct_jpegs"]

SIZES = DISTINCT_SIZES
"""(long side, short side) in pixels of the two kinds of images, half of each."""


def distinct_jpegs(
    n: int, seed: int = 0, *, sizes: tuple[tuple[int, int], ...] = SIZES
) -> list[tuple[str, bytes]]:
    """``n`` (file name, JPEG bytes), alternating ``sizes``; deterministic for a seed."""
    from models.samples import distinct_photos

    return distinct_photos(n, seed, sizes=sizes)


def write_distinct_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Write :func:`distinct_jpegs` into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in distinct_jpegs(n, seed):
        p = folder / name
        p.write_bytes(data)
        paths.append(p)
    return paths
