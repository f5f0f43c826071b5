"""Small real training runs for the tests: the example Fashion-MNIST config, shrunk."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.training.config import TrainingConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "models" / "training" / "configs"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (./setup.sh as root installs it)",
)


def example(name: str = "fashion_mnist_cnn.yaml") -> dict[str, Any]:
    """An example config as a plain dict (a fresh copy)."""
    data: dict[str, Any] = yaml.safe_load((CONFIGS / name).read_text())
    return copy.deepcopy(data)


def tiny_fashion_config(
    output_dir: str | Path, *, train_limit: int = 512, epochs: int = 2, **train: Any
) -> TrainingConfig:
    """The example CNN config on the first ``train_limit`` training images (10% of them for
    validation) and the first 200 test images, ``epochs`` epochs, batches of 64."""
    data = example()
    data["data"] |= {"train_limit": train_limit, "test_limit": 200}
    data["train"] |= {"epochs": epochs, "batch_size": 64, "eval_batch_size": 256, **train}
    data["output"] = {"dir": str(output_dir)}
    return parse_config(data)
