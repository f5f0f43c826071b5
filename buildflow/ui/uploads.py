"""Uploads from the web page: content sniffing, safe object names, and delivery into the
processor's source the way a user would do it.

* A bucket source (``GCSFileStream``: the local folder, or GCS in ``emulator``/``gcp``) gets
  the file through its provider's :meth:`~buildflow.io.base.SourceProvider.upload`, the same
  code path as ``buildflow upload`` (the local provider writes a hidden temporary file and
  renames it into place, and refuses names outside the bucket root).
* A topic source (``KafkaTopic``, ``PubSubSubscription``) gets it through the project's
  producer (:mod:`buildflow.producer`), as ``buildflow produce`` sends it.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from typing import Any

from buildflow.runtime.base import BoundProcessor

__all__ = [
    "IMAGE_SIGNATURES",
    "sniff_image",
    "safe_object_name",
    "UploadItem",
    "Uploader",
]

IMAGE_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    # (magic bytes, at offset, content type, file extension)
    (b"\xff\xd8\xff", 0, "image/jpeg", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", ".png"),
    (b"GIF87a", 0, "image/gif", ".gif"),
    (b"GIF89a", 0, "image/gif", ".gif"),
    (b"WEBP", 8, "image/webp", ".webp"),  # after b"RIFF" + 4-byte size
    (b"BM", 0, "image/bmp", ".bmp"),
    (b"II*\x00", 0, "image/tiff", ".tif"),
    (b"MM\x00*", 0, "image/tiff", ".tif"),
)
"""The image formats the UI accepts, by their magic bytes (the file signatures of the JPEG,
PNG, GIF, WebP/RIFF, BMP and TIFF specifications)."""

_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
_MAX_NAME_BYTES = 200  # well under the 255 bytes most file systems allow per name


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """``(content type, extension)`` if ``data`` starts like an image, else None.

    Only the signature is checked, never the whole file: a truncated or corrupt image with a
    valid header is accepted, so that it reaches the pipeline and is dead-lettered there
    with its reason (the pipeline, not the upload form, decides what a good image is).
    """
    for magic, offset, ctype, ext in IMAGE_SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return ctype, ext
    return None


def safe_object_name(filename: str | None, extension: str) -> str:
    """A bucket object name made from an uploaded file's name, that cannot name anything
    outside the bucket root.

    Keeps only the base name (after the last ``/`` or ``\\``), drops control and format
    characters (NUL, newlines, bidi overrides), leading dots (hidden names are ignored by
    the local bucket) and surrounding spaces, limits it to 200 UTF-8 bytes, and appends
    ``extension`` when the name has no image extension. ``..``, ``/etc/passwd`` or an empty
    name become ``upload.jpg``-like names. The provider's own checks still apply.
    """
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = base.strip().lstrip(".").strip()
    stem, ext = os.path.splitext(base)
    if ext.lower() not in _IMAGE_EXTENSIONS:
        stem, ext = base, extension
    stem = stem.rstrip("~").rstrip(".") or "upload"
    budget = _MAX_NAME_BYTES - len(ext.encode())
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    return stem + ext


class UploadItem:
    """One file on its way into a source: object name, bytes, sniffed content type and,
    for data sets with ground truth, its label."""

    __slots__ = ("name", "data", "content_type", "label")

    def __init__(self, name: str, data: bytes, content_type: str, label: str | None = None) -> None:
        self.name = name
        self.data = data
        self.content_type = content_type
        self.label = label


class Uploader:
    """Puts files into one bound processor's source. Blocking: call from a worker thread.

    Raises (from :meth:`send`):
        NotImplementedError: the source cannot be written to (e.g. an in-memory source).
        BuildflowError: the provider refused a name (``ConfigurationError``), the bucket is
            missing (``ResourceMissingError``), or the write failed.
        RuntimeError: a producer could not deliver every message.
    """

    def __init__(self, bound: BoundProcessor) -> None:
        self.bound = bound

    @property
    def kind(self) -> str:
        """``"producer"`` for topic sources, ``"upload"`` for bucket-like ones."""
        return "producer" if self._producer_target_factory() is not None else "upload"

    def _producer_target_factory(self) -> Any:
        from buildflow.io.google.declarations import PubSubSubscription
        from buildflow.io.kafka import KafkaTopic

        decl = self.bound.spec.source
        if isinstance(decl, KafkaTopic):

            def kafka() -> Any:
                from buildflow.producer import KafkaProducerTarget

                return KafkaProducerTarget(decl)

            return kafka
        if isinstance(decl, PubSubSubscription):

            def pubsub() -> Any:
                from buildflow.producer import PubSubProducerTarget

                return PubSubProducerTarget(decl.topic_path, fmt=decl.payload_format)

            return pubsub
        return None

    def send(self, items: Sequence[UploadItem]) -> list[str]:
        """Deliver ``items`` in order; returns where each went (a path, ``gs://`` URI, or
        topic), as the provider or producer reports it."""
        factory = self._producer_target_factory()
        if factory is None:
            return [self.bound.source.upload(i.name, i.data, i.content_type) for i in items]
        target = factory()
        try:
            for i in items:
                target.send(i.name, i.data, label=i.label)
        finally:
            target.close()
        where = self.bound.spec.source.describe()
        return [f"{where} key {i.name}" for i in items]
