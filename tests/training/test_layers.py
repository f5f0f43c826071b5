"""The layer-list builder: good specs build and fit the input; shape mistakes fail before
training, naming the layer; only allow-listed torch.nn layers are ever built."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from models.training.config import LayerSpec, parse_config
from models.training.layers import LayerSpecError, build_layers, build_model, set_train_mode, summary
from tests.training.helpers import example


def specs(*layers: tuple[str, dict[str, Any]]) -> list[LayerSpec]:
    return [LayerSpec(layer=name, args=args) for name, args in layers]


def test_the_example_cnn_builds_with_its_head_and_maps_images_to_logits() -> None:
    config = parse_config(example())
    built = build_model(config)
    module = built.module
    assert isinstance(module, nn.Sequential) and list(module.named_children())[-1][0] == "head"
    head = module.get_submodule("head")
    assert isinstance(head[2], nn.Linear) and (head[2].in_features, head[2].out_features) == (128 * 3 * 3, 10)
    assert sum(p.numel() for p in module.parameters()) == 104_426
    assert module.training  # ready to train
    module.eval()
    assert module(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    text = summary(config, built)
    assert "(128, 3, 3)" in text and "parameters: 104,426 (104,426 trainable)" in text


def test_the_head_measures_the_features_itself() -> None:
    model = build_layers(
        specs(("Conv2d", {"in_channels": 3, "out_channels": 4, "kernel_size": 3}), ("ReLU", {})),
        in_channels=3,
        image_size=16,
        num_classes=5,
        head_dropout=0.5,
    )
    linear = model.get_submodule("head.2")
    assert isinstance(linear, nn.Linear) and linear.in_features == 4 * 14 * 14
    assert model.get_submodule("head.1").p == 0.5


def test_the_shape_check_leaves_batchnorm_statistics_untouched() -> None:
    model = build_layers(
        specs(
            ("Conv2d", {"in_channels": 1, "out_channels": 2, "kernel_size": 3}),
            ("BatchNorm2d", {"num_features": 2}),
        ),
        in_channels=1,
        image_size=8,
        num_classes=2,
    )
    bn = model.get_submodule("1")
    assert isinstance(bn, nn.BatchNorm2d) and int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_var, torch.ones(2))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [("Conv2d", {"in_channels": 3, "out_channels": 8, "kernel_size": 3})],
            "model.layers[0] (Conv2d(in_channels=3, out_channels=8, kernel_size=3)) does not fit its "
            "input of shape (2, 1, 28, 28) (batch, channels, height, width) for 28x28 images with "
            "1 channel(s)",
        ),
        (
            [
                ("Conv2d", {"in_channels": 1, "out_channels": 8, "kernel_size": 3, "padding": 1}),
                ("Flatten", {}),
                ("Linear", {"in_features": 100, "out_features": 32}),
            ],
            "model.layers[2] (Linear(in_features=100, out_features=32)) does not fit its input of shape "
            "(2, 6272)",
        ),
        (
            [("MaxPool2d", {"kernel_size": 2})] * 6,
            "model.layers[4] (MaxPool2d(kernel_size=2)) does not fit its input of shape (2, 1, 1, 1)",
        ),
        ([("Conv2d", {"in_channels": 1, "out_channels": -4, "kernel_size": 3})], "model.layers[0] (Conv2d("),
    ],
    ids=["channels", "linear-features", "pooled-away", "bad-arg-value"],
)
def test_a_shape_mistake_fails_before_training_naming_the_layer(
    layers: list[tuple[str, dict[str, Any]]], message: str
) -> None:
    with pytest.raises(LayerSpecError) as info:
        build_layers(specs(*layers), in_channels=1, image_size=28, num_classes=10)
    assert message in str(info.value), str(info.value)


def test_a_bad_layer_list_in_a_config_fails_when_the_model_is_built() -> None:
    data = example()
    data["model"]["layers"][4]["args"]["in_channels"] = 16  # the block before makes 32
    with pytest.raises(LayerSpecError, match=r"model.layers\[4\] \(Conv2d\(in_channels=16"):
        build_model(parse_config(data))


def test_only_allow_listed_layers_are_built_even_from_an_unvalidated_spec() -> None:
    rogue = LayerSpec.model_construct(layer="Transformer", args={})  # skips pydantic validation
    with pytest.raises(LayerSpecError, match="not an allowed layer"):
        build_layers([rogue], in_channels=1, image_size=8, num_classes=2)


def test_finetuning_replaces_the_head_and_freezes_the_backbone() -> None:
    data = example("finetune_folder.yaml")
    config = parse_config(data)
    built = build_model(config)  # EfficientNet-Lite0 with its real ImageNet weights
    assert built.head == "_fc" and built.frozen_backbone
    trainable = {n for n, p in built.module.named_parameters() if p.requires_grad}
    assert trainable == {"_fc.1.weight", "_fc.1.bias"}
    set_train_mode(built)
    bns = [m for m in built.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert built.module.get_submodule("_fc.0").training  # the head's dropout does train
    built.module.eval()
    with torch.inference_mode():
        assert built.module(torch.zeros(1, 3, 128, 128)).shape == (1, 3)
    data["image"]["grayscale"] = True
    data["image"] |= {"mean": [0.5], "std": [0.5]}
    with pytest.raises(Exception, match="needs colour input"):
        build_model(parse_config(data))
