"""ImageNet-1k class names and the class-index ranges the app groups them into."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

__all__ = ["imagenet_labels", "DOG_CLASS_INDICES", "CAT_CLASS_INDICES"]

# ImageNet-1k (ILSVRC-2012) class indices 151..268 are the 118 dog breeds, from
# 151 'Chihuahua' to 268 'Mexican hairless' (269 is 'timber wolf').
DOG_CLASS_INDICES = range(151, 269)

# Domestic cats only: 281 'tabby', 282 'tiger cat', 283 'Persian cat', 284 'Siamese cat',
# 285 'Egyptian cat'. The wild cats that follow (286 'cougar' .. 293 'cheetah') are left
# out on purpose: a photo of a lion is not a photo of a cat for this app.
CAT_CLASS_INDICES = range(281, 286)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """Return the 1000 ImageNet-1k class names in class-index order.

    Source: torchvision's public weights metadata (``_IMAGENET_CATEGORIES`` in
    ``torchvision/models/_meta.py``, which
    ``torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]`` is), the
    order every torchvision ImageNet classifier (and EfficientNet-Lite0) outputs. The list
    is read from that file as a literal, without importing torchvision: importing it pulls
    in ``torch._dynamo`` (about 2.5 s on 2 cores), which the default model does not need.
    When the file cannot be read that way (a torchvision that moved it), torchvision is
    imported instead. Nothing is downloaded; the result is cached.

    Returns:
        A tuple of 1000 strings; index ``i`` names output class ``i``
        (e.g. 281 -> ``'tabby'``, 967 -> ``'espresso'``).
    """
    labels = _labels_from_torchvision_source()
    if labels is not None:
        return labels
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _labels_from_torchvision_source() -> tuple[str, ...] | None:
    """``_IMAGENET_CATEGORIES`` parsed from torchvision's ``models/_meta.py``, or None."""
    spec = importlib.util.find_spec("torchvision")  # finds the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / "_meta.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets
            ):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    return None
                if isinstance(value, list) and len(value) == 1000 and all(isinstance(x, str) for x in value):
                    return tuple(value)
    return None
