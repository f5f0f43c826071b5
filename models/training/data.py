"""Training data: Fashion-MNIST's IDX files, or a folder per class (local or ``gs://``).

Every image is turned into model-input pixels once, up front, with the same code that
serves the model (:func:`models.decode_image` then :meth:`models.Preprocessing.pixels`),
and kept as a uint8 tensor ``(N, C, size, size)``: the data sets this trains on (70k 28x28
images, or a few thousand photos at 128-224 px) fit in memory, batches are then index
lookups, and no loader processes compete for the two cores. Batches are normalised with
:meth:`models.Preprocessing.normalise`, bit-for-bit what serving computes.

The train/validation split is stratified (the same fraction of every class) and drawn
from ``torch.Generator().manual_seed(split_seed)``, so it is the same on every machine and
every run. Shuffling and flips of epoch ``e`` come from a generator seeded with
``(seed, e)``: a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from models import storage
from models.errors import ImageDecodeError, ModelError
from models.preprocessing import Preprocessing, decode_image

from .checkpoints import preprocessing_of
from .config import AugmentationConfig, FashionMNISTData, FolderData, TrainingConfig

__all__ = [
    "ImageSet",
    "DataSplits",
    "load_data",
    "load_fashion_mnist",
    "load_folder",
    "stratified_split",
    "epoch_generator",
    "batch_indices",
    "augment",
]

log = logging.getLogger("models.training")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
    """Images ready for a model, with their labels.

    Attributes:
        pixels: uint8 ``(N, C, size, size)``, resized and cropped, not normalised.
        labels: int64 ``(N,)``, class indices.
        names: ``N`` ids of the images (``test/00042``, ``cat/1.jpg``).
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images at ``indices`` (int64), in that order."""
        return ImageSet(
            self.pixels[indices], self.labels[indices], tuple(self.names[i] for i in indices.tolist())
        )


@dataclasses.dataclass(frozen=True, eq=False)
class DataSplits:
    """Train, validation and (optional) test sets of one config."""

    class_names: tuple[str, ...]
    train: ImageSet
    val: ImageSet
    test: ImageSet | None

    @property
    def report(self) -> tuple[str, ImageSet]:
        """The set the final report is on: ``("test", test)``, else ``("val", val)``."""
        return ("test", self.test) if self.test is not None else ("val", self.val)


def stratified_split(
    labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)``: ``round(count * val_fraction)`` random images of every class
    go to validation; both sorted.

    Deterministic: one ``torch.Generator`` seeded with ``seed``, classes in index order.
    """
    g = torch.Generator().manual_seed(seed)
    val: list[torch.Tensor] = []
    train: list[torch.Tensor] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * val_fraction)
        val.append(idx[:k])
        train.append(idx[k:])
    empty = torch.empty(0, dtype=torch.int64)
    return (
        torch.sort(torch.cat(train) if train else empty).values,
        torch.sort(torch.cat(val) if val else empty).values,
    )


def load_fashion_mnist(
    split: str,
    preprocessing: Preprocessing,
    *,
    root: str | None = None,
    start: int = 0,
    end: int | None = None,
) -> ImageSet:
    """Fashion-MNIST images ``start..end-1`` of ``train`` or ``test``.

    28x28 grayscale images into a 28x28 grayscale model are used as stored (the serving
    path, PNG -> RGB -> luma, gives the same bytes); any other size or colour goes through
    :meth:`Preprocessing.pixels` like a served image.

    Raises:
        ModelError: The IDX files are missing (the message says how to install them), or
            the range is outside the split.
    """
    from buildflow.errors import BuildflowError
    from models.datasets.fashion_mnist import load_fashion_mnist as read

    try:
        images, labels = read("train" if split == "train" else "test", root)
    except BuildflowError as e:
        raise ModelError(str(e)) from None
    n, h, w = images.shape
    end = n if end is None else end
    if not 0 <= start < end <= n:
        raise ModelError(f"Fashion-MNIST {split} range {start}..{end} is outside 0..{n}")
    array = np.frombuffer(images.data, dtype=np.uint8).reshape(n, h, w)[start:end]
    if preprocessing.grayscale and preprocessing.crop_size == h == w == preprocessing.resize_short_side:
        pixels = torch.from_numpy(array.copy()).unsqueeze(1)
    else:
        pixels = torch.stack([preprocessing.pixels(Image.fromarray(a, "L")) for a in array])
    label_tensor = torch.tensor(list(labels[start:end]), dtype=torch.int64)
    names = tuple(f"{split}/{i:05d}" for i in range(start, end))
    return ImageSet(pixels, label_tensor, names)


