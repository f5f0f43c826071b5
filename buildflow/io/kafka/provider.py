"""Kafka on confluent-kafka: topics as resources, a consumer-group source that commits after
write, and a JSON sink. Works in every environment (the broker address is on the
declaration).

Commit-after-write: the runtime acks a micro-batch only after its rows are written; the
source then commits, per partition, the offset just past the highest record below which
every record is acked. A record that is pulled but not acked when the process dies is
consumed again by whoever owns its partition next (at-least-once); its rows are keyed by
``topic/partition/offset``, so an idempotent sink does not write them twice.

The consumer is not thread-safe: every call to it runs on the source's one I/O thread.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from buildflow.errors import ProvisioningError, TransientSinkError
from buildflow.events import BlobReader
from buildflow.io.base import (
    Envelope,
    OutputRecord,
    SinkProvider,
    SinkRuntime,
    SourceProvider,
    SourceRuntime,
)
from buildflow.io.kafka.declarations import KafkaMessageEvent, KafkaTopic
from buildflow.io.kafka.envelope import confluent_kafka_module as _ck
from buildflow.io.kafka.envelope import encode_json_envelope as encode_json_envelope
from buildflow.io.payloads import BytesBlob as BytesBlob
from buildflow.io.payloads import PayloadError, decode_json_payload
from buildflow.provisioning import Resource, ResourceState
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import TableSchema, to_json

__all__ = ["KafkaSourceProvider", "KafkaSinkProvider", "decode_record", "encode_json_envelope"]

log = logging.getLogger("buildflow.io.kafka")

JOIN_WARNING_S = 30.0
"""Seconds a group consumer may wait for its first partition assignment before a warning
says why nothing is read (a join normally takes one to a few heartbeats, 2-4 s here)."""

#: librdkafka settings every buildflow consumer starts with (``KafkaTopic.consumer_config``
#: overrides each), for a group join in seconds rather than tens of seconds:
#:
#: * ``session.timeout.ms`` 6000: the lowest a stock Kafka broker accepts (its
#:   ``group.min.session.timeout.ms`` default), against librdkafka's 45000. Brokers that
#:   hold a join for half the session timeout (tansu) then answer in 3 s instead of 22.5 s;
#:   a failed consumer's partitions move on after 6 s. Heartbeats come from librdkafka's own
#:   thread, so a long ``process`` does not end the session (``max.poll.interval.ms``
#:   governs that, left at its 300000 default).
#: * ``heartbeat.interval.ms`` 2000: a third of the session timeout, as Kafka advises
#:   (https://kafka.apache.org/documentation/#consumerconfigs_heartbeat.interval.ms).
#: * ``partition.assignment.strategy`` cooperative-sticky: incremental rebalances (KIP-429):
#:   a consumer joining or leaving moves only the partitions that must move, the others
#:   keep being read meanwhile.
CONSUMER_DEFAULTS: dict[str, str] = {
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "2000",
    "partition.assignment.strategy": "cooperative-sticky",
}


@dataclasses.dataclass(frozen=True)
class LocalFileBlob(BlobReader):
    """A local file a ``reference`` record points at, confined to ``root``."""

    root: str
    path: str

    def read(self) -> bytes:
        root = Path(self.root).resolve()
        target = (root / self.path).resolve()
        if not target.is_relative_to(root):
            raise PermissionError(f"reference {self.path!r} resolves outside reference_root {str(root)!r}")
        return target.read_bytes()


def decode_record(msg: Any, decl: KafkaTopic, env: Any) -> Envelope[Any]:
    """One consumed record -> envelope of a :class:`KafkaMessageEvent`, or one with
    ``error`` set (bad JSON, bad base64, a bad pixel array, bad reference, over the size
    limit). ``json`` records are decoded by :func:`buildflow.io.payloads.decode_json_payload`."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    event_id = f"{topic}/{partition}/{offset}"
    now = datetime.datetime.now(datetime.UTC)
    value: bytes = msg.value() or b""
    key = msg.key().decode("utf-8", "replace") if msg.key() is not None else None
    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
    ts_type, ts_ms = msg.timestamp()
    when = datetime.datetime.fromtimestamp(ts_ms / 1000, tz=datetime.UTC) if ts_ms > 0 else now
    name = key or event_id
    label = headers.get("label")
    error: Exception | None = None
    reader: BlobReader = BytesBlob(b"")
    if len(value) > decl.max_message_bytes:
        error = ValueError(f"record of {len(value)} bytes is over max_message_bytes={decl.max_message_bytes}")
    elif decl.payload_format == "raw":
        reader = BytesBlob(value)
        if not value:
            error = ValueError("empty record: no image bytes")
    elif decl.payload_format == "json":
        try:
            payload = decode_json_payload(value, max_pixels=decl.max_pixels)
        except PayloadError as e:
            error = e
        else:
            reader = BytesBlob(payload.image)
            name = payload.name or name
            label = payload.label or label
            when = payload.timestamp or when
    else:  # reference
        ref = value.decode("utf-8", "replace").strip()
        name = key or ref
        if ref.startswith("gs://"):
            from buildflow.io.google.blobs import GCSBlobReader

            bucket, _, obj = ref.removeprefix("gs://").partition("/")
            if bucket and obj:
                reader = GCSBlobReader(env, None, bucket, obj, None)
            else:
                error = ValueError(f"malformed reference {ref!r}: expected gs://bucket/object")
        elif decl.reference_root is None:
            error = ValueError(f"local reference {ref!r} refused: set reference_root on the KafkaTopic")
        else:
            reader = LocalFileBlob(decl.reference_root, ref)
    event = KafkaMessageEvent(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        name=name,
        label=label,
        event_id=event_id,
        event_time=when,
        metadata=headers,
        reader=reader,
    )
    return Envelope(event, event_id, (topic, partition, offset), now, object_name=name, error=error)


