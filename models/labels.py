"""ImageNet-1k class names and the class-index ranges the app groups them into."""

from __future__ import annotations

import functools

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

    Source: torchvision's public weights metadata,
    ``torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]``, the
    order every torchvision ImageNet classifier (and EfficientNet-Lite0) outputs.
    Reading the metadata downloads nothing. torchvision is imported on the first call
    only; the result is cached.

    Returns:
        A tuple of 1000 strings; index ``i`` names output class ``i``
        (e.g. 281 -> ``'tabby'``, 967 -> ``'espresso'``).
    """
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
