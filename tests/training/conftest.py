"""Fixtures of the training tests: tiny Fashion-MNIST data and one tiny trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.training.data import DataSplits, load_data
from models.training.train import TrainResult, train
from tests.training.helpers import FASHION_MNIST_DIR, tiny_fashion_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> DataSplits:
    """512 Fashion-MNIST training images (461 train / 51 validation) and 200 test images."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (./setup.sh as root installs it)")
    return load_data(tiny_fashion_config(tmp_path_factory.mktemp("unused")))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: DataSplits) -> TrainResult:
    """The example CNN trained for 2 epochs on :func:`tiny_data` (a few seconds)."""
    out: Path = tmp_path_factory.mktemp("tiny-run")
    result = train(tiny_fashion_config(out), data=tiny_data)
    assert result.model is not None
    return result
