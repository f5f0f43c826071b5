"""Exceptions raised by the :mod:`models` package.

Two families:

* :class:`ModelError`: a model cannot be loaded or used (unknown name, missing or
  mismatched weights, labels that do not fit the model, unavailable device). These are
  configuration errors: retrying the same call will not help.
* :class:`ImageDecodeError` and its children: the bytes given to
  :func:`models.decode_image` are not a usable image. These are per-input errors: a
  pipeline should dead-letter that one input and carry on. It derives from
  :class:`ValueError` because the problem is the value passed in.
"""

from __future__ import annotations

__all__ = [
    "ModelError",
    "ImageDecodeError",
    "EmptyImageError",
    "UnsupportedImageError",
    "TruncatedImageError",
    "ImageTooLargeError",
    "ImageFileTooLargeError",
]


class ModelError(Exception):
    """A model cannot be loaded or used; the message says why and how to fix it."""


class ImageDecodeError(ValueError):
    """The given bytes are not a usable image (root of the decode errors)."""


class EmptyImageError(ImageDecodeError):
    """The image data is empty (zero bytes)."""


class UnsupportedImageError(ImageDecodeError):
    """The data is not an image Pillow can identify, or its pixels cannot become RGB."""


class TruncatedImageError(ImageDecodeError):
    """The image was identified, but its data is truncated or corrupt."""


class ImageTooLargeError(ImageDecodeError):
    """The image's pixel count is over the decompression-bomb limit (``max_pixels``)."""


class ImageFileTooLargeError(ImageDecodeError):
    """The encoded image (the file or object) is over the size limit (``max_bytes``)."""
