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
    "STORAGE_WRITE_MODES",
    "PubSubSubscription",
    "DEAD_LETTER_TABLE_NAME",
]

# https://cloud.google.com/storage/docs/buckets#naming (the common subset: no dots)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")
# https://cloud.google.com/bigquery/docs/datasets#dataset-naming and tables#table_naming
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,1024}$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")

BigQueryWriteMode = Literal["upsert", "append", "merge", "insert_id"]
"""How :class:`BigQueryTable` writes rows in ``gcp``/``emulator`` (see its docstring)."""
_WRITE_MODES: tuple[str, ...] = get_args(BigQueryWriteMode)
STORAGE_WRITE_MODES: tuple[str, ...] = ("upsert", "append")
"""The write modes that append through the BigQuery Storage Write API."""


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

    Write modes (``gcp``/``emulator``; ``local`` is always exactly-once), compared with
    figures in the README ("BigQuery write modes"):

    * ``"upsert"`` (default): the Storage Write API's default stream, rows as protobuf,
      each a change-data-capture ``UPSERT`` on the table's
      ``PRIMARY KEY (_event_id, _row_index) NOT ENFORCED``: BigQuery keeps one row per key
      however often an event is redelivered or two replicas race, applying the changes in
      the background within ``max_staleness_minutes`` ("Stream table updates with change
      data capture", https://cloud.google.com/bigquery/docs/change-data-capture). No query
      job, no DML limits; needs only ``roles/bigquery.dataEditor``.
    * ``"append"``: the same stream, plain appends (at-least-once: a redelivered event's
      rows are there twice). Query the view ``<table>_dedup`` that ``plan`` creates (one
      row per key, the latest by ``_written_at``), as also for ``upsert``.
    * ``"merge"`` (opt-in, small tables): one ``MERGE ... WHEN NOT MATCHED THEN INSERT``
      query job per micro-batch. Each bills the key columns of the whole table (10 MB
      minimum) and BigQuery runs 2 per table at a time ("Quotas and limits",
      https://cloud.google.com/bigquery/quotas#data-manipulation-language-statements);
      a job that times out is cancelled (and waited for) before the batch is retried.
    * ``"insert_id"`` (legacy): ``insertAll`` with the insertId ``<event_id>/<row_index>``,
      de-duplicated by BigQuery on a best-effort basis for about a minute only.

    ``upsert`` and ``append`` tables also get ``_written_at TIMESTAMP`` (when the row was
    appended), are partitioned by day on it and clustered by ``_event_id``.

    Args:
        table_id: ``project.dataset.table`` or ``dataset.table``.
        destroy_protection: ``destroy`` refuses to delete the table (and its dead-letter
            table) unless run with ``--force``. On by default: tables hold results.
        write_mode: ``"upsert"`` (default), ``"append"``, ``"merge"`` or ``"insert_id"``.
            The dead-letter table beside it is written the same way.
        max_staleness_minutes: ``upsert`` only: the table's ``max_staleness``, how old the
            applied state a query reads may be (older changes are merged at query time, at
            extra cost). Default 15; None leaves it unset (every query merges all pending
            changes).
        location: Where ``plan`` creates the dataset (``gcp``), e.g. ``"EU"``; None takes
            the app's other declared location, else BigQuery's default (``US``).

    Raises:
        ConfigurationError: ``table_id`` is malformed, ``write_mode`` is not one of the
            values above, or ``max_staleness_minutes`` is negative.
    """

    table_id: str
    destroy_protection: bool = True
    write_mode: BigQueryWriteMode = "upsert"
    max_staleness_minutes: int | None = 15
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
                "expected 'upsert' (Storage Write API + CDC upserts, the default), 'append' "
                "(Storage Write API, de-duplicate through the <table>_dedup view), 'merge' "
                "(a MERGE job per batch, small tables) or 'insert_id' (legacy insertAll)."
            )
        if self.max_staleness_minutes is not None and (
            isinstance(self.max_staleness_minutes, bool)
            or not isinstance(self.max_staleness_minutes, int)
            or self.max_staleness_minutes < 0
        ):
            raise ConfigurationError(
                f"BigQueryTable({self.table_id!r}): max_staleness_minutes="
                f"{self.max_staleness_minutes!r}: expected a whole number of minutes >= 0, or None."
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
        mode = "" if self.write_mode == "upsert" else f", write_mode={self.write_mode!r}"
        return f"BigQueryTable({self.table_id!r}{mode})"

    def dead_letter_sibling(self) -> BigQueryTable:
        prefix = self.table_id.rsplit(".", 1)[0]
        return BigQueryTable(
            table_id=f"{prefix}.{DEAD_LETTER_TABLE_NAME}",
            destroy_protection=self.destroy_protection,
            write_mode=self.write_mode,
            max_staleness_minutes=self.max_staleness_minutes,
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
