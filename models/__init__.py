"""The model side of the image-classification app.

Decode untrusted image bytes (:func:`decode_image`), load a classifier by name
(:func:`load_model`) and classify images into top-k :class:`Prediction` lists::

    from models import decode_image, load_model

    classifier = load_model("efficientnet_lite0")
    image = decode_image(data, target_short_side=classifier.preprocessing.resize_short_side)
    [predictions] = classifier.classify([image], top_k=5)

A checkpoint trained by ``python -m models.training`` loads by URI, with its class names
and preprocessing: ``load_model("checkpoint:runs/fashion_mnist_cnn/model.pt")`` (or
``gs://bucket/...``).

Inference runs on ONNX Runtime or OpenVINO (whichever agrees with torch on real photos
and is faster on this CPU; the model is exported once and cached), else on torch:
``load_model(name, backend="auto" | "torch" | "onnxruntime" | "openvino",
precision="fp32" | "bf16" | "int8" | "auto")``; ``classifier.backend`` and
``classifier.precision`` say which.

Importing this package loads no model and downloads nothing, and imports neither torch nor
numpy (so :mod:`models.datasets` works without them); the names below are imported on
first use, and none of them imports torch until a model is built, exported, checked or
trained. With the exported model and its verdicts cached, a default ``load_model`` /
``BatchClassifier.load`` of a built-in model never imports torch or torchvision
(:mod:`models.serving_cache`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch_classifier import BatchClassifier, ClassifiedImage, ClassifierOptions, EncodedImage
    from .classifier import Backend, Device, ImageClassifier, Prediction
    from .errors import (
        EmptyImageError,
        ImageDecodeError,
        ImageFileTooLargeError,
        ImageTooLargeError,
        ModelError,
        TruncatedImageError,
        UnsupportedImageError,
    )
    from .labels import CAT_CLASS_INDICES, DOG_CLASS_INDICES, imagenet_labels
    from .preprocessing import (
        DEFAULT_MAX_BYTES,
        DEFAULT_MAX_PIXELS,
        IMAGENET_MEAN_STD,
        TF_MEAN_STD,
        Preprocessing,
        check_file_size,
        decode_image,
    )
    from .registry import (
        Precision,
        available_models,
        load_checkpoint,
        load_model,
        register_model,
    )

# name -> the submodule that defines it (imported on first use: PEP 562 module __getattr__)
_LAZY = {
    **dict.fromkeys(
        ("BatchClassifier", "ClassifiedImage", "ClassifierOptions", "EncodedImage"), "batch_classifier"
    ),
    **dict.fromkeys(
        (
            "EmptyImageError",
            "ImageDecodeError",
            "ImageFileTooLargeError",
            "ImageTooLargeError",
            "ModelError",
            "TruncatedImageError",
            "UnsupportedImageError",
        ),
        "errors",
    ),
    **dict.fromkeys(("CAT_CLASS_INDICES", "DOG_CLASS_INDICES", "imagenet_labels"), "labels"),
    **dict.fromkeys(
        (
            "DEFAULT_MAX_BYTES",
            "DEFAULT_MAX_PIXELS",
            "IMAGENET_MEAN_STD",
            "TF_MEAN_STD",
            "Preprocessing",
            "check_file_size",
            "decode_image",
        ),
        "preprocessing",
    ),
    **dict.fromkeys(("Backend", "Device", "ImageClassifier", "Prediction"), "classifier"),
    **dict.fromkeys(
        (
            "Precision",
            "available_models",
            "load_checkpoint",
            "load_model",
            "register_model",
        ),
        "registry",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ModelError",
    "ImageDecodeError",
    "EmptyImageError",
    "UnsupportedImageError",
    "TruncatedImageError",
    "ImageTooLargeError",
    "ImageFileTooLargeError",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGENET_MEAN_STD",
    "TF_MEAN_STD",
    "Preprocessing",
    "decode_image",
    "check_file_size",
    "imagenet_labels",
    "DOG_CLASS_INDICES",
    "CAT_CLASS_INDICES",
    "Backend",
    "Device",
    "Precision",
    "Prediction",
    "ImageClassifier",
    "load_model",
    "load_checkpoint",
    "register_model",
    "available_models",
    "BatchClassifier",
    "ClassifiedImage",
    "ClassifierOptions",
    "EncodedImage",
]
