"""Pub/Sub: topics and subscriptions as resources, and a pull source with lease extension.

The source uses synchronous Pull (fast on both the service and its emulator; streaming
pull delivers only ~95 messages/s per stream on the emulator). Messages stay in flight
until the runtime acks them after the sink write; while in flight, their ack deadline is
extended every third of it, so a slow micro-batch is never redelivered while it is still
being processed. Nack sets the deadline to 0 (immediate redelivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import ResourceGoneError
from buildflow.events import BlobReader
from buildflow.io.base import Envelope, SourceProvider, SourceRuntime
from buildflow.io.google.blobs import GCSBlobReader
from buildflow.io.google.clients import cloud_error_line, pubsub_publisher, pubsub_subscriber
from buildflow.io.google.declarations import PubSubSubscription
from buildflow.io.payloads import BytesBlob, PayloadError, decode_json_payload
from buildflow.provisioning import Resource, ResourceState
from buildflow.runtime.threads import BlockingWorker

__all__ = [
    "PubSubSubscriptionProvider",
    "decode_message",
    "PubSubTopicResource",
    "PubSubSubscriptionResource",
    "PubSubPullSource",
    "Decoded",
]

log = logging.getLogger("buildflow.io.pubsub")

# Decoded message: an envelope to deliver, or None to ack and skip (e.g. another bucket).
Decoded = Envelope[Any] | None

_ACK_CHUNK = 1000  # ack ids per acknowledge/modifyAckDeadline request (API limit 2500)


def _not_found(e: BaseException) -> bool:
    return type(e).__name__ == "NotFound"


class PubSubTopicResource(Resource):
    """A Pub/Sub topic (``projects/<p>/topics/<t>``)."""

    kind = "topic"

    def __init__(self, env: Environment, path: str) -> None:
        self.env = env
        self.name = path

    def inspect(self) -> ResourceState:
        try:
            pubsub_publisher(self.env).get_topic(request={"topic": self.name})
        except Exception as e:
            if _not_found(e):
                return ResourceState(exists=False)
            raise cloud_error_line(f"topic {self.name}", e) from e
        return ResourceState(exists=True)

    def create(self) -> None:
        try:
            pubsub_publisher(self.env).create_topic(request={"name": self.name})
        except Exception as e:
            raise cloud_error_line(f"topic {self.name}: create", e) from e

    def delete(self) -> None:
        try:
            pubsub_publisher(self.env).delete_topic(request={"topic": self.name})
        except Exception as e:
            if not _not_found(e):
                raise cloud_error_line(f"topic {self.name}: delete", e) from e


class PubSubSubscriptionResource(Resource):
    """A pull subscription with its ack deadline; a different topic is a conflict, a
    different ack deadline an in-place update."""

    kind = "subscription"

    def __init__(self, env: Environment, path: str, topic: str, ack_deadline_secs: int) -> None:
        self.env = env
        self.name = path
        self.topic = topic
        self.ack_deadline_secs = ack_deadline_secs

    def inspect(self) -> ResourceState:
        try:
            sub = pubsub_subscriber(self.env).get_subscription(request={"subscription": self.name})
        except Exception as e:
            if _not_found(e):
                return ResourceState(exists=False)
            raise cloud_error_line(f"subscription {self.name}", e) from e
        conflicts, updates = [], []
        if sub.topic != self.topic:
            conflicts.append(f"subscribed to {sub.topic}, declared {self.topic}")
        if sub.ack_deadline_seconds != self.ack_deadline_secs:
            updates.append(f"ack deadline {sub.ack_deadline_seconds} s -> {self.ack_deadline_secs} s")
        return ResourceState(True, updates=tuple(updates), conflicts=tuple(conflicts))

    def create(self) -> None:
        try:
            pubsub_subscriber(self.env).create_subscription(
                request={
                    "name": self.name,
                    "topic": self.topic,
                    "ack_deadline_seconds": self.ack_deadline_secs,
                }
            )
        except Exception as e:
            raise cloud_error_line(f"subscription {self.name}: create", e) from e

    def update(self, state: ResourceState) -> None:
        try:
            pubsub_subscriber(self.env).update_subscription(
                request={
                    "subscription": {"name": self.name, "ack_deadline_seconds": self.ack_deadline_secs},
                    "update_mask": {"paths": ["ack_deadline_seconds"]},
                }
            )
        except Exception as e:
            raise cloud_error_line(f"subscription {self.name}: update", e) from e

    def delete(self) -> None:
        try:
            pubsub_subscriber(self.env).delete_subscription(request={"subscription": self.name})
        except Exception as e:
            if not _not_found(e):
                raise cloud_error_line(f"subscription {self.name}: delete", e) from e


class PubSubPullSource(SourceRuntime[Any]):
    """Pulls a subscription; ``decode`` turns each received message into an envelope.

    Args:
        env: The environment (for the client).
        subscription: ``projects/<p>/subscriptions/<s>``.
        ack_deadline_secs: The subscription's ack deadline; leases are extended to it.
        decode: ``ReceivedMessage -> Envelope | None`` (None: ack and skip). It runs on the
            source's I/O thread. An envelope with ``error`` set is dead-lettered by the
            runtime.
    """

    def __init__(
        self,
        env: Environment,
        subscription: str,
        ack_deadline_secs: int,
        decode: Callable[[Any], Decoded],
    ) -> None:
        self.env = env
        self.subscription = subscription
        self.ack_deadline_secs = ack_deadline_secs
        self.decode = decode
        self._io = BlockingWorker(f"pubsub-{subscription.rsplit('/', 1)[-1]}")
        self._lease_io = BlockingWorker(f"pubsub-lease-{subscription.rsplit('/', 1)[-1]}")
        self._inflight: dict[str, float] = {}  # ack_id -> when its lease was last extended
        self._last_pull_empty = False
        self._lease_task: asyncio.Task[None] | None = None

    def _pull_sync(self, max_events: int, timeout_s: float) -> tuple[list[Envelope[Any]], list[str]]:
        from google.api_core import exceptions

        try:
            response = pubsub_subscriber(self.env).pull(
                request={"subscription": self.subscription, "max_messages": max_events},
                timeout=timeout_s,
            )
        except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable) as e:
            if isinstance(e, exceptions.ServiceUnavailable):
                log.warning("pull from %s failed, retrying: %s", self.subscription, e)
            return [], []
        except exceptions.NotFound as e:
            raise self._gone() from e
        deliver: list[Envelope[Any]] = []
        skip: list[str] = []
        for received in response.received_messages:
            try:
                env = self.decode(received)
            except Exception as e:  # a decoder bug must not stop the stream
                env = _undecodable(received, e)
            if env is None:
                skip.append(received.ack_id)
            else:
                deliver.append(env)
        return deliver, skip

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        t0 = time.monotonic()
        wait = min(max(timeout_s, 0.1), 2.0)
        deliver, skip = await self._io.run(lambda: self._pull_sync(max_events, wait))
        if skip:
            await self._ack_ids(skip)
        now = time.monotonic()
        for e in deliver:
            self._inflight[e.ack_id] = now
        self._last_pull_empty = not deliver and not skip
        if deliver and self._lease_task is None:
            self._lease_task = asyncio.create_task(self._extend_leases())
        if self._last_pull_empty:
            # The emulator answers an empty Pull at once: wait out the rest of the timeout.
            await asyncio.sleep(max(0.0, min(timeout_s, 0.05) - (time.monotonic() - t0)))
        return deliver

    def _gone(self) -> ResourceGoneError:
        return ResourceGoneError(
            f"subscription {self.subscription} no longer exists (deleted while running, e.g. by "
            "`buildflow destroy`): the run stops; `buildflow plan <app>` creates it again"
        )

    async def _ack_ids(self, ack_ids: Sequence[str]) -> None:
        from google.api_core import exceptions

        client = pubsub_subscriber(self.env)
        for i in range(0, len(ack_ids), _ACK_CHUNK):
            chunk = list(ack_ids[i : i + _ACK_CHUNK])
            try:
                await self._io.run(
                    lambda c=chunk: client.acknowledge(  # type: ignore[misc]
                        request={"subscription": self.subscription, "ack_ids": c}
                    )
                )
            except exceptions.NotFound as e:
                raise self._gone() from e

    async def _modify(self, ack_ids: Sequence[str], seconds: int, worker: BlockingWorker) -> None:
        client = pubsub_subscriber(self.env)
        for i in range(0, len(ack_ids), _ACK_CHUNK):
            chunk = list(ack_ids[i : i + _ACK_CHUNK])
            await worker.run(
                lambda c=chunk: client.modify_ack_deadline(  # type: ignore[misc]
                    request={
                        "subscription": self.subscription,
                        "ack_ids": c,
                        "ack_deadline_seconds": seconds,
                    }
                )
            )

    async def _extend_leases(self) -> None:
        """Every ack_deadline/3, push the deadline of everything still in flight."""
        period = max(0.2, self.ack_deadline_secs / 3)
        while True:
            await asyncio.sleep(period / 2)
            now = time.monotonic()
            due = [a for a, t in self._inflight.items() if now - t >= period]
            if not due:
                continue
            try:
                await self._modify(due, self.ack_deadline_secs, self._lease_io)
                for a in due:
                    if a in self._inflight:
                        self._inflight[a] = now
                log.debug("extended the lease of %d messages", len(due))
            except Exception as e:
                log.warning("extending leases on %s failed: %s", self.subscription, e)

    async def ack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        ids = [e.ack_id for e in envelopes]
        await self._ack_ids(ids)
        for a in ids:
            self._inflight.pop(a, None)

    async def nack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        ids = [e.ack_id for e in envelopes]
        await self._modify(ids, 0, self._io)
        for a in ids:
            self._inflight.pop(a, None)

    async def backlog(self) -> int | None:
        return None  # needs the Monitoring API; not worth a dependency here

    async def is_drained(self) -> bool:
        return self._last_pull_empty and not self._inflight

    async def close(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        self._io.stop()
        self._lease_io.stop()


def _undecodable(received: Any, error: Exception) -> Envelope[Any]:
    m = received.message
    return Envelope(
        event=m,
        event_id=f"pubsub:{m.message_id}",
        ack_id=received.ack_id,
        received_at=datetime.datetime.now(datetime.UTC),
        attempt=max(1, getattr(received, "delivery_attempt", 0) or 1),
        object_name=f"message {m.message_id}",
        error=error,
    )


def decode_message(received: Any, decl: PubSubSubscription, env: Environment) -> Decoded:
    """A received message -> envelope of a :class:`PubSubMessageEvent` (or one with
    ``error`` set: an empty message, a malformed ``gs://`` reference, or with
    ``payload_format="json"`` a payload :func:`buildflow.io.payloads.decode_json_payload`
    refuses). A JSON payload's ``timestamp``, when it has one, is the event time."""
    from buildflow.events import PubSubMessageEvent

    m = received.message
    attrs = dict(m.attributes)
    now = datetime.datetime.now(datetime.UTC)
    attempt = max(1, getattr(received, "delivery_attempt", 0) or 1)
    event_id = f"{decl.topic_path.rsplit('/', 1)[-1]}/{m.message_id}"
    data: bytes = m.data or b""
    uri = attrs.get("uri") or attrs.get("gcs_uri")
    if uri is None and decl.payload_format == "raw" and data[:5] == b"gs://" and len(data) < 2048:
        uri = data.decode("utf-8", "replace").strip()
    error: Exception | None = None
    reader: BlobReader | None = None
    name = attrs.get("name") or attrs.get("objectId") or m.message_id
    when: datetime.datetime | None = None
    if decl.payload_format == "json":
        uri = None
        try:
            payload = decode_json_payload(data, max_pixels=decl.max_pixels)
        except PayloadError as e:
            error = e
        else:
            reader = BytesBlob(payload.image)
            name = attrs.get("name") or payload.name or name
            when = payload.timestamp
            if payload.label and not attrs.get("label"):
                attrs["label"] = payload.label
    elif uri is not None:
        bucket, _, obj = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not obj:
            error = ValueError(f"malformed reference {uri!r}: expected gs://bucket/object")
        else:
            generation = int(attrs["generation"]) if attrs.get("generation", "").isdigit() else None
            reader = GCSBlobReader(env, decl.project_id, bucket, obj, generation)
            name = attrs.get("name") or obj
    elif not data:
        error = ValueError("empty message: neither a payload nor a gs:// reference (attribute 'uri')")
    publish_time = getattr(m, "publish_time", None)
    if when is None:
        when = now
        if publish_time is not None:
            when = datetime.datetime.fromtimestamp(publish_time.timestamp(), tz=datetime.UTC)
    event = PubSubMessageEvent(
        message_id=m.message_id,
        data=data,
        name=name,
        event_id=event_id,
        event_time=when,
        metadata=attrs,
        uri=uri,
        reader=reader,
    )
    return Envelope(event, event_id, received.ack_id, now, attempt, object_name=name, error=error)


class PubSubSubscriptionProvider(SourceProvider):
    """Binds :class:`buildflow.io.PubSubSubscription` to ``gcp`` or ``emulator``; ``plan``
    manages the topic and the subscription."""

    shared_consumers = True

    declaration: PubSubSubscription

    def resources(self, consumer: str) -> list[Resource]:
        d = self.declaration
        return [
            PubSubTopicResource(self.environment, d.topic_path),
            PubSubSubscriptionResource(
                self.environment, d.subscription_path, d.topic_path, d.ack_deadline_secs
            ),
        ]

    def open(self, consumer: str) -> SourceRuntime[Any]:
        d, env = self.declaration, self.environment
        return PubSubPullSource(
            env, d.subscription_path, d.ack_deadline_secs, lambda received: decode_message(received, d, env)
        )

    def upload(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Publish ``data`` as one message with the ``name`` attribute (a producer)."""
        d = self.declaration
        attrs = {"name": name} | ({"contentType": content_type} if content_type else {})
        try:
            message_id = (
                pubsub_publisher(self.environment).publish(d.topic_path, data, **attrs).result(timeout=60)
            )
        except Exception as e:
            raise cloud_error_line(f"publish to {d.topic_path}", e) from e
        return f"{d.topic_path} message {message_id}"
