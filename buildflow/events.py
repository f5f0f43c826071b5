"""Event types delivered to ``Processor.process``.

The shapes follow the original BuildFlow 0.1 walkthrough so code written for it keeps
working: ``gcs_file_event.blob`` is the object's bytes and ``gcs_file_event.metadata`` is
the notification's attribute map (``bucketId``, ``objectId``, ``objectGeneration``,
``eventType``, ``eventTime``), as Cloud Storage puts on its Pub/Sub notifications
(https://cloud.google.com/storage/docs/pubsub-notifications#attributes).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

__all__ = ["BlobReader", "FileEvent", "GCSFileEvent", "PubSubMessageEvent"]


class BlobReader(ABC):
    """Reads an object's bytes when first asked. Picklable; opened where it is used.

    ``in_memory`` is True for a reader whose bytes are already in this process (nothing
    to gain from reading it ahead, see :class:`buildflow.runtime.readahead.BlobReadAhead`).
    """

    in_memory: ClassVar[bool] = False

    @abstractmethod
    def read(self) -> bytes:
        """Return the object's bytes.

        Raises:
            FileNotFoundError: the object was deleted after the event was raised.
        """


class FileEvent:
    """Common base of events that carry one file-like payload, so one processor can take
    them from any source (annotate ``process(self, event: FileEvent)``).

    Every subclass has ``name`` (str), ``event_id`` (str), ``event_time`` (aware datetime),
    ``blob`` (the payload's bytes, read on first access) and ``metadata`` (str -> str).

    The payload is read at most once at a time: threads that ask for ``blob`` while a read
    is in flight (a runtime's read-ahead, or another thread) wait for that read instead of
    starting their own, and a successful read is kept on the event. A read that fails is
    not kept: the next access reads again (a retry).
    """

    name: str
    event_id: str
    event_time: datetime.datetime
    metadata: Mapping[str, str]

    @property
    def blob(self) -> bytes:
        """The payload's bytes, read on first access and kept (see the class docstring).

        Raises:
            Whatever the source's reader raises, e.g. FileNotFoundError when the object
            no longer exists.
        """
        d = self.__dict__
        data = d.get("_blob")
        if data is not None:
            return data  # type: ignore[no-any-return]
        future = self.start_blob_read()
        if future is not None:  # ours to read, here
            self._finish_blob_read(future)
        else:
            future = d["_blob_future"]
            if not future.done():  # another thread's read (e.g. read-ahead) is in flight
                t0 = time.perf_counter()
                concurrent.futures.wait([future])
                d["_blob_wait_s"] = d.get("_blob_wait_s", 0.0) + time.perf_counter() - t0
        return future.result()

    def blob_reader(self) -> BlobReader | None:
        """The reader of the payload, or None when the payload is in the event itself."""
        return None

    def start_blob_read(self) -> concurrent.futures.Future[bytes] | None:
        """Claim the payload's read: a fresh future, which the caller must complete with
        :meth:`_finish_blob_read`; None when the bytes are already here or another
        thread's read is in flight (that one's future is then the event's). For
        read-ahead (:class:`buildflow.runtime.readahead.BlobReadAhead`)."""
        with _BLOB_LOCK:
            d = self.__dict__
            if d.get("_blob") is not None or d.get("_blob_future") is not None:
                return None
            future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            d["_blob_future"] = future
            return future

    def _finish_blob_read(self, future: concurrent.futures.Future[bytes]) -> None:
        """Read the payload into ``future`` (claimed by :meth:`start_blob_read`); never raises:
        a failure is the future's exception."""
        try:
            data = self._read_blob()
        except BaseException as e:
            with _BLOB_LOCK:
                self.__dict__.pop("_blob_future", None)  # not kept: the next access reads again
            future.set_exception(e)
            return
        with _BLOB_LOCK:
            self.__dict__["_blob"] = data
            self.__dict__.pop("_blob_future", None)
        future.set_result(data)

    def _read_blob(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getstate__(self) -> dict[str, object]:
        """Pickled without a read in flight (a future holds a lock)."""
        return {k: v for k, v in self.__dict__.items() if k != "_blob_future"}


_BLOB_LOCK = threading.Lock()  # guards the claim of a payload's read (held for dict updates only)


@dataclasses.dataclass(frozen=True, eq=False)
class GCSFileEvent(FileEvent):
    """An object was finalized (uploaded or overwritten) in a bucket.

    Attributes:
        bucket_name: The bucket.
        name: The object name (may contain ``/``).
        generation: The object's generation; a new upload of the same name gets a new
            one. In the ``local`` environment it is the file's ``st_mtime_ns``.
        size: Object size in bytes.
        content_type: MIME type, as stored (GCS) or guessed from the name (local).
        event_time: When the object was finalized (UTC).
        event_id: Stable id ``<bucket>/<name>#<generation>``: the same upload always has
            the same id, so a redelivered event is recognised downstream.
        metadata: Notification attributes: ``bucketId``, ``objectId``,
            ``objectGeneration``, ``eventType``, ``eventTime`` (RFC 3339).
        object_metadata: The object's custom metadata (``x-goog-meta-*``), if any.
    """

    bucket_name: str
    name: str
    generation: int
    size: int
    content_type: str | None
    event_time: datetime.datetime
    event_id: str
    metadata: Mapping[str, str]
    reader: BlobReader = dataclasses.field(repr=False)
    object_metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def _read_blob(self) -> bytes:
        """``blob``: the object's bytes, read on first access (off the event loop: ``process``
        runs in a worker thread, or ahead on the runtime's I/O threads) and kept on the event.

        Raises:
            FileNotFoundError: the object no longer exists.
        """
        return self.reader.read()

    def blob_reader(self) -> BlobReader:
        return self.reader

    def read_bytes(self) -> bytes:
        """Same as :attr:`blob`; reads better in new code."""
        return self.blob

    @property
    def uri(self) -> str:
        """``gs://bucket/name``."""
        return f"gs://{self.bucket_name}/{self.name}"

    @staticmethod
    def make_event_id(bucket_name: str, name: str, generation: int) -> str:
        """The stable id of one upload: ``<bucket>/<name>#<generation>``."""
        return f"{bucket_name}/{name}#{generation}"

    @staticmethod
    def notification_attributes(
        bucket_name: str, name: str, generation: int, event_time: datetime.datetime
    ) -> dict[str, str]:
        """Attributes as on a real OBJECT_FINALIZE notification."""
        return {
            "bucketId": bucket_name,
            "objectId": name,
            "objectGeneration": str(generation),
            "eventType": "OBJECT_FINALIZE",
            "eventTime": event_time.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "payloadFormat": "JSON_API_V1",
        }


@dataclasses.dataclass(frozen=True, eq=False)
class PubSubMessageEvent(FileEvent):
    """A Pub/Sub message that carries an image, or points at one.

    The payload is the file itself, unless it (or the ``uri`` attribute) is a
    ``gs://bucket/object`` reference: then :attr:`blob` downloads that object.

    Attributes:
        message_id: Pub/Sub's id, stable across redeliveries.
        data: The raw payload.
        name: The ``name`` attribute, else the referenced object's name, else the message id.
        event_id: ``<topic>/<message_id>``.
        event_time: The publish time (UTC).
        metadata: The message attributes.
        uri: The ``gs://`` reference, if the message is one.
    """

    message_id: str
    data: bytes = dataclasses.field(repr=False)
    name: str
    event_id: str
    event_time: datetime.datetime
    metadata: Mapping[str, str]
    uri: str | None = None
    reader: BlobReader | None = dataclasses.field(default=None, repr=False)

    def _read_blob(self) -> bytes:
        """``blob``: the payload, or the referenced object's bytes (read on first access).

        Raises:
            FileNotFoundError: the referenced object does not exist.
        """
        return self.reader.read() if self.reader is not None else self.data

    def blob_reader(self) -> BlobReader | None:
        return self.reader
