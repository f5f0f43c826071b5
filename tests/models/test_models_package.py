"""The package surface: re-exports, no import side effects, ImageNet labels."""

from __future__ import annotations

import subprocess
import sys

import models
from models import CAT_CLASS_INDICES, DOG_CLASS_INDICES, imagenet_labels


def test_all_names_resolve() -> None:
    for name in models.__all__:
        assert getattr(models, name) is not None, name


def test_import_loads_nothing_and_prints_nothing() -> None:
    code = (
        "import sys, models; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torchvision', 'efficientnet_lite_pytorch', 'skimage')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == "[]\n"
    assert result.stderr == ""


def test_imagenet_labels_are_the_1000_classes_in_index_order() -> None:
    labels = imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000  # torchvision's names are unique
    assert labels[0] == "tench" and labels[999] == "toilet tissue"
    assert labels[967] == "espresso"
    assert imagenet_labels() is labels  # cached


def test_imagenet_labels_read_from_source_equal_torchvisions_and_skip_its_import() -> None:
    code = (
        "import sys; from models import imagenet_labels; labels = imagenet_labels(); "
        "print('torchvision' in sys.modules); "
        "from torchvision.models import MobileNet_V2_Weights as W; "
        "print(labels == tuple(W.IMAGENET1K_V1.meta['categories']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout == "False\nTrue\n"


def test_dog_and_cat_ranges() -> None:
    labels = imagenet_labels()
    assert (labels[DOG_CLASS_INDICES[0]], labels[DOG_CLASS_INDICES[-1]]) == (
        "Chihuahua",
        "Mexican hairless",
    )
    assert len(DOG_CLASS_INDICES) == 118
    assert [labels[i] for i in CAT_CLASS_INDICES] == [
        "tabby",
        "tiger cat",
        "Persian cat",
        "Siamese cat",
        "Egyptian cat",
    ]


def test_the_data_sets_import_without_torch() -> None:
    """``buildflow produce --dataset fashion-mnist`` loads the data set, not the model layer."""
    code = (
        "import sys, models, models.datasets.fashion_mnist; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'onnxruntime'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == "[]\n", result.stdout