class KafkaTopicResource(Resource):
    """A topic with its partitions and retention. Fewer partitions than declared is an
    update the broker may not support; more is a conflict (Kafka cannot remove partitions)."""

    kind = "topic"

    def __init__(self, decl: KafkaTopic) -> None:
        self.decl = decl
        self.name = f"kafka://{decl.bootstrap_servers}/{decl.topic}"
        self.protected = decl.destroy_protection

    def _admin(self) -> Any:
        return _ck().admin.AdminClient({"bootstrap.servers": self.decl.bootstrap_servers})

    def inspect(self) -> ResourceState:
        try:
            md = self._admin().list_topics(timeout=10)
        except Exception as e:
            raise ProvisioningError(f"topic {self.name}: broker not reachable: {e}") from e
        t = md.topics.get(self.decl.topic)
        if t is None or t.error is not None:
            return ResourceState(exists=False)
        have = len(t.partitions)
        if have > self.decl.partitions:
            return ResourceState(True, conflicts=(f"has {have} partitions, declared {self.decl.partitions}",))
        if have < self.decl.partitions:
            return ResourceState(True, updates=(f"partitions {have} -> {self.decl.partitions}",))
        return ResourceState(True)

    def create(self) -> None:
        ck = _ck()
        config = {"retention.ms": str(self.decl.retention_ms)} if self.decl.retention_ms else {}
        new = ck.admin.NewTopic(
            self.decl.topic,
            num_partitions=self.decl.partitions,
            replication_factor=self.decl.replication_factor,
            config=config,
        )
        admin = self._admin()  # keep a reference: a collected client cancels its futures
        for _, future in admin.create_topics([new], request_timeout=15).items():
            try:
                future.result(timeout=30)
            except Exception as e:
                raise ProvisioningError(f"topic {self.name}: create failed: {e}") from e

    def update(self, state: ResourceState) -> None:
        ck = _ck()
        futures = self._admin().create_partitions(
            [ck.admin.NewPartitions(self.decl.topic, self.decl.partitions)]
        )
        for _, future in futures.items():
            try:
                future.result(timeout=30)
            except Exception as e:
                raise ProvisioningError(
                    f"topic {self.name}: adding partitions failed ({e}); recreate the topic"
                ) from e

    def delete(self) -> None:
        admin = self._admin()
        for _, future in admin.delete_topics([self.decl.topic], operation_timeout=30).items():
            try:
                future.result(timeout=30)
            except Exception as e:
                raise ProvisioningError(f"topic {self.name}: delete failed: {e}") from e


