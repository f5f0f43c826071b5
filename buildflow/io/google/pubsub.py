"""Pub/Sub: topics and subscriptions as resources, and two sources.

* ``gcp``: :class:`PubSubStreamingSource`, the official client's streaming pull
  (``SubscriberClient.subscribe``), which Google recommends for most subscribers
  (https://cloud.google.com/pubsub/docs/pull#streamingpull_api). The library extends the
  leases of outstanding messages and batches acks; ``FlowControl`` caps the outstanding
  messages at what the runtime can hold in flight. A unary ``Pull`` that the client
  abandons after the server handed out messages leaves them invisible until their ack
  deadline (googleapis/google-cloud-python#8087), which streaming pull avoids.
* ``emulator``: :class:`PubSubPullSource`, unary ``Pull`` with a 60 s deadline (longer
  than any server hold of an empty pull; the emulator answers an empty pull at once), since
  the emulator's streaming pull delivers only ~95 messages/s per stream. It extends the
  ack deadline of in-flight messages every third of it. Pulls, lease extensions and
  acks/nacks each have a thread of their own: an ack never waits behind a pull the server
  holds open.

Both ack only after the runtime's sink write; nack gives a message back at once
(``modifyAckDeadline 0``).

``--until-idle``: the run stops when a pull waited its time and got nothing while
nothing was in flight. Messages leased by a run that crashed are invisible until their
ack deadline passes (``ack_deadline_secs``; the crashed process no longer extends it), so
an ``--until-idle`` run started right after a crash can stop before they come back: wait
``ack_deadline_secs`` first, or run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import ResourceGoneError
from buildflow.events import BlobReader
from buildflow.io.base import Envelope, SourceProvider, SourceRuntime
from buildflow.io.google.blobs import GCSBlobReader
from buildflow.io.google.clients import (
    cloud_error_line,
    project_number,
    pubsub_publisher,
    pubsub_subscriber,
)
from buildflow.io.google.declarations import PubSubSubscription
from buildflow.io.payloads import BytesBlob, PayloadError, decode_json_payload
from buildflow.provisioning import Resource, ResourceState, label_keep_reasons
from buildflow.runtime.threads import BlockingWorker

__all__ = [
    "PubSubSubscriptionProvider",
    "decode_message",
    "PubSubTopicResource",
    "PubSubSubscriptionResource",
    "PubSubPullSource",
    "PubSubStreamingSource",
    "open_pull_source",
    "Decoded",
    "topic_keep_reasons",
    "pubsub_service_agent",
]

log = logging.getLogger("buildflow.io.pubsub")

# Decoded message: an envelope to deliver, or None to ack and skip (e.g. another bucket).
Decoded = Envelope[Any] | None

_ACK_CHUNK = 1000  # ack ids per acknowledge/modifyAckDeadline request (API limit 2500)

#: Deadline of a unary Pull (s): longer than a server holds an empty pull, so the client
#: never abandons a pull the server already answered with messages
#: (googleapis/python-pubsub#1414: a 1 s timeout delayed messages; the default is 60 s).
PULL_DEADLINE_S = 60.0

#: Batches a runtime holds between pull and ack: ``max_inflight_batches`` (2) in its pull
#: queue and (2) in its write queue, one being processed and one being formed
#: (:class:`buildflow.runtime.base.RunOptions`). Streaming pull's ``FlowControl`` admits
#: this many batches' worth of messages.
BATCHES_IN_FLIGHT = 6


def _not_found(e: BaseException) -> bool:
    return type(e).__name__ == "NotFound"


def topic_keep_reasons(
    env: Environment, topic: str, app: str | None, deleting: frozenset[tuple[str, str]], what: str = "topic"
) -> list[str]:
    """Why ``destroy`` keeps ``topic`` (or something that feeds it): not created by this
    app (labels), or subscriptions outside this destroy still read it."""
    try:
        found = pubsub_publisher(env).get_topic(request={"topic": topic})
    except Exception as e:
        if _not_found(e):
            return []
        raise cloud_error_line(f"topic {topic}", e) from e
    reasons = label_keep_reasons(dict(found.labels), app)
    if reasons:
        return [f"{what} {topic}: {r}" if what != "topic" else r for r in reasons]
    subs = list(pubsub_publisher(env).list_topic_subscriptions(request={"topic": topic}))
    others = sorted(str(x) for x in subs if ("subscription", str(x)) not in deleting)
    if others:
        return [f"{what} still feeds {len(others)} other subscription(s): {', '.join(others[:3])}"]
    return []


class PubSubTopicResource(Resource):
    """A Pub/Sub topic (``projects/<p>/topics/<t>``), created with the app's labels.

    ``destroy`` deletes it only when this app created it and no subscription outside the
    destroy reads it; a ``referenced`` topic (one a :class:`PubSubSubscription` names,
    possibly another project's) is never deleted."""

    kind = "topic"

    def __init__(self, env: Environment, path: str, *, referenced: bool = False) -> None:
        self.env = env
        self.name = path
        self.referenced = referenced

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
            pubsub_publisher(self.env).create_topic(request={"name": self.name, "labels": self.labels()})
        except Exception as e:
            raise cloud_error_line(f"topic {self.name}: create", e) from e

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        if self.referenced:
            return ["named by a PubSubSubscription: buildflow never deletes a topic it subscribes to"]
        return topic_keep_reasons(self.env, self.name, self.app, deleting)

    def delete(self) -> None:
        try:
            pubsub_publisher(self.env).delete_topic(request={"topic": self.name})
        except Exception as e:
            if not _not_found(e):
                raise cloud_error_line(f"topic {self.name}: delete", e) from e


def pubsub_service_agent(project_number: str) -> str:
    """The Pub/Sub service agent of a project, which forwards dead letters:
    ``service-<number>@gcp-sa-pubsub.iam.gserviceaccount.com``
    (https://cloud.google.com/pubsub/docs/handling-failures#grant_forwarding_permissions)."""
    return f"serviceAccount:service-{project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"


class PubSubSubscriptionResource(Resource):
    """A pull subscription: the app's labels, the ack deadline, never expiring
    (``expiration_policy`` with no ``ttl``; the default deletes a subscription idle for 31
    days, https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions#expirationpolicy),
    and optionally a dead-letter topic after ``max_delivery_attempts`` (5-100). A different
    topic is a conflict; a different ack deadline or dead-letter policy an in-place update.

    In ``gcp``, with a dead-letter topic, ``create`` also grants the project's Pub/Sub
    service agent ``roles/pubsub.publisher`` on that topic and ``roles/pubsub.subscriber``
    on the subscription (https://cloud.google.com/pubsub/docs/handling-failures); the
    project number comes from ``project_number`` (a callable, called only then)."""

    kind = "subscription"

    def __init__(
        self,
        env: Environment,
        path: str,
        topic: str,
        ack_deadline_secs: int,
        *,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
        project_number: Callable[[], str] | None = None,
    ) -> None:
        self.env = env
        self.name = path
        self.topic = topic
        self.ack_deadline_secs = ack_deadline_secs
        self.dead_letter_topic = dead_letter_topic
        self.max_delivery_attempts = max_delivery_attempts
        self.project_number = project_number

    def _dead_letter_policy(self) -> dict[str, Any] | None:
        if self.dead_letter_topic is None:
            return None
        return {
            "dead_letter_topic": self.dead_letter_topic,
            "max_delivery_attempts": self.max_delivery_attempts,
        }

    def request(self) -> dict[str, Any]:
        """The ``CreateSubscription`` request ``create`` sends."""
        req: dict[str, Any] = {
            "name": self.name,
            "topic": self.topic,
            "ack_deadline_seconds": self.ack_deadline_secs,
            "labels": self.labels(),
            "expiration_policy": {},  # no ttl: never expires
        }
        if (policy := self._dead_letter_policy()) is not None:
            req["dead_letter_policy"] = policy
        return req

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
        have_dl = (
            sub.dead_letter_policy.dead_letter_topic or None,
            sub.dead_letter_policy.max_delivery_attempts,
        )
        want = self._dead_letter_policy()
        want_dl = (want["dead_letter_topic"], want["max_delivery_attempts"]) if want else (None, 0)
        if have_dl[0] != want_dl[0] or (want and have_dl[1] != want_dl[1]):
            updates.append(
                f"dead-letter policy {have_dl[0]} after {have_dl[1]} -> {want_dl[0]} after {want_dl[1]}"
            )
        ttl_s = sub._pb.expiration_policy.ttl.seconds  # proto-plus maps ttl to a timedelta
        if ttl_s:
            updates.append(f"expires after {ttl_s / 86400:g} idle days -> never")
        return ResourceState(True, updates=tuple(updates), conflicts=tuple(conflicts))

    def create(self) -> None:
        try:
            pubsub_subscriber(self.env).create_subscription(request=self.request())
        except Exception as e:
            raise cloud_error_line(f"subscription {self.name}: create", e) from e
        self._grant_dead_letter_forwarding()

    def _grant_dead_letter_forwarding(self) -> None:
        if self.dead_letter_topic is None or self.env.name != "gcp" or self.project_number is None:
            return  # the emulator has no IAM
        from buildflow.io.google.iam import add_binding

        agent = pubsub_service_agent(self.project_number())
        for client, resource, role in (
            (pubsub_publisher(self.env), self.dead_letter_topic, "roles/pubsub.publisher"),
            (pubsub_subscriber(self.env), self.name, "roles/pubsub.subscriber"),
        ):
            try:
                policy = client.get_iam_policy(request={"resource": resource})
                if add_binding(policy, role, agent):
                    client.set_iam_policy(request={"resource": resource, "policy": policy})
            except Exception as e:
                raise cloud_error_line(f"subscription {self.name}: grant {role} on {resource}", e) from e

    def update(self, state: ResourceState) -> None:
        """Change in place what differs (only those fields, in the update mask)."""
        sub: dict[str, Any] = {"name": self.name}
        paths = []
        for prefix, field, value in (
            ("ack deadline", "ack_deadline_seconds", self.ack_deadline_secs),
            ("expires", "expiration_policy", {}),
            ("dead-letter", "dead_letter_policy", self._dead_letter_policy() or {}),
        ):
            if any(u.startswith(prefix) for u in state.updates):
                sub[field] = value
                paths.append(field)
        try:
            pubsub_subscriber(self.env).update_subscription(
                request={"subscription": sub, "update_mask": {"paths": paths}}
            )
        except Exception as e:
            raise cloud_error_line(f"subscription {self.name}: update", e) from e
        self._grant_dead_letter_forwarding()

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        sub = pubsub_subscriber(self.env).get_subscription(request={"subscription": self.name})
        return label_keep_reasons(dict(sub.labels), self.app)

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
        # acks on their own thread: behind a pull on self._io, each waited for that pull
        self._ack_io = BlockingWorker(f"pubsub-ack-{subscription.rsplit('/', 1)[-1]}")
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
        deliver, skip = await self._io.run(lambda: self._pull_sync(max_events, PULL_DEADLINE_S))
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
                await self._ack_io.run(
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
        await self._modify(ids, 0, self._ack_io)
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
        self._ack_io.stop()


@dataclasses.dataclass(frozen=True)
class _Received:
    """A streaming-pull ``Message`` in the shape of a unary ``ReceivedMessage`` (what the
    decoders read: ``message.{message_id,data,attributes,publish_time}``, ``ack_id``,
    ``delivery_attempt``)."""

    message: Any
    ack_id: str
    delivery_attempt: int


class PubSubStreamingSource(SourceRuntime[Any]):
    """Streaming pull through ``SubscriberClient.subscribe``; ``decode`` as for
    :class:`PubSubPullSource` (it runs on the library's callback threads).

    The stream starts at the first ``pull`` with ``FlowControl(max_messages=max_events *
    BATCHES_IN_FLIGHT)``: at most that many messages are leased at once, and the library
    extends their leases until ack or nack (up to its ``max_lease_duration``, 1 hour by
    default). ``close`` stops the stream and nacks what was received but not handed out.
    """

    def __init__(self, env: Environment, subscription: str, decode: Callable[[Any], Decoded]) -> None:
        self.env = env
        self.subscription = subscription
        self.decode = decode
        self._queue: asyncio.Queue[Envelope[Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: Any = None
        self._messages: dict[str, Any] = {}  # ack_id -> Message, handed out and not yet acked
        self._lock = threading.Lock()
        self._last_pull_empty = False

    def _callback(self, message: Any) -> None:
        received = _Received(message, message.ack_id, message.delivery_attempt or 0)
        try:
            env = self.decode(received)
        except Exception as e:  # a decoder bug must not stop the stream
            env = _undecodable(received, e)
        if env is None:
            message.ack()
            return
        with self._lock:
            self._messages[message.ack_id] = message
        assert self._loop is not None and self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, env)

    def _start(self, max_events: int) -> None:
        import importlib

        pubsub_v1 = importlib.import_module("google.cloud.pubsub_v1")
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        flow = pubsub_v1.types.FlowControl(max_messages=max(1, max_events) * BATCHES_IN_FLIGHT)
        self._future = pubsub_subscriber(self.env).subscribe(
            self.subscription, callback=self._callback, flow_control=flow
        )

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        if self._future is None:
            self._start(max_events)
        assert self._queue is not None
        if self._future.done():  # the stream ended with an error: surface it
            self._future.result()
        out: list[Envelope[Any]] = []
        try:
            out.append(await asyncio.wait_for(self._queue.get(), max(timeout_s, 0.001)))
        except TimeoutError:
            self._last_pull_empty = True
            return []
        while len(out) < max_events and not self._queue.empty():
            out.append(self._queue.get_nowait())
        self._last_pull_empty = False
        return out

    def _take(self, envelopes: Sequence[Envelope[Any]]) -> list[Any]:
        with self._lock:
            return [m for m in (self._messages.pop(e.ack_id, None) for e in envelopes) if m is not None]

    async def ack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        for m in self._take(envelopes):
            m.ack()

    async def nack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        for m in self._take(envelopes):
            m.nack()

    async def backlog(self) -> int | None:
        return None

    async def is_drained(self) -> bool:
        with self._lock:
            idle = not self._messages
        return self._last_pull_empty and idle and (self._queue is None or self._queue.empty())

    async def close(self) -> None:
        if self._future is not None:
            self._future.cancel()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._future.result, 30)
        with self._lock:
            leftover = list(self._messages.values())
            self._messages.clear()
        for m in leftover:  # received but never acked: back at once, not after the deadline
            m.nack()


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


def open_pull_source(
    env: Environment, subscription: str, ack_deadline_secs: int, decode: Callable[[Any], Decoded]
) -> SourceRuntime[Any]:
    """Streaming pull in ``gcp``, unary pull in ``emulator`` (see the module docstring)."""
    if env.name == "gcp":
        return PubSubStreamingSource(env, subscription, decode)
    return PubSubPullSource(env, subscription, ack_deadline_secs, decode)


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
        out: list[Resource] = [PubSubTopicResource(self.environment, d.topic_path, referenced=True)]
        if d.dead_letter_topic_path is not None:
            out.append(PubSubTopicResource(self.environment, d.dead_letter_topic_path))
        out.append(
            PubSubSubscriptionResource(
                self.environment,
                d.subscription_path,
                d.topic_path,
                d.ack_deadline_secs,
                dead_letter_topic=d.dead_letter_topic_path,
                max_delivery_attempts=d.max_delivery_attempts,
                project_number=lambda: project_number(self.environment, d.project_id),
            )
        )
        return out

    def open(self, consumer: str) -> SourceRuntime[Any]:
        d, env = self.declaration, self.environment
        return open_pull_source(
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
