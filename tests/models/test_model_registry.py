"""Registry and ImageClassifier with a tiny hand-set model; load_model's errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import models.architectures
import models.registry
from models import (
    ImageClassifier,
    ModelError,
    Prediction,
    Preprocessing,
    available_models,
    load_model,
    register_model,
)

TINY_LABELS = ("cat", "dog", "bird")
# Images become 2x2 RGB crops scaled to 0..1 (mean 0, std 1): 12 features.
TINY_PREPROCESSING = Preprocessing(2, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _tiny_module() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    """Logits ``[0, ln 2, ln 3] * mean(pixels)``: a white image gives softmax 1/6, 2/6, 3/6."""
    weight = torch.zeros(3, 12)
    weight[1] = math.log(2) / 12
    weight[2] = math.log(3) / 12
    return {"1.weight": weight, "1.bias": torch.zeros(3)}


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers into a copy of the registry, dropped after it."""
    isolated = dict(models.architectures._REGISTRY)  # the catalogue, also seen through registry
    monkeypatch.setattr(models.architectures, "_REGISTRY", isolated)
    monkeypatch.setattr(models.registry, "_REGISTRY", isolated)


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save(_tiny_state_dict(), path)
    return path


@pytest.fixture
def tiny(tiny_weights: Path) -> ImageClassifier:
    name = "tiny"
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=TINY_LABELS)
    return load_model(name, weights_path=tiny_weights)


def test_white_image_gives_exactly_known_probabilities(tiny: ImageClassifier) -> None:
    white = Image.new("RGB", (10, 6), (255, 255, 255))  # any size: resized and cropped
    probs = tiny.predict_proba(tiny.preprocessing.batch([white]))
    torch.testing.assert_close(probs, torch.tensor([[1 / 6, 2 / 6, 3 / 6]]))
    [predictions] = tiny.classify([white], top_k=3)
    assert [p.label for p in predictions] == ["bird", "dog", "cat"]
    assert [p.index for p in predictions] == [2, 1, 0]
    assert [p.confidence for p in predictions] == pytest.approx([1 / 2, 1 / 3, 1 / 6])
    assert all(type(p.confidence) is float and type(p.index) is int for p in predictions)


def test_ties_are_ordered_by_class_index(tiny: ImageClassifier) -> None:
    black = Image.new("RGB", (2, 2))  # all logits 0: uniform probabilities
    [predictions] = tiny.classify([black], top_k=3)
    assert predictions == [Prediction(label, pytest.approx(1 / 3), i) for i, label in enumerate(TINY_LABELS)]


def test_batch_keeps_input_order_and_top_k_truncates(tiny: ImageClassifier) -> None:
    images = [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))]
    results = tiny.classify(images, top_k=1)
    assert [[p.label for p in row] for row in results] == [["cat"], ["bird"]]
    assert len(tiny.classify(images, top_k=50)[0]) == 3  # k larger than the classes
    assert tiny.classify([], top_k=5) == []


def test_classifier_fields(tiny: ImageClassifier) -> None:
    assert tiny.labels == TINY_LABELS
    assert tiny.preprocessing == TINY_PREPROCESSING
    assert tiny.device == "cpu"
    assert not tiny.module.training
    assert tiny.load_latency_ms > 0
    assert tuple(tiny.preprocess(Image.new("RGB", (5, 5))).shape) == (3, 2, 2)
    assert tiny.name in available_models()


def test_bad_shapes_raise_value_error(tiny: ImageClassifier) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny.predict_proba(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match=r"probs must be \(N, 3\)"):
        tiny.top_k(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 1"):
        tiny.top_k(torch.zeros(1, 3), k=0)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_checkpoint_layouts_are_accepted(tmp_path: Path, wrapper: str | None) -> None:
    path = tmp_path / "weights.pth"
    state = _tiny_state_dict()
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    name = "tiny"
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=TINY_LABELS)
    classifier = load_model(name, weights_path=str(path))
    assert torch.equal(classifier.module[1].weight, state["1.weight"])


def test_load_labels_override_registered_labels(tiny_weights: Path) -> None:
    name = "tiny"
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING)
    with pytest.raises(ModelError, match="has no labels"):
        load_model(name, weights_path=tiny_weights)
    classifier = load_model(name, weights_path=tiny_weights, labels=["a", "b", "c"])
    assert classifier.labels == ("a", "b", "c")