class KafkaSource(SourceRuntime[KafkaMessageEvent]):
    """Consumer-group source with commit-after-write (see the module docstring)."""

    def __init__(self, decl: KafkaTopic, group_id: str, env: Any) -> None:
        self.decl = decl
        self.env = env
        self._io = BlockingWorker(f"kafka-{decl.topic}")
        self._config = {
            **CONSUMER_DEFAULTS,
            "bootstrap.servers": decl.bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            **dict(decl.consumer_config),
        }
        self._consumer: Any = None
        self._inflight: dict[tuple[str, int], set[int]] = {}
        self._acked_max: dict[tuple[str, int], int] = {}
        self._last_empty = False
        self._assigned = False
        self._owned: set[tuple[str, int]] = set()  # the partitions this consumer holds now
        self._group_id = group_id
        self._subscribed_at: float | None = None
        self._join_warned = False

    def _assign(self, consumer: Any, partitions: list[Any]) -> None:
        # eager protocol: the whole assignment; cooperative: the partitions added
        self._owned.update((tp.topic, tp.partition) for tp in partitions)
        self._assigned = True

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:  # their records go to the new owner, from the last commit
            self._owned.discard((tp.topic, tp.partition))
            self._inflight.pop((tp.topic, tp.partition), None)
            self._acked_max.pop((tp.topic, tp.partition), None)

    def _open(self) -> None:
        ck = _ck()
        self._consumer = ck.Consumer(self._config, logger=log)
        if self.decl.assignment == "manual":
            md = self._consumer.list_topics(self.decl.topic, timeout=10)
            topic = md.topics.get(self.decl.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise ProvisioningError(
                    f"kafka topic {self.decl.topic!r} on {self.decl.bootstrap_servers}: not found "
                    f"({topic.error if topic is not None else 'no metadata'}); run `buildflow plan` first"
                )
            # OFFSET_INVALID (the default): from the group's committed offset, else
            # auto.offset.reset
            parts = [ck.TopicPartition(self.decl.topic, p) for p in sorted(topic.partitions)]
            self._consumer.assign(parts)
            self._assign(self._consumer, parts)
            return
        self._consumer.subscribe(
            [self.decl.topic], on_assign=self._assign, on_revoke=self._revoked, on_lost=self._revoked
        )
        self._subscribed_at = time.monotonic()

    def _check_join(self) -> None:
        """Warn once when the group has assigned nothing for ``JOIN_WARNING_S``: nothing is
        read until it does, and ``--until-idle`` waits for it."""
        if self._assigned or self._join_warned or self._subscribed_at is None:
            return
        waited = time.monotonic() - self._subscribed_at
        if waited < JOIN_WARNING_S:
            return
        self._join_warned = True
        log.warning(
            "kafka topic %r: consumer group %r has assigned this consumer no partition after %.0f s. "
            "A rebalance waits for every member to rejoin: a member that stopped polling (a stuck "
            "or suspended process of this group) holds it for up to its max.poll.interval.ms "
            "(300 s by default). Stop such a process, or give this app its own group "
            "(KafkaTopic(group_id=...)).",
            self.decl.topic,
            self._group_id,
            waited,
        )

    def _consume(self, n: int, timeout_s: float) -> list[Any]:
        if self._consumer is None:
            self._open()
        out = []
        for msg in self._consumer.consume(num_messages=n, timeout=timeout_s):
            if msg.error() is not None:
                log.warning("kafka consume error on %s: %s", self.decl.topic, msg.error())
                continue
            out.append(msg)
        return out

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[KafkaMessageEvent]]:
        msgs = await self._io.run(lambda: self._consume(max_events, max(0.05, min(timeout_s, 1.0))))
        self._check_join()
        envs = [decode_record(m, self.decl, self.env) for m in msgs]
        for e in envs:
            t, p, o = e.ack_id
            self._inflight.setdefault((t, p), set()).add(o)
        self._last_empty = not envs
        return envs

    def _commit_offsets(self, touched: set[tuple[str, int]]) -> list[Any]:
        ck = _ck()
        out = []
        for tp in touched:
            if tp not in self._owned:
                continue  # revoked meanwhile: its new owner re-reads from the last commit
            pending = self._inflight.get(tp)
            acked = self._acked_max.get(tp)
            if acked is None:
                continue
            # commit just past the highest offset below which everything is acked
            next_offset = min(pending) if pending else acked + 1
            out.append(ck.TopicPartition(tp[0], tp[1], next_offset))
        return out

    async def ack(self, envelopes: Sequence[Envelope[KafkaMessageEvent]]) -> None:
        touched: set[tuple[str, int]] = set()
        for e in envelopes:
            t, p, o = e.ack_id
            pending = self._inflight.get((t, p))
            if pending is None or o not in pending:
                # pulled before its partition was revoked: what it acknowledges is not this
                # consumer's to commit (after a re-assignment the commit would jump past
                # records re-read from the group's offset and not processed yet)
                continue
            pending.discard(o)
            self._acked_max[(t, p)] = max(o, self._acked_max.get((t, p), -1))
            touched.add((t, p))
        offsets = self._commit_offsets(touched)
        if offsets:
            try:
                await self._io.run(lambda: self._consumer.commit(offsets=offsets, asynchronous=False))
            except _ck().KafkaException as e:
                # e.g. the partition was reassigned meanwhile: its new owner re-reads from the
                # last commit, and the idempotent sink drops the rows written twice.
                log.warning("commit on %s failed (%s); those records may be redelivered", self.decl.topic, e)

    async def nack(self, envelopes: Sequence[Envelope[KafkaMessageEvent]]) -> None:
        ck = _ck()
        lowest: dict[tuple[str, int], int] = {}
        for e in envelopes:
            t, p, o = e.ack_id
            self._inflight.get((t, p), set()).discard(o)
            lowest[(t, p)] = min(o, lowest.get((t, p), o))
        consumer = self._consumer
        for (t, p), o in lowest.items():
            await self._io.run(functools.partial(consumer.seek, ck.TopicPartition(t, p, o)))

    async def backlog(self) -> int | None:
        return None  # tansu reports wrong high watermarks; lag would be misleading there

    async def is_drained(self) -> bool:
        # Not before the group has assigned us partitions: an empty poll while joining
        # says nothing about the topic.
        return self._assigned and self._last_empty and not any(self._inflight.values())

    async def close(self) -> None:
        if self._consumer is not None:
            consumer = self._consumer
            await self._io.run(consumer.close)
        self._io.stop()


