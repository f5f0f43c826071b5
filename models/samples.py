"""Real photos that ship inside installed packages, for demos, tests and benchmarks.

Sources: the photos bundled in the scikit-image wheel (``skimage.data``: ``chelsea``,
``coffee``, ``astronaut``, ``rocket``; public domain or CC0, as each function's docstring in
https://scikit-image.org/docs/stable/api/skimage.data.html says), and
the sample JPEGs of Debian's ``darknet`` package, which installs them in
``/usr/share/darknet/data`` (https://packages.debian.org/sid/darknet; ``apt-get install
darknet``). Neither is downloaded at run time.

    python -m models.samples ~/photos          # writes chelsea.jpg, coffee.jpg, dog.jpg, ...
    python -m models.samples ~/photos --copies 200   # 200 distinct files (name_0001.jpg, ...)
"""

from __future__ import annotations

import argparse
import io
import itertools
from pathlib import Path

__all__ = ["DARKNET_DIR", "DISTINCT_SIZES", "distinct_photos", "sample_photos", "write_samples"]

DARKNET_DIR = Path("/usr/share/darknet/data")
_SKIMAGE = ("chelsea", "coffee", "astronaut", "rocket")
_DARKNET = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")


def sample_photos(*, require_darknet: bool = False) -> dict[str, bytes]:
    """JPEG bytes of the packaged real photos, by file name (e.g. ``"chelsea.jpg"``).

    Raises:
        FileNotFoundError: ``require_darknet`` and Debian's darknet package is missing
            (install it with ``apt-get install darknet``).
    """
    import skimage.data
    from PIL import Image

    photos: dict[str, bytes] = {}
    for name in _SKIMAGE:
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buf, "JPEG", quality=92)
        photos[f"{name}.jpg"] = buf.getvalue()
    for name in _DARKNET:
        path = DARKNET_DIR / f"{name}.jpg"
        if path.exists():
            photos[path.name] = path.read_bytes()
        elif require_darknet:
            raise FileNotFoundError(
                f"{path} is missing: install Debian's darknet package (apt-get install darknet)"
            )
    return photos


DISTINCT_SIZES = ((500, 375), (1350, 900))
"""(long side, short side) in pixels of the two kinds of :func:`distinct_photos`: ~500x375
like a web image, ~1350x900 like a downscaled camera photo."""


def distinct_photos(
    n: int, seed: int = 0, *, sizes: tuple[tuple[int, int], ...] = DISTINCT_SIZES
) -> list[tuple[str, bytes]]:
    """``n`` distinct real JPEGs made from :func:`sample_photos`, as (file name, bytes).

    Each is a random crop (60-100% of each side) of one of the photos (taken in turn),
    flipped left-right half of the time, resized to one of ``sizes`` in turn (landscape or
    portrait as the crop is; bicubic) and JPEG-encoded at quality 80-95. So no two files
    have the same bytes while every one is a real photo. Deterministic for a seed; two
    seeds give different crops (e.g. calibration photos apart from evaluation photos).

    Raises:
        ImportError: scikit-image is not installed.
        ValueError: ``n < 0`` or ``sizes`` is empty.
    """
    import random

    from PIL import Image, ImageOps

    if n < 0 or not sizes:
        raise ValueError(f"need n >= 0 and at least one size, got n={n!r}, sizes={sizes!r}")
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
        long_side, short_side = sizes[i % len(sizes)]
        size = (long_side, short_side) if cw >= ch else (short_side, long_side)
        buf = io.BytesIO()
        crop.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=rng.randint(80, 95))
        out.append((f"{stem}_{size[0]}x{size[1]}_{i:05d}.jpg", buf.getvalue()))
    return out


def write_samples(folder: Path, copies: int | None = None) -> list[Path]:
    """Write the sample photos into ``folder``; with ``copies``, that many distinct file
    names cycling over the photos (``chelsea_0001.jpg``, ...). Returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    written = []
    if copies is None:
        items = list(photos.items())
    else:
        cycle = itertools.islice(itertools.cycle(photos.items()), copies)
        items = [(f"{Path(n).stem}_{i:04d}.jpg", b) for i, (n, b) in enumerate(cycle, 1)]
    for name, data in items:
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write real sample photos into a folder.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--copies", type=int, default=None, help="write this many distinct files")
    args = parser.parse_args()
    paths = write_samples(args.folder, args.copies)
    print(f"wrote {len(paths)} photos to {args.folder}")


if __name__ == "__main__":
    main()
