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

__all__ = ["DARKNET_DIR", "sample_photos", "write_samples"]

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
