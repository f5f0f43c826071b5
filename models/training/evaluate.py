"""Evaluate a checkpoint the way it is served: loaded by the model registry, on stored pixels
normalised by the checkpoint's own preprocessing."""

from __future__ import annotations

import time
from typing import Any

from models.errors import ModelError

from .checkpoints import read_checkpoint
from .config import FashionMNISTData
from .data import ImageSet, load_data, load_fashion_mnist
from .report import build_report, predict, write_report

__all__ = ["evaluate"]


def evaluate(
    checkpoint: str,
    *,
    split: str | None = None,
    start: int = 0,
    end: int | None = None,
    data: str | None = None,
    out: str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of a checkpoint on images ``start..end-1`` of a split of its data set.

    Args:
        checkpoint: Local path or ``gs://`` URI of a checkpoint (``model.pt`` or a full one).
        split: ``test``, ``val`` or ``train`` (default: ``test`` where the data set has one,
            else ``val``). ``val`` and ``train`` are the checkpoint's own split.
        start, end: Index range within the split (Fashion-MNIST ``test``: the test-set
            indices, as ``buildflow produce --dataset fashion-mnist --start --end`` sends them).
        data: Read the data from here instead of the config's location (an IDX folder for
            Fashion-MNIST, else a folder per class).
        out: Write ``report.json``, ``report.md`` and ``confusion_matrix.png`` there.
        batch_size: Images per forward pass (default: the config's ``eval_batch_size``).
        device: ``cpu`` or ``cuda``.

    Returns:
        ``(report, rows)``: the report (see :func:`models.training.report.build_report`) and
        one ``{"name", "true", "predicted"}`` per image, in order.

    Raises:
        ModelError: The checkpoint or the data cannot be read, or the split/range is invalid.
    """
    from models.registry import _classifier_from_checkpoint

    t0 = time.perf_counter()
    ckpt = read_checkpoint(checkpoint, device=device)
    classifier = _classifier_from_checkpoint(ckpt, "cuda" if device == "cuda" else "cpu", t0)
    config = ckpt.config
    if data is not None:
        key = "root" if isinstance(config.data, FashionMNISTData) else "path"
        config = config.model_copy(update={"data": config.data.model_copy(update={key: data})})
    fashion = isinstance(config.data, FashionMNISTData)
    has_test = fashion or getattr(config.data, "test_path", None) is not None
    split = split or ("test" if has_test else "val")
    if split not in ("test", "val", "train"):
        raise ModelError(f"unknown split {split!r}; use test, val or train")
    images: ImageSet
    if fashion and split == "test":
        root = config.data.root if isinstance(config.data, FashionMNISTData) else None
        images = load_fashion_mnist("test", classifier.preprocessing, root=root, start=start, end=end)
    else:
        splits = load_data(config)
        chosen = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
        if chosen is None:
            raise ModelError("the checkpoint's data set has no test set; use --split val")
        stop = len(chosen) if end is None else end
        if not 0 <= start < stop <= len(chosen):
            raise ModelError(f"range {start}..{stop} is outside the {split} set's 0..{len(chosen)}")
        import torch

        images = chosen.subset(torch.arange(start, stop))
    p = predict(
        classifier.module,
        images,
        classifier.preprocessing,
        batch_size=batch_size or config.train.eval_batch_size,
        device=device,
    )
    names = classifier.labels
    report = build_report(
        p.true,
        p.predicted,
        names,
        title=f"{config.name}: {split} set {start}..{start + len(images)}, epoch {ckpt.epoch}",
        checkpoint=checkpoint,
        split=split,
        start=start,
        loss=p.loss,
        epochs=ckpt.epoch,
    )
    if out is not None:
        write_report(report, out)
    rows = [
        {"name": n, "true": names[int(t)], "predicted": names[int(q)]}
        for n, t, q in zip(images.names, p.true, p.predicted)
    ]
    return report, rows
