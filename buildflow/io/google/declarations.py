"""Google Cloud declarations: :class:`GCSFileStream`, :class:`BigQueryTable` and
:class:`PubSubSubscription`.

Declarations only: nothing here imports a Google SDK. The provider that gives them life
is chosen by the environment (``local``: a folder and a DuckDB table; ``emulator`` and
``gcp``: the google-cloud-* clients).
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Literal, get_args

from buildflow.errors import ConfigurationError
from buildflow.events import GCSFileEvent, PubSubMessageEvent
from buildflow.io.base import DEAD_LETTER_TABLE_NAME, SinkDeclaration, SourceDeclaration
from buildflow.io.payloads import DEFAULT_MAX_PIXELS

__all__ = [
    "GCSFileStream",
    "BigQueryTable",
    "BigQueryWriteMode",
    "PubSubSubscription",
    "DEAD_LETTER_TABLE_NAME",
]

# https://cloud.google.com/storage/docs/buckets#naming (the common subset: no dots)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")
# https://cloud.google.com/bigquery/docs/datasets#dataset-naming and tables#table_naming
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,1024}$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")

BigQueryWriteMode = Literal["merge", "insert_id"]
"""How :class:`BigQueryTable` writes rows in ``gcp``/``emulator`` (see its docstring)."""
_WRITE_MODES: tuple[str, ...] = get_args(BigQueryWriteMode)


@dataclasses.dataclass(frozen=True)
class GCSFileStream(SourceDeclaration):
    """Upload notifications of a Cloud Storage bucket, as a stream of :class:`GCSFileEvent`.

    In ``local`` the bucket is the folder ``<state dir>/buckets/<bucket_name>/``: every
    file in it that is not yet acked is an event (also files that were there before the
    run started), and new files are picked up as they land. In ``gcp``/``emulator`` the
    bucket raises OBJECT_FINALIZE notifications on a Pub/Sub topic and subscription that
    ``plan`` creates.

    Args:
        bucket_name: 3-63 characters: lowercase letters, digits, ``-`` and ``_``.
        project_id: GCP project that owns the bucket, topic and subscription (not used
            in ``local``).
        prefix: Only objects whose name starts with this are events; others are acked
            and skipped.
        content_types: If given, only objects whose content type starts with one of
            these (e.g. ``("image/",)``) are events; others are acked and skipped.
        force_destroy: Let ``destroy`` delete the bucket even if it holds objects (only a
            bucket this app's ``plan`` created: one that existed before is never deleted).
        ack_deadline_secs: Pub/Sub ack deadline of the subscription (10-600 s).
        location: Where ``plan`` creates the bucket (``gcp``), e.g. ``"EU"`` or
            ``"europe-west1"``; None takes the app's other declared location, else Cloud
            Storage's default (``US``). All of an app's buckets and datasets must agree.
        dead_letter_topic: Optional Pub/Sub topic (short name, or ``projects/<p>/topics/<t>``)
            where Pub/Sub moves a notification after ``max_delivery_attempts`` deliveries
            that were never acked (a crash loop); ``plan`` creates it. None: no such limit.
        max_delivery_attempts: 5-100 (Pub/Sub's range), with ``dead_letter_topic``.

    Raises:
        ConfigurationError: a name or value is invalid.
    """

    bucket_name: str
    project_id: str | None = None
    prefix: str = ""
    content_types: tuple[str, ...] | None = None
    force_destroy: bool = False
    ack_deadline_secs: int = 60
    location: str | None = None
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 5

    event_type: ClassVar[type] = GCSFileEvent

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.bucket_name or ""):
            raise ConfigurationError(
                f"GCSFileStream: invalid bucket_name {self.bucket_name!r}: use 3-63 lowercase "
                "letters, digits, '-' or '_', starting and ending with a letter or digit."
            )
        if self.project_id is not None and not _PROJECT_RE.match(self.project_id):
            raise ConfigurationError(
                f"GCSFileStream: invalid project_id {self.project_id!r}: a GCP project id is "
                "6-30 lowercase letters, digits or '-', starting with a letter."
            )
        if not 10 <= self.ack_deadline_secs <= 600:
            raise ConfigurationError(
                f"GCSFileStream: ack_deadline_secs={self.ack_deadline_secs!r} is outside "
                "Pub/Sub's allowed range 10..600."
            )
        if self.content_types is not None and isinstance(self.content_types, str):
            object.__setattr__(self, "content_types", (self.content_types,))
        _check_dead_letter(self.describe(), self.dead_letter_topic, self.max_delivery_attempts)
        _check_location(self.describe(), self.location)

    def describe(self) -> str:
        return f"GCSFileStream(bucket={self.bucket_name!r})"


@dataclasses.dataclass(frozen=True)
class BigQueryTable(SinkDeclaration):
    """A BigQuery table whose schema is the processor's row dataclass.

    In ``local`` it is the DuckDB table ``<dataset>.<table>`` in
    ``<state dir>/warehouse.duckdb``. In ``gcp``/``emulator``, ``plan`` creates it with the
    row's columns plus ``_event_id STRING`` and ``_row_index INT64`` (NULLABLE; a table
    created before they existed gets them as an in-place update): together they are the
    row's idempotency key.

    Write modes (``gcp``/``emulator``; ``local`` is always exactly-once):

    * ``"merge"`` (default), **exactly-once**: each micro-batch is one DML statement,
      ``MERGE ... USING UNNEST(@rows) ... ON (_event_id, _row_index) WHEN NOT MATCHED THEN
      INSERT``, so a redelivered event's rows are skipped however late it comes back: after
      a crash, a restart, a redeploy, days later. The cost is a query job per batch (about
      1-2 s on BigQuery, against ~100 ms for a streaming insert, so roughly
      ``max_batch_size / 1.5 s`` rows/s per runner) and BigQuery's DML limits ("Quotas
      and limits": per table 2 MERGEs at a time, 20 queued, 25 DML statements every 10 s).
      Pick it unless latency or throughput matters more than a duplicate row.
    * ``"insert_id"``, best effort, lowest latency: the legacy streaming API
      (``insertAll``) with the insertId ``<event_id>/<row_index>``; BigQuery drops a
      repeated insertId only within about a minute ("Streaming data into BigQuery",
      best-effort de-duplication), so a redelivery after a crash or a long outage shows up
      as a duplicate row (de-duplicate at query time on ``_event_id, _row_index``).

    Storage Write API offsets are not offered: they make writes exactly-once only within
    one stream, and a restarted runner opens a new stream (see
    :mod:`buildflow.io.google.bigquery`).

    Args:
        table_id: ``project.dataset.table`` or ``dataset.table``.
        destroy_protection: ``destroy`` refuses to delete the table (and its dead-letter
            table) unless run with ``--force``. On by default: tables hold results.
        write_mode: ``"merge"`` (exactly-once, default) or ``"insert_id"`` (best effort).
            The dead-letter table beside it is written the same way.
        location: Where ``plan`` creates the dataset (``gcp``), e.g. ``"EU"``; None takes
            the app's other declared location, else BigQuery's default (``US``).

    Raises:
        ConfigurationError: ``table_id`` is malformed, or ``write_mode`` is not one of the
            values above.
    """

    table_id: str
    destroy_protection: bool = True
    write_mode: BigQueryWriteMode = "merge"
    location: str | None = None

    def __post_init__(self) -> None:
        parts = self.table_id.split(".") if isinstance(self.table_id, str) else []
        ok = bool(len(parts) in (2, 3) and _DATASET_RE.match(parts[-2]) and _TABLE_RE.match(parts[-1]))
        if ok and len(parts) == 3:
            ok = bool(_PROJECT_RE.match(parts[0]))
        if not ok:
            raise ConfigurationError(
                f"BigQueryTable: invalid table_id {self.table_id!r}: expected "
                "'project.dataset.table' or 'dataset.table' (dataset: letters, digits, '_'; "
                "table: letters, digits, '_', '-')."
            )
        if self.write_mode not in _WRITE_MODES:
            raise ConfigurationError(
                f"BigQueryTable({self.table_id!r}): invalid write_mode {self.write_mode!r}: "
                "expected 'merge' (exactly-once, the default) or 'insert_id' (best-effort "
                "de-duplication, lower latency)."
            )
        _check_location(self.describe(), self.location)

    @property
    def project_id(self) -> str | None:
        parts = self.table_id.split(".")
        return parts[0] if len(parts) == 3 else None

    @property
    def dataset_id(self) -> str:
        return self.table_id.split(".")[-2]

    @property
    def table_name(self) -> str:
        return self.table_id.split(".")[-1]

    def describe(self) -> str:
        mode = "" if self.write_mode == "merge" else f", write_mode={self.write_mode!r}"
        return f"BigQueryTable({self.table_id!r}{mode})"

    def dead_letter_sibling(self) -> BigQueryTable:
        prefix = self.table_id.rsplit(".", 1)[0]
        return BigQueryTable(
            table_id=f"{prefix}.{DEAD_LETTER_TABLE_NAME}",
            destroy_protection=self.destroy_protection,
            write_mode=self.write_mode,
            location=self.location,
        )


_PUBSUB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")
# https://cloud.google.com/storage/docs/locations, https://cloud.google.com/bigquery/docs/locations
_LOCATION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,40}$")


def _check_location(what: str, location: str | None) -> None:
    if location is not None and not _LOCATION_RE.match(location):
        raise ConfigurationError(
            f"{what}: invalid location {location!r}: a Google Cloud location such as 'US', 'EU' "
            "or 'europe-west1'."
        )


def _check_dead_letter(what: str, topic: str | None, attempts: int) -> None:
    """Pub/Sub's dead-letter limits: max_delivery_attempts 5..100
    (https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions#deadletterpolicy)."""
    if topic is not None:
        name = topic.rsplit("/", 1)[-1]
        if not _PUBSUB_NAME.match(name) or name.startswith("goog"):
            raise ConfigurationError(
                f"{what}: invalid dead_letter_topic {topic!r}: 3-255 letters, digits or -._~+%, "
                "starting with a letter and not with 'goog'."
            )
    if not 5 <= attempts <= 100:
        raise ConfigurationError(
            f"{what}: max_delivery_attempts={attempts!r} is outside Pub/Sub's allowed range 5..100."
        )


@dataclasses.dataclass(frozen=True)
class PubSubSubscription(SourceDeclaration):
    """A Pub/Sub pull subscription, delivering :class:`PubSubMessageEvent`.

    A message's payload is the file (e.g. JPEG bytes), or a ``gs://bucket/object``
    reference (in the payload or the ``uri`` attribute) that the event downloads. ``plan``
    creates the topic and the subscription. Not available in ``local``.

    Args:
        project_id: The GCP project of both.
        subscription: Subscription name (short, not the full path).
        topic: Topic name (short), or ``projects/<p>/topics/<t>`` for another project's.
            ``plan`` creates it if missing; ``destroy`` never deletes it.
        ack_deadline_secs: 10-600 s; leases of in-flight messages are extended to it.
        payload_format: ``raw`` (the payload is the image file, or a ``gs://`` reference)
            or ``json`` (the buildflow JSON envelope with base64 ``image_data``, or the
            training API's pixel payload ``{"data", "timestamp": seconds, "image": HxW or
            HxWx3 nested lists of uint8}``: see :mod:`buildflow.io.payloads`).
        max_pixels: A pixel payload with more than this ``height * width`` is
            dead-lettered before its pixels are read (default: Pillow's
            ``MAX_IMAGE_PIXELS``, 89,478,485).
        dead_letter_topic: Optional topic (short, or a full path) where Pub/Sub moves a
            message after ``max_delivery_attempts`` unacked deliveries; ``plan`` creates it.
        max_delivery_attempts: 5-100 (Pub/Sub's range), with ``dead_letter_topic``.

    Raises:
        ConfigurationError: a name or value is invalid.
    """

    project_id: str
    subscription: str
    topic: str
    ack_deadline_secs: int = 60
    payload_format: Literal["raw", "json"] = "raw"
    max_pixels: int = DEFAULT_MAX_PIXELS
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 5

    event_type: ClassVar[type] = PubSubMessageEvent

    def __post_init__(self) -> None:
        topic = self.topic.rsplit("/", 1)[-1]
        for what, value in (("subscription", self.subscription), ("topic", topic)):
            if not _PUBSUB_NAME.match(value) or value.startswith("goog"):
                raise ConfigurationError(
                    f"PubSubSubscription: invalid {what} {value!r}: 3-255 letters, digits or "
                    "-._~+%, starting with a letter and not with 'goog'."
                )
        if self.payload_format not in ("raw", "json"):
            raise ConfigurationError(
                f"PubSubSubscription: payload_format {self.payload_format!r} is not one of 'raw', 'json'."
            )
        if self.max_pixels < 1:
            raise ConfigurationError(f"PubSubSubscription: max_pixels={self.max_pixels!r} must be >= 1.")
        if not 10 <= self.ack_deadline_secs <= 600:
            raise ConfigurationError(
                f"PubSubSubscription: ack_deadline_secs={self.ack_deadline_secs!r} is outside "
                "Pub/Sub's allowed range 10..600."
            )
        _check_dead_letter(self.describe(), self.dead_letter_topic, self.max_delivery_attempts)

    @property
    def dead_letter_topic_path(self) -> str | None:
        t = self.dead_letter_topic
        if t is None or t.startswith("projects/"):
            return t
        return f"projects/{self.project_id}/topics/{t}"

    @property
    def topic_path(self) -> str:
        if self.topic.startswith("projects/"):
            return self.topic
        return f"projects/{self.project_id}/topics/{self.topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project_id}/subscriptions/{self.subscription}"

    def describe(self) -> str:
        return f"PubSubSubscription({self.subscription!r})"
