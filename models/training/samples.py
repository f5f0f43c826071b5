"""A small real folder-per-class data set that installs offline: texture tiles.

scikit-image bundles three real 512x512 grayscale texture photographs (``brick``,
``grass``, ``gravel``; public domain). Cut into non-overlapping tiles they make a
three-class folder-per-class set (``<root>/brick/r0c0.jpg`` ...): validation tiles come
from other parts of the photo than training tiles, so accuracy on them is not a lookup.
Used to show and test fine-tuning (``configs/finetune_folder.yaml``).

    python -m models.training sample-folder data/textures        # 3 classes x 16 tiles of 128 px
"""

from __future__ import annotations

import io
from pathlib import Path

__all__ = ["TEXTURES", "write_texture_folder"]

TEXTURES = ("brick", "grass", "gravel")


def write_texture_folder(root: str | Path, *, tile: int = 128, quality: int = 92) -> list[Path]:
    """Write ``512 // tile`` squared JPEG tiles of each texture into ``root/<texture>/``.

    Returns:
        The paths written, by class then row then column.

    Raises:
        ValueError: ``tile`` is not in 16..512.
    """
    if not 16 <= tile <= 512:
        raise ValueError(f"tile must be 16..512 pixels, got {tile!r}")
    import skimage.data
    from PIL import Image

    written = []
    for name in TEXTURES:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(image.height // tile):
            for c in range(image.width // tile):
                buf = io.BytesIO()
                image.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)).save(
                    buf, "JPEG", quality=quality
                )
                path = folder / f"r{r}c{c}.jpg"
                path.write_bytes(buf.getvalue())
                written.append(path)
    return written