def load_folder(
    uri: str, preprocessing: Preprocessing, class_names: Sequence[str] | None = None
) -> tuple[ImageSet, tuple[str, ...]]:
    """Every image of a folder per class: ``<uri>/<class>/**/<image>``.

    Args:
        uri: Local folder or ``gs://bucket/prefix``.
        preprocessing: Turns each decoded image into pixels.
        class_names: The classes expected (a test folder must have the training classes);
            None: the sorted sub-folder names.

    Returns:
        ``(images, class_names)``.

    Raises:
        ModelError: No class folders or images, an unknown class, or an image that cannot
            be decoded (named).
    """
    files: dict[str, list[tuple[str, str]]] = {}  # class -> (uri, path relative to the folder)
    for f in storage.list_files(uri):
        if storage.is_gcs(uri):
            rel = PurePosixPath(f[len(uri.rstrip("/")) :].lstrip("/"))
        else:
            rel = PurePosixPath(Path(f).relative_to(Path(uri)).as_posix())
        if len(rel.parts) < 2 or rel.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        files.setdefault(rel.parts[0], []).append((f, rel.as_posix()))
    if not files:
        raise ModelError(f"no images in class folders under {uri!r}; expected {uri}/<class>/<image>.jpg")
    names = tuple(sorted(files)) if class_names is None else tuple(class_names)
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise ModelError(f"{uri!r} has class folders {unknown} that are not among the classes {list(names)}")
    pixels, labels, ids = [], [], []
    for index, cls in enumerate(names):
        for f, rel_name in files.get(cls, []):
            try:
                image = decode_image(storage.read_bytes(f), target_short_side=preprocessing.resize_short_side)
            except ImageDecodeError as e:
                raise ModelError(f"training image {f!r} cannot be decoded: {e}") from e
            pixels.append(preprocessing.pixels(image))
            labels.append(index)
            ids.append(rel_name)
    log.info("read %d images of %d classes from %s", len(ids), len(names), uri)
    return ImageSet(torch.stack(pixels), torch.tensor(labels, dtype=torch.int64), tuple(ids)), names


def load_data(config: TrainingConfig) -> DataSplits:
    """The train/validation split (and test set) of ``config``'s data.

    Raises:
        ModelError: The data cannot be read, or its class count is not ``model.num_classes``.
    """
    pre = preprocessing_of(config)
    data = config.data
    test: ImageSet | None = None
    class_names: tuple[str, ...]
    if isinstance(data, FashionMNISTData):
        from models.datasets.fashion_mnist import FASHION_MNIST_CLASSES

        class_names = FASHION_MNIST_CLASSES
        full = load_fashion_mnist("train", pre, root=data.root, end=data.train_limit)
        test = load_fashion_mnist("test", pre, root=data.root, end=data.test_limit)
    else:
        assert isinstance(data, FolderData)
        full, class_names = load_folder(data.path, pre)
        if data.test_path is not None:
            test, _ = load_folder(data.test_path, pre, class_names)
    if len(class_names) != config.model.num_classes:
        raise ModelError(
            f"the data has {len(class_names)} classes ({', '.join(class_names)}) but "
            f"model.num_classes is {config.model.num_classes}"
        )
    train_idx, val_idx = stratified_split(full.labels, data.val_fraction, config.split_seed)
    if len(train_idx) < 2:
        raise ModelError(f"only {len(train_idx)} training image(s) after the split; add images")
    return DataSplits(tuple(class_names), full.subset(train_idx), full.subset(val_idx), test)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s shuffle and flips: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``: shuffled with ``generator``, else in order. A last
    batch of a single image is dropped when shuffling (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        chunk = order[i : i + batch_size]
        if generator is not None and len(chunk) < 2:
            return
        yield chunk


def augment(pixels: torch.Tensor, config: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal / vertical flips of a uint8 batch ``(N, C, H, W)``, each image
    with probability ``hflip_p`` / ``vflip_p``; returns a new tensor."""
    out = pixels.clone()
    for p, dim in ((config.hflip_p, -1), (config.vflip_p, -2)):
        if p > 0:
            mask = torch.rand(len(out), generator=generator) < p
            out[mask] = out[mask].flip(dim)
    return out
