"""The :class:`KafkaTopic` declaration (source and sink) and :class:`KafkaMessageEvent`.

Declarations only: confluent-kafka is imported by the provider, on the worker.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from typing import ClassVar, Literal

from buildflow.errors import ConfigurationError
from buildflow.events import BlobReader, FileEvent
from buildflow.io.base import SinkDeclaration, SourceDeclaration
from buildflow.io.payloads import DEFAULT_MAX_PIXELS

__all__ = ["Assignment", "KafkaTopic", "KafkaMessageEvent", "PayloadFormat"]

PayloadFormat = Literal["raw", "json", "reference"]
Assignment = Literal["group", "manual"]
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names


@dataclasses.dataclass(frozen=True, eq=False)
class KafkaMessageEvent(FileEvent):
    """A Kafka record that carries an image, in one of three payload formats.

    Attributes:
        topic, partition, offset: The record's coordinates.
        key: The record key, decoded as UTF-8 (the image id by convention), or None.
        name: The image's name: ``image_id``/``path`` of a JSON envelope, else the key, else
            ``topic/partition/offset``.
        label: The ``label`` of a JSON envelope or header, if any (e.g. the true class).
        event_id: ``<topic>/<partition>/<offset>``: stable, so rows are keyed by it.
        event_time: The JSON payload's ``timestamp`` if it has one, else the record timestamp (UTC).
        metadata: The record headers, decoded as UTF-8.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    name: str
    label: str | None
    event_id: str
    event_time: datetime.datetime
    metadata: Mapping[str, str]
    reader: BlobReader = dataclasses.field(repr=False)

    def _read_blob(self) -> bytes:
        """``blob``: the image bytes (decoded from base64, or read from the reference), on
        first access."""
        return self.reader.read()

    def blob_reader(self) -> BlobReader:
        return self.reader


@dataclasses.dataclass(frozen=True)
class KafkaTopic(SourceDeclaration, SinkDeclaration):
    """A Kafka topic, as a source of :class:`KafkaMessageEvent` or a sink of JSON rows.

    As a source, offsets are committed only after the rows of those records are written, so
    a restart resumes where the group left off; rows are keyed by ``topic/partition/offset``,
    so a record delivered twice (after a crash or a rebalance) is not written twice by an
    idempotent sink. Records that cannot be decoded are dead-lettered with their coordinates.

    As a sink, each row is produced as a JSON object keyed by ``<event_id>/<row_index>``.

    Args:
        bootstrap_servers: ``host:port[,host:port]``.
        topic: The topic name.
        group_id: Consumer group (source only). Default: ``buildflow-<processor>``.
        payload_format: ``raw`` (the value is the image; key = image id, headers =
            metadata), ``json`` (``{"image_id", "path", "label", "image_data": base64,
            "timestamp"}``, or the training API's pixel payload ``{"data", "timestamp":
            seconds, "image": HxW or HxWx3 nested lists of uint8}``: see
            :mod:`buildflow.io.payloads`) or ``reference`` (the value is
            ``gs://bucket/object`` or a local file path).
        partitions: Partitions ``plan`` creates the topic with.
        replication_factor: Replication factor ``plan`` creates the topic with.
        retention_ms: ``retention.ms`` of the topic, or None for the broker's default.
        max_message_bytes: Records larger than this are dead-lettered unread.
        max_pixels: A pixel payload with more than this ``height * width`` is
            dead-lettered before its pixels are read (default: Pillow's
            ``MAX_IMAGE_PIXELS``, 89,478,485).
        reference_root: For ``reference`` records with local paths: the only folder they may
            point into (None: local references are refused).
        destroy_protection: ``destroy`` keeps the topic unless ``--force``.
        assignment: ``group`` (default): the consumer group spreads the partitions over
            every consumer of ``group_id`` (processes, Ray replicas) and moves them when one
            joins or leaves. ``manual``: this consumer reads every partition of the topic
            by explicit assignment (``Consumer.assign``), with no group join at all, from
            the offsets committed for ``group_id``; no rebalances, so only one consumer
            may read the topic this way (on Ray one source server reads it for all
            replicas). Starts in well under a second instead of the group join.
        consumer_config / producer_config: Extra librdkafka settings, over
            :data:`buildflow.io.kafka.provider.CONSUMER_DEFAULTS` (consumer) e.g.
            ``{"group.instance.id": "worker-1"}`` for static membership.
    """

    bootstrap_servers: str
    topic: str
    group_id: str | None = None
    payload_format: PayloadFormat = "raw"
    partitions: int = 1
    replication_factor: int = 1
    retention_ms: int | None = None
    max_message_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    reference_root: str | None = None
    destroy_protection: bool = False
    assignment: Assignment = "group"
    consumer_config: tuple[tuple[str, str], ...] = ()
    producer_config: tuple[tuple[str, str], ...] = ()

    event_type: ClassVar[type] = KafkaMessageEvent

    def __post_init__(self) -> None:
        if not _TOPIC.match(self.topic or ""):
            raise ConfigurationError(
                f"KafkaTopic: invalid topic {self.topic!r}: 1-249 letters, digits, '.', '_' or '-'."
            )
        if self.payload_format not in ("raw", "json", "reference"):
            raise ConfigurationError(
                f"KafkaTopic: payload_format {self.payload_format!r} is not one of "
                "'raw', 'json', 'reference'."
            )
        if self.assignment not in ("group", "manual"):
            raise ConfigurationError(
                f"KafkaTopic: assignment {self.assignment!r} is not one of 'group' (the consumer "
                "group spreads partitions) or 'manual' (read every partition, no group join)."
            )
        if self.max_pixels < 1:
            raise ConfigurationError(f"KafkaTopic: max_pixels={self.max_pixels!r} must be >= 1.")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ConfigurationError("KafkaTopic: partitions and replication_factor must be >= 1.")
        for name in ("consumer_config", "producer_config"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, tuple(sorted((str(k), str(v)) for k, v in value.items())))

    def describe(self) -> str:
        return f"KafkaTopic({self.topic!r})"

    def dead_letter_sibling(self) -> KafkaTopic:
        return dataclasses.replace(self, topic=f"{self.topic}.dead_letters", group_id=None)
