"""Fashion-MNIST in its original IDX files: read them, and publish them as a registered
data set (:data:`FASHION_MNIST`, ``buildflow produce --dataset fashion-mnist:test``).

Fashion-MNIST (Zalando Research, MIT licence) is 70,000 grayscale 28x28 images of ten
clothing classes: 60,000 for training, 10,000 for testing. Debian's
``dataset-fashion-mnist`` package ships the original gzip'd IDX files in
:data:`FASHION_MNIST_DIR` (``apt-get install dataset-fashion-mnist``; ``./setup.sh``
installs it when run as root). Set ``FASHION_MNIST_DIR`` to read them from elsewhere.

The IDX format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a 4-byte magic
``0x00 0x00 <type> <ndim>`` (type ``0x08`` = unsigned byte), ``ndim`` big-endian uint32
dimension sizes, then the values in row-major order.

Only the standard library is used here (Pillow for :func:`fashion_mnist_png`, imported
when called), so the producer can read the files without torch or numpy.

:data:`FASHION_MNIST` is registered with :mod:`buildflow.datasets` through the entry point
``fashion-mnist`` of pyproject.toml's ``buildflow.datasets`` group, and by
:mod:`processors.fashion_mnist` on import.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from buildflow.datasets import Dataset, Example
from buildflow.errors import ConfigurationError, MissingDependencyError

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IdxArray",
    "read_idx",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "fashion_mnist_png",
    "FASHION_MNIST",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names in label order (0..9), as in the data set's README."""

Split = Literal["train", "test"]
SPLIT_SIZES = {"test": 10_000, "train": 60_000}
"""Examples per split, as in the data set's README (test first: the default split)."""
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class IdxArray:
    """An unsigned-byte IDX array.

    Attributes:
        shape: Dimension sizes, e.g. ``(10000, 28, 28)``.
        data: The values, row-major, ``prod(shape)`` bytes.
    """

    shape: tuple[int, ...]
    data: bytes = dataclasses.field(repr=False)

    def item_bytes(self, index: int) -> bytes:
        """The bytes of item ``index`` along the first dimension (e.g. one 28x28 image)."""
        size = 1
        for d in self.shape[1:]:
            size *= d
        return self.data[index * size : (index + 1) * size]


def read_idx(path: str | os.PathLike[str]) -> IdxArray:
    """Read an unsigned-byte IDX file, gzip'd (``.gz``) or not.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not an unsigned-byte IDX file, or is truncated.
    """
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise ValueError(f"{os.fspath(path)!r}: IDX type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    size = 1
    for d in shape:
        size *= d
    data = raw[4 + 4 * ndim :]
    if len(data) != size:
        raise ValueError(f"{os.fspath(path)!r}: shape {shape} needs {size} bytes, the file has {len(data)}")
    return IdxArray(tuple(shape), data)


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the IDX files: ``root``, else ``$FASHION_MNIST_DIR``, else
    :data:`FASHION_MNIST_DIR`.

    Raises:
        ConfigurationError: The folder does not hold the four files (the message says how
            to install them).
    """
    folder = Path(root or os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    missing = [n for pair in _FILES.values() for n in pair if _find(folder, n) is None]
    if missing:
        raise ConfigurationError(
            f"Fashion-MNIST IDX files missing in {str(folder)!r}: {', '.join(missing)}; install "
            "them with `apt-get install dataset-fashion-mnist` (Debian) or set FASHION_MNIST_DIR "
            "to a folder holding the original files"
        )
    return folder


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _must_find(folder: Path, stem: str) -> str:
    path = _find(folder, stem)
    if path is None:  # fashion_mnist_dir checked; the folder changed meanwhile
        raise ConfigurationError(f"Fashion-MNIST file {stem!r} disappeared from {str(folder)!r}")
    return path.name


def load_fashion_mnist(split: Split, root: str | os.PathLike[str] | None = None) -> tuple[IdxArray, bytes]:
    """Images and labels of one split.

    Returns:
        ``(images, labels)``: images an :class:`IdxArray` of shape ``(N, 28, 28)``
        (uint8, 0 = background), labels ``N`` bytes, each a class index 0..9 into
        :data:`FASHION_MNIST_CLASSES`. N is 60,000 (``train``) or 10,000 (``test``).

    Raises:
        ConfigurationError: Unknown split, or the files are missing.
        ValueError: A file is malformed, or images and labels differ in count.
    """
    if split not in _FILES:
        raise ConfigurationError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    folder = fashion_mnist_dir(root)
    image_stem, label_stem = _FILES[split]
    images, labels = (read_idx(folder / _must_find(folder, stem)) for stem in (image_stem, label_stem))
    if len(images.shape) != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match"
        )
    return images, labels.data


def fashion_mnist_png(
    split: Split = "test",
    start: int = 0,
    end: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Iterator[Example]:
    """PNG-encoded images ``start..end-1`` of a split, for producers.

    Yields:
        ``(name, png, label)``: name ``fashion-mnist/<split>/<index:05d>.png``, a lossless
        8-bit grayscale 28x28 PNG of the original pixels, and the true class name.

    Raises:
        ConfigurationError: The range is empty or outside the split, or the files are missing.
        MissingDependencyError: Pillow is not installed.
    """
    images, labels = load_fashion_mnist(split, root)
    total = images.shape[0]
    end = total if end is None else end
    if not 0 <= start < end <= total:
        raise ConfigurationError(
            f"Fashion-MNIST {split} range {start}..{end} is empty or outside 0..{total}; "
            f"give 0 <= --start < --end <= {total}"
        )
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingDependencyError("Pillow is needed to encode PNGs: run `pip install pillow`") from e
    height, width = images.shape[1], images.shape[2]
    for i in range(start, end):
        buf = io.BytesIO()
        Image.frombytes("L", (width, height), images.item_bytes(i)).save(buf, "PNG")
        yield Example(f"fashion-mnist/{split}/{i:05d}.png", buf.getvalue(), FASHION_MNIST_CLASSES[labels[i]])


def _examples(split: str, start: int, end: int) -> Iterator[Example]:
    return fashion_mnist_png("train" if split == "train" else "test", start, end)


FASHION_MNIST = Dataset(
    name="fashion-mnist",
    title="Fashion-MNIST (28x28 grayscale, 10 clothing classes)",
    splits=SPLIT_SIZES,
    examples=_examples,
    label_names=FASHION_MNIST_CLASSES,
    content_type="image/png",
)
"""Fashion-MNIST as a :class:`buildflow.datasets.Dataset`: splits ``test`` (10,000, the
default) and ``train`` (60,000); examples are :func:`fashion_mnist_png`'s."""
