"""Build the model a training config describes: a layer list, or a fine-tuned registry model.

A layer list is built from :data:`models.training.config.LAYERS` (an allow-list of
``torch.nn`` classes, looked up by name on ``torch.nn``; nothing else is imported), then
checked on a dummy batch of the configured input size one layer at a time, so a shape
mistake fails before any data is read, naming the layer and the shape it received. The
classifier head ``Flatten -> Dropout(head_dropout) -> Linear(features, num_classes)`` is
appended with ``features`` measured on that batch.

Fine-tuning takes a built-in registry architecture with its ImageNet weights
(:func:`models.architectures.build_backbone`) and replaces its last ``Linear`` with
``Dropout -> Linear(in_features, num_classes)``; with ``freeze_backbone`` only that head
trains, and the backbone's BatchNorm layers keep their ImageNet statistics.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .config import LAYERS, ConfigError, LayerSpec, TrainingConfig

__all__ = ["LayerSpecError", "BuiltModel", "build_layers", "build_model", "set_train_mode", "summary"]


class LayerSpecError(ConfigError):
    """A layer list cannot be built or does not fit the input size; names the layer."""


@dataclasses.dataclass(frozen=True, eq=False)
class BuiltModel:
    """A model built from a config.

    Attributes:
        module: Maps float32 ``(N, C, size, size)`` to logits ``(N, num_classes)``.
        head: Name prefix of the classifier head's parameters (``"head"`` for a layer
            list; e.g. ``"_fc"`` for EfficientNet-Lite0).
        frozen_backbone: Whether only the head's parameters train.
    """

    module: nn.Module
    head: str
    frozen_backbone: bool = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def _describe(index: int, spec: LayerSpec) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in spec.args.items())
    return f"model.layers[{index}] ({spec.layer}({args}))"


def build_layers(
    specs: list[LayerSpec], *, in_channels: int, image_size: int, num_classes: int, head_dropout: float = 0.0
) -> nn.Sequential:
    """The layers of ``specs`` plus the classifier head, checked on a dummy input.

    Args:
        specs: The layer list (validated :class:`LayerSpec`).
        in_channels: 1 (grayscale) or 3.
        image_size: Input height and width, pixels.
        num_classes: Outputs of the head.
        head_dropout: Dropout probability before the head's ``Linear``.

    Returns:
        ``nn.Sequential`` with children ``"0"`` .. ``"<n-1>"`` and ``"head"``.

    Raises:
        LayerSpecError: A layer name is not allowed, a layer cannot be built from its
            args, or it fails on the output of the layer before it (the message gives the
            layer's index, its args, and the input shape it got).
    """
    layers: list[nn.Module] = []
    for i, spec in enumerate(specs):
        if spec.layer not in LAYERS:  # LayerSpec checks it too; never getattr an unchecked name
            raise LayerSpecError(f"{_describe(i, spec)}: not an allowed layer; allowed: {', '.join(LAYERS)}")
        try:
            layers.append(getattr(nn, spec.layer)(**spec.args))
        except Exception as e:
            raise LayerSpecError(f"{_describe(i, spec)} cannot be built: {e}") from None
    # eval mode: BatchNorm keeps its initial statistics, Dropout draws no random numbers
    x = torch.zeros(2, in_channels, image_size, image_size)
    with torch.no_grad():
        for i, (spec, layer) in enumerate(zip(specs, layers)):
            shape = tuple(x.shape)
            try:
                x = layer.eval()(x)
            except Exception as e:
                raise LayerSpecError(
                    f"{_describe(i, spec)} does not fit its input of shape {shape} (batch, channels, "
                    f"height, width) for {image_size}x{image_size} images with {in_channels} channel(s): {e}"
                ) from None
            if x.numel() == 0:
                raise LayerSpecError(
                    f"{_describe(i, spec)} turns input {shape} into an empty tensor {tuple(x.shape)}; "
                    "the image is too small for this many poolings/strides"
                )
    features = math.prod(x.shape[1:])
    head = nn.Sequential(nn.Flatten(), nn.Dropout(head_dropout), nn.Linear(features, num_classes))
    model = nn.Sequential()
    for i, layer in enumerate(layers):
        model.add_module(str(i), layer)
    model.add_module("head", head)
    return model.train()


def _replace_last_linear(module: nn.Module, num_classes: int, dropout: float) -> str:
    last: tuple[str, nn.Linear] | None = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            last = (name, child)
    if last is None:
        raise ConfigError(f"cannot fine-tune {type(module).__name__}: it has no Linear classifier to replace")
    name, linear = last
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), nn.Linear(linear.in_features, num_classes)))
    return name


def build_model(config: TrainingConfig, *, pretrained: bool = True, device: str = "cpu") -> BuiltModel:
    """The untrained (layer list) or ImageNet-initialised (fine-tuning) model of ``config``.

    Args:
        config: The training config.
        pretrained: For fine-tuning, load the base model's ImageNet weights (training);
            False when a checkpoint's weights are loaded next (serving).
        device: ``"cpu"`` or ``"cuda"``.

    Raises:
        LayerSpecError: The layer list does not build or fit the input size.
        ModelError: The fine-tuning base's weights are missing or do not fit.
    """
    channels = 1 if config.image.grayscale else 3
    spec = config.model
    if spec.layers is not None:
        module = build_layers(
            spec.layers,
            in_channels=channels,
            image_size=config.image.size,
            num_classes=spec.num_classes,
            head_dropout=spec.head_dropout,
        )
        return BuiltModel(module.to(device), "head")
    assert spec.finetune is not None
    from models.architectures import build_backbone

    if channels == 1:
        raise ConfigError(
            f"fine-tuning {spec.finetune.base} needs colour input (3 channels): set image.grayscale: false"
        )
    backbone = build_backbone(
        spec.finetune.base,
        weights_path=spec.finetune.weights_path,
        load_weights=pretrained,
        device="cuda" if device == "cuda" else "cpu",
    )
    head = _replace_last_linear(backbone, spec.num_classes, spec.head_dropout)
    backbone.to(device)
    if spec.finetune.freeze_backbone:
        for name, p in backbone.named_parameters():
            p.requires_grad_(name.startswith(head + "."))
    return BuiltModel(backbone, head, spec.finetune.freeze_backbone)


def set_train_mode(built: BuiltModel) -> None:
    """``train()`` the model; with a frozen backbone, its BatchNorm layers stay in eval mode
    (their running statistics are part of what is frozen)."""
    built.module.train()
    if built.frozen_backbone:
        for name, child in built.module.named_modules():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not name.startswith(built.head):
                child.eval()


def summary(config: TrainingConfig, built: BuiltModel) -> str:
    """Per-layer output shapes (layer lists) and parameter counts, as printed by ``check``."""
    total = sum(p.numel() for p in built.module.parameters())
    trainable = sum(p.numel() for p in built.trainable_parameters())
    lines = []
    if config.model.layers is not None:
        channels = 1 if config.image.grayscale else 3
        x = torch.zeros(2, channels, config.image.size, config.image.size)
        built.module.eval()
        with torch.no_grad():
            for name, child in built.module.named_children():
                x = child(x)
                params = sum(p.numel() for p in child.parameters())
                lines.append(
                    f"  {name:>5} {type(child).__name__:<18} -> {tuple(x.shape[1:])!s:<16} {params:>9,}"
                )
    lines.append(f"parameters: {total:,} ({trainable:,} trainable)")
    return "\n".join(lines)
