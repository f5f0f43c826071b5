"""Preprocessing: shapes, exact normalisation, parity with torchvision's transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from models import IMAGENET_MEAN_STD, TF_MEAN_STD, Preprocessing
from tests.models import sample_images


def test_output_is_float32_chw_of_the_crop_size() -> None:
    tensor = Preprocessing()(sample_images.chelsea_image())
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (3, 224, 224)
    assert tensor.is_contiguous()


def test_uniform_colour_normalises_exactly() -> None:
    colour = (200, 100, 50)
    image = Image.new("RGB", (640, 480), colour)
    for mean, std in (IMAGENET_MEAN_STD, TF_MEAN_STD):
        tensor = Preprocessing(mean=mean, std=std)(image)
        for channel in range(3):
            expected = (colour[channel] / 255 - mean[channel]) / std[channel]
            torch.testing.assert_close(tensor[channel], torch.full((224, 224), expected), atol=1e-6, rtol=0)


def test_tf_style_maps_0_255_to_minus_1_plus_1() -> None:
    black_white = Image.new("RGB", (300, 300), (0, 255, 0))
    tensor = Preprocessing(256, 224, *TF_MEAN_STD)(black_white)
    assert tensor[0].eq(-1).all() and tensor[1].eq(1).all() and tensor[2].eq(-1).all()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("sizes", [(256, 224), (300, 299), (7, 5)])
@pytest.mark.parametrize("transpose", [False, True])  # landscape and portrait
def test_matches_torchvision_reference_transform(
    interpolation: str, sizes: tuple[int, int], transpose: bool
) -> None:
    image = sample_images.chelsea_image()
    if transpose:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    resize, crop = sizes
    ours = Preprocessing(resize, crop, *IMAGENET_MEAN_STD, interpolation)(image)
    reference = v2.Compose(
        [
            v2.Resize(resize, interpolation=InterpolationMode(interpolation)),
            v2.CenterCrop(crop),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(*IMAGENET_MEAN_STD),
        ]
    )(image)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_non_rgb_input_is_converted_first() -> None:
    gray = sample_images.chelsea_image().convert("L")
    tensor = Preprocessing()(gray)
    assert tuple(tensor.shape) == (3, 224, 224)
    mean, std = IMAGENET_MEAN_STD
    unnormalised = [tensor[c] * std[c] + mean[c] for c in range(3)]  # gray: R == G == B
    torch.testing.assert_close(unnormalised[0], unnormalised[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(unnormalised[1], unnormalised[2], atol=1e-6, rtol=0)


def test_batch_stacks_images_of_any_size() -> None:
    preprocessing = Preprocessing()
    images = [sample_images.chelsea_image(), Image.new("RGB", (1000, 50), (1, 2, 3))]
    batch = preprocessing.batch(images)
    assert tuple(batch.shape) == (2, 3, 224, 224)
    assert torch.equal(batch[0], preprocessing(images[0]))


def test_batch_of_nothing_raises() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        Preprocessing().batch([])


@pytest.mark.parametrize(
    "options",
    [
        {"crop_size": 300},
        {"crop_size": 0},
        {"std": (0.5, 0.0, 0.5)},
        {"mean": (0.5, 0.5)},
        {"interpolation": "nearest"},
    ],
)
def test_invalid_configuration_raises_value_error(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Preprocessing(**options)  # type: ignore[arg-type]


def test_is_frozen_and_hashable() -> None:
    preprocessing = Preprocessing()
    assert preprocessing == Preprocessing() and hash(preprocessing) == hash(Preprocessing())
    with pytest.raises(AttributeError):
        preprocessing.crop_size = 1  # type: ignore[misc]


def test_uint8_input_range_is_not_clipped() -> None:
    extremes = np.zeros((4, 4, 3), dtype=np.uint8)
    extremes[2:] = 255
    tensor = Preprocessing(4, 4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(Image.fromarray(extremes))
    assert tensor.min() == 0.0 and tensor.max() == 1.0