def test_registering_a_taken_name_needs_replace() -> None:
    name = "tiny"
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=TINY_LABELS)
    with pytest.raises(ModelError, match=f"'{name}' is already registered; pass replace=True"):
        register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=TINY_LABELS)
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=["x", "y", "z"], replace=True)
    assert load_model(name).labels == ("x", "y", "z")  # no weights_path: factory's own weights


def test_labels_must_be_a_sequence_of_names_not_a_string() -> None:
    with pytest.raises(ModelError, match="not a single string"):
        register_model("tiny", _tiny_module, preprocessing=TINY_PREPROCESSING, labels="xyz")


def test_builtins_are_available() -> None:
    assert {"efficientnet_lite0", "mobilenet_v2", "resnet50", "vgg16"} <= set(available_models())


def test_unknown_name_lists_the_available_models() -> None:
    with pytest.raises(
        ModelError, match="unknown model 'nope'; available models: .*efficientnet_lite0.*mobilenet_v2"
    ):
        load_model("nope")


def test_torchvision_architecture_needs_weights_path() -> None:
    with pytest.raises(ModelError, match="needs weights_path=.*not downloaded at run time"):
        load_model("mobilenet_v2")


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "mobilenet_v2-b0353104.pth"
    with pytest.raises(ModelError, match=re.escape(f"weights file '{missing}'") + ".*does not exist"):
        load_model("mobilenet_v2", weights_path=missing)


def test_weights_that_do_not_fit_raise(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"1.weight": torch.zeros(5, 12), "1.bias": torch.zeros(5)}, path)
    name = "tiny"
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=TINY_LABELS)
    with pytest.raises(ModelError, match="does not fit model"):
        load_model(name, weights_path=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file"):
        load_model(name, weights_path=path)


def test_labels_length_must_match_output_classes(tiny_weights: Path) -> None:
    name = "tiny"
    register_model(name, _tiny_module, preprocessing=TINY_PREPROCESSING, labels=["a", "b"])
    with pytest.raises(ModelError, match="outputs 3 classes but labels has 2 entries"):
        load_model(name, weights_path=tiny_weights)
    with pytest.raises(ModelError, match="num_classes=1000 but labels has 2 entries"):
        load_model("efficientnet_lite0", labels=["a", "b"], num_classes=1000)
    with pytest.raises(ModelError, match="num_classes=10 needs labels"):
        load_model("mobilenet_v2", num_classes=10)
    with pytest.raises(ModelError, match="num_classes applies to built-in architectures only"):
        load_model(name, num_classes=3)


def test_torchvision_architecture_loads_a_supplied_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2(weights=None, num_classes=2)
    path = tmp_path / "mobilenet_v2_finetuned.pth"
    torch.save({"model": source.state_dict()}, path)
    classifier = load_model("mobilenet_v2", weights_path=path, labels=["cat", "dog"])
    assert classifier.labels == ("cat", "dog")
    for name, tensor in source.state_dict().items():
        assert torch.equal(classifier.module.state_dict()[name], tensor), name
    [predictions] = classifier.classify([Image.new("RGB", (320, 240), (90, 120, 30))])
    assert sorted(p.label for p in predictions) == ["cat", "dog"]
    assert sum(p.confidence for p in predictions) == pytest.approx(1.0)


def test_unknown_device_raises() -> None:
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        load_model("efficientnet_lite0", device="tpu")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises_instead_of_falling_back() -> None:
    with pytest.raises(
        ModelError,
        match=r"device 'cuda' requested but torch.cuda.is_available\(\) is False; use device='cpu'",
    ):
        load_model("efficientnet_lite0", device="cuda")


def test_classify_takes_one_image_or_a_list(tiny: ImageClassifier) -> None:
    white = Image.new("RGB", (10, 6), (255, 255, 255))
    black = Image.new("RGB", (4, 4), (0, 0, 0))
    one = tiny.classify(white, top_k=2)  # one image: its predictions
    assert [p.label for p in one] == ["bird", "dog"]
    assert [p.confidence for p in one] == pytest.approx([1 / 2, 1 / 3])
    batch = tiny.classify([white, black], top_k=2)  # a list: one list per image
    assert batch[0] == one and len(batch) == 2
    assert [p.confidence for p in batch[1]] == pytest.approx([1 / 3, 1 / 3])
    assert tiny.classify((white,), top_k=2) == [one]
    assert tiny.classify([]) == []
    with pytest.raises(TypeError, match=r"models\.decode_image"):
        tiny.classify(b"\xff\xd8 jpeg bytes")  # type: ignore[call-overload]
