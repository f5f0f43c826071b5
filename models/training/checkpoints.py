"""Checkpoints: what training saves every N epochs, and what serving loads.

A checkpoint is one ``torch.save`` file (a dict of tensors, numbers, strings and lists, so
it loads with ``torch.load(weights_only=True)``: no pickled code runs on load) holding:

``format``, ``epoch`` (epochs completed), ``global_step`` (optimizer steps), ``config``
(the training config as JSON-able data), ``class_names``, ``preprocessing`` (image size,
grayscale, mean/std), ``model`` (the state_dict), ``optimizer`` and ``scheduler`` (their
state_dicts; absent in the final ``model.pt``), ``history`` (per-epoch metrics).

Layout under ``output.dir`` (a local folder or ``gs://bucket/prefix``)::

    checkpoints/epoch-0001.pt ...   full checkpoints, for --resume
    model.pt                        the final model only (no optimizer state), for serving
    report/                         report.json, report.md, confusion_matrix.png
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from models import storage
from models.errors import ModelError
from models.preprocessing import Preprocessing

from .config import TrainingConfig, parse_config

__all__ = [
    "FORMAT",
    "Checkpoint",
    "preprocessing_of",
    "checkpoint_uri",
    "model_uri",
    "save_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "read_checkpoint",
]

FORMAT = "buildflow-training-checkpoint/1"
_NAME = re.compile(r"epoch-(\d{4,})\.pt$")


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint as read back (see the module docstring for the fields)."""

    uri: str
    epoch: int
    global_step: int
    config: TrainingConfig
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    state_dict: Mapping[str, torch.Tensor] = dataclasses.field(repr=False)
    optimizer: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    scheduler: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    history: tuple[Mapping[str, Any], ...] = ()


def preprocessing_of(config: TrainingConfig) -> Preprocessing:
    """The serving preprocessing of a config: resize the short side to ``image.size``,
    centre-crop ``image.size``, grayscale or RGB, normalised with its mean/std."""
    mean, std = config.mean_std()
    size = config.image.size
    return Preprocessing(size, size, tuple(mean), tuple(std), grayscale=config.image.grayscale)


def checkpoint_uri(output_dir: str, epoch: int) -> str:
    """``<output_dir>/checkpoints/epoch-NNNN.pt``."""
    return storage.join(output_dir, "checkpoints", f"epoch-{epoch:04d}.pt")


def model_uri(output_dir: str) -> str:
    """``<output_dir>/model.pt``: the final model, for serving."""
    return storage.join(output_dir, "model.pt")


def save_checkpoint(
    uri: str,
    *,
    config: TrainingConfig,
    class_names: Sequence[str],
    module: torch.nn.Module,
    epoch: int,
    global_step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    history: Sequence[Mapping[str, Any]] = (),
) -> int:
    """Write a checkpoint to ``uri`` (local: atomically; ``gs://``: one upload).

    Without ``optimizer`` it is a serving-only checkpoint (``model.pt``).

    Returns:
        Its size in bytes.
    """
    pre = preprocessing_of(config)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "epoch": epoch,
        "global_step": global_step,
        "config": config.model_dump(mode="json"),
        "class_names": list(class_names),
        "preprocessing": {
            "resize_short_side": pre.resize_short_side,
            "crop_size": pre.crop_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": pre.interpolation,
            "grayscale": pre.grayscale,
        },
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "history": [dict(h) for h in history],
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "torch_version": str(torch.__version__),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
        payload["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    storage.write_bytes(uri, data)
    return len(data)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``(epoch, uri)`` of the full checkpoints under ``output_dir``, by epoch."""
    found = []
    for uri in storage.list_files(storage.join(output_dir, "checkpoints")):
        m = _NAME.search(uri)
        if m:
            found.append((int(m.group(1)), uri))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    """The URI of the newest full checkpoint under ``output_dir``, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_checkpoint(uri: str, *, device: str = "cpu") -> Checkpoint:
    """Read and check a checkpoint (``torch.load(weights_only=True)``).

    Raises:
        ModelError: It does not exist, is not a checkpoint of this format, or its config
            no longer validates.
    """
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ModelError(f"checkpoint {uri!r} does not exist") from None
    try:
        raw = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:
        raise ModelError(f"{uri!r} is not a readable checkpoint: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ModelError(
            f"{uri!r} is not a training checkpoint of format {FORMAT!r} (got {got!r}); for a plain "
            "state_dict use load_model(name, weights_path=...)"
        )
    config = parse_config(raw["config"], f"stored in checkpoint {uri!r}")
    p = raw["preprocessing"]
    preprocessing = Preprocessing(
        int(p["resize_short_side"]),
        int(p["crop_size"]),
        tuple(float(v) for v in p["mean"]),
        tuple(float(v) for v in p["std"]),
        p["interpolation"],
        bool(p["grayscale"]),
    )
    return Checkpoint(
        uri=uri,
        epoch=int(raw["epoch"]),
        global_step=int(raw["global_step"]),
        config=config,
        class_names=tuple(str(c) for c in raw["class_names"]),
        preprocessing=preprocessing,
        state_dict=raw["model"],
        optimizer=raw.get("optimizer"),
        scheduler=raw.get("scheduler"),
        history=tuple(raw.get("history", ())),
    )