class KafkaSourceProvider(SourceProvider):
    declaration: KafkaTopic

    def __init__(self, declaration: KafkaTopic, environment: Any) -> None:
        super().__init__(declaration, environment)
        # a consumer group spreads the partitions; explicit assignment reads them all
        self.shared_consumers = declaration.assignment == "group"

    def group_id(self, consumer: str) -> str:
        return self.declaration.group_id or f"buildflow-{consumer}"

    def resources(self, consumer: str) -> list[Resource]:
        return [KafkaTopicResource(self.declaration)]

    def open(self, consumer: str) -> SourceRuntime[Any]:
        return KafkaSource(self.declaration, self.group_id(consumer), self.environment)

    def upload(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Produce one image in the declaration's payload format (a producer)."""
        from buildflow.producer import KafkaProducerTarget

        target = KafkaProducerTarget(self.declaration)
        try:
            target.send(name, data, label=None)
        finally:
            target.close()
        return f"kafka://{self.declaration.bootstrap_servers}/{self.declaration.topic} key {name}"


class KafkaSink(SinkRuntime):
    """Produces each row as JSON, keyed by ``<event_id>/<row_index>``; waits for delivery."""

    def __init__(self, decl: KafkaTopic) -> None:
        self.decl = decl
        self._io = BlockingWorker(f"kafka-sink-{decl.topic}")
        self._producer: Any = None

    def _write(self, records: Sequence[OutputRecord]) -> None:
        ck = _ck()
        if self._producer is None:
            self._producer = ck.Producer(
                {
                    "bootstrap.servers": self.decl.bootstrap_servers,
                    "enable.idempotence": False,
                    **dict(self.decl.producer_config),
                }
            )
        errors: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for r in records:
            value = json.dumps({**to_json(r.values), "_event_id": r.event_id, "_row_index": r.row_index})
            self._producer.produce(
                self.decl.topic,
                value=value.encode(),
                key=f"{r.event_id}/{r.row_index}",
                on_delivery=delivered,
            )
            self._producer.poll(0)
        left = self._producer.flush(30)
        if left or errors:
            raise TransientSinkError(
                f"producing to {self.decl.topic}: {left} undelivered, errors: {errors[:3]}"
            )

    async def write(self, records: Sequence[OutputRecord]) -> None:
        recs = list(records)
        await self._io.run(lambda: self._write(recs))

    async def close(self) -> None:
        self._io.stop()


class KafkaSinkProvider(SinkProvider):
    concurrent_writers = True
    declaration: KafkaTopic

    def resources(self, schema: TableSchema) -> list[Resource]:
        return [KafkaTopicResource(self.declaration)]

    def open(self, schema: TableSchema) -> SinkRuntime:
        return KafkaSink(self.declaration)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise NotImplementedError("a Kafka topic cannot be queried with SQL; consume it instead")
