"""Where serving finds a training checkpoint, checked before anything is started.

Imports nothing heavy (no torch): ``plan`` runs :func:`check_checkpoint_exists` through a
processor's ``check()``.
"""

from __future__ import annotations

import os
from pathlib import Path

from buildflow.errors import ConfigurationError

__all__ = ["SHIPPED_CHECKPOINT", "check_checkpoint_exists"]

SHIPPED_CHECKPOINT = "models/training/artifacts/fashion_mnist_cnn.pt"
"""The Fashion-MNIST model the repository ships (the README's 92.64% one), relative to its root."""


def check_checkpoint_exists(uri: str, owner: str) -> None:
    """Refuse a local checkpoint path that is not a file (``gs://`` URIs are read, and
    checked, when the model loads).

    Args:
        uri: A local path (relative to the working directory) or ``gs://bucket/object``.
        owner: Who asks, for the message, e.g. ``"processor 'fashion_mnist'"``.

    Raises:
        ConfigurationError: The file does not exist; the message names how to train it and
            the checkpoint the repository ships.
    """
    if uri.startswith("gs://") or Path(uri).is_file():
        return
    raise ConfigurationError(
        f"{owner}: checkpoint {uri!r} does not exist (in {os.getcwd()!r}). Train it first "
        "(python -m models.training train models/training/configs/fashion_mnist_cnn.yaml writes "
        f"runs/fashion_mnist_cnn/model.pt), or serve the one shipped in the repository: "
        f"checkpoint={SHIPPED_CHECKPOINT!r}."
    )
