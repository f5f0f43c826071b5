"""Thumbnails for the gallery: made from the bytes the page uploaded, or read back from
the bucket through the source provider's blob reader (never from a path the client names).
"""

from __future__ import annotations

import collections
import io
import threading

from buildflow.events import BlobReader
from buildflow.io.base import SourceProvider

__all__ = ["ThumbnailCache", "make_thumbnail", "object_reader", "MAX_THUMBNAIL_SOURCE_PIXELS"]

MAX_THUMBNAIL_SOURCE_PIXELS = 40_000_000
"""Images with more pixels get no thumbnail (checked from the header, before decoding)."""


def make_thumbnail(data: bytes, size_px: int = 256) -> bytes | None:
    """A JPEG of at most ``size_px`` x ``size_px`` pixels (aspect kept, EXIF orientation
    applied), or None if ``data`` is not an image Pillow can fully decode (truncated,
    corrupt, over :data:`MAX_THUMBNAIL_SOURCE_PIXELS`) or Pillow is not installed.

    Thread-safe: no global Pillow setting is changed.
    """
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_THUMBNAIL_SOURCE_PIXELS:
                return None
            if im.format == "JPEG":
                im.draft("RGB", (size_px * 2, size_px * 2))  # let libjpeg decode at 1/2..1/8
            im.load()
            out = ImageOps.exif_transpose(im)
            if out.mode not in ("RGB", "L"):
                out = out.convert("RGBA")
                white = Image.new("RGBA", out.size, (255, 255, 255, 255))
                out = Image.alpha_composite(white, out).convert("RGB")
            out.thumbnail((size_px, size_px))
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=80)
            return buf.getvalue()
    except Exception:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, ...)
        return None


def object_reader(source: SourceProvider, name: str) -> BlobReader | None:
    """The provider's reader for object ``name`` of a bucket source, or None for sources
    whose payloads cannot be read back (topics).

    The local bucket's :class:`~buildflow.io.local.folder.LocalBlobReader` refuses names
    that resolve outside the bucket root; GCS objects live in their bucket by construction.
    """
    from buildflow.io.local.folder import LocalBlobReader, LocalBucketProvider

    if isinstance(source, LocalBucketProvider):
        return LocalBlobReader(str(source.bucket_dir), name)
    from buildflow.io.google.blobs import GCSBlobReader
    from buildflow.io.google.gcs import GCSFileStreamProvider

    if isinstance(source, GCSFileStreamProvider):
        return GCSBlobReader(source.environment, source.project, source.declaration.bucket_name, name, None)
    return None


class ThumbnailCache:
    """The thumbnails of the latest ``max_entries`` objects, by ``(processor, object name)``
    (least recently used first out). Thread-safe."""

    def __init__(self, max_entries: int = 512) -> None:
        self._lock = threading.Lock()
        self._max = max_entries
        self._items: collections.OrderedDict[tuple[str, str], bytes | None] = collections.OrderedDict()

    def put(self, processor: str, name: str, thumbnail: bytes | None) -> None:
        """Remember ``thumbnail`` (None: known to have none) for ``name``."""
        with self._lock:
            self._items[(processor, name)] = thumbnail
            self._items.move_to_end((processor, name))
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def get(self, processor: str, name: str) -> tuple[bool, bytes | None]:
        """``(known, thumbnail)``: whether ``name`` is cached, and its thumbnail."""
        with self._lock:
            key = (processor, name)
            if key not in self._items:
                return False, None
            self._items.move_to_end(key)
            return True, self._items[key]
