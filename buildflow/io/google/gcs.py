"""``GCSFileStream`` on Cloud Storage: bucket -> OBJECT_FINALIZE notification -> topic ->
subscription -> :class:`GCSFileEvent`.

``gcp``: ``plan`` manages the bucket, the topic ``buildflow-<bucket>``, the notification
(OBJECT_FINALIZE, JSON_API_V1, optional prefix) and the subscription
``buildflow-<bucket>-<processor>``.

``emulator``: the GCS fake has no notification API; it publishes every bucket's events to
one topic given at its start (``BUILDFLOW_GCS_EVENTS_TOPIC``, created by the local stack).
``plan`` manages the bucket and a subscription on that topic; events of other buckets are
acked and skipped.

The event id is ``<bucket>/<object>#<generation>``: one upload keeps one id through any
number of redeliveries (and duplicate notifications).
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import ProvisioningError
from buildflow.events import GCSFileEvent
from buildflow.io.base import Envelope, SourceProvider, SourceRuntime
from buildflow.io.google.blobs import GCSBlobReader
from buildflow.io.google.clients import (
    cloud_error_line,
    gcs_events_topic,
    project_number,
    pubsub_publisher,
    resolve_project,
    storage_client,
)
from buildflow.io.google.declarations import GCSFileStream
from buildflow.io.google.iam import add_binding as add_binding
from buildflow.io.google.pubsub import (
    Decoded,
    PubSubSubscriptionResource,
    PubSubTopicResource,
    open_pull_source,
    topic_keep_reasons,
)
from buildflow.provisioning import CreatedLedger, Resource, ResourceState, label_keep_reasons

__all__ = ["GCSFileStreamProvider", "GCSBlobReader", "decode_notification"]  # GCSBlobReader: re-export

log = logging.getLogger("buildflow.io.gcs")

_REQUIRED_ATTRIBUTES = ("bucketId", "objectId", "objectGeneration", "eventType")


def _parse_time(text: str | None) -> datetime.datetime:
    if not text:
        return datetime.datetime.now(datetime.UTC)
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.UTC)


def decode_notification(received: Any, decl: GCSFileStream, env: Environment, project: str | None) -> Decoded:
    """A received Pub/Sub message -> envelope of a :class:`GCSFileEvent`, None to skip, or
    an envelope with ``error`` set (missing attributes, bad payload) to dead-letter."""
    m = received.message
    attrs = dict(m.attributes)
    now = datetime.datetime.now(datetime.UTC)
    attempt = max(1, getattr(received, "delivery_attempt", 0) or 1)
    missing = [a for a in _REQUIRED_ATTRIBUTES if not attrs.get(a)]
    if missing:
        return Envelope(
            event=m,
            event_id=f"pubsub:{m.message_id}",
            ack_id=received.ack_id,
            received_at=now,
            attempt=attempt,
            object_name=attrs.get("objectId") or f"message {m.message_id}",
            error=ValueError(
                f"not a Cloud Storage notification: attributes {missing} missing (got {sorted(attrs)})"
            ),
        )
    bucket, name = attrs["bucketId"], attrs["objectId"]
    if attrs["eventType"] != "OBJECT_FINALIZE":
        log.debug("skipping %s event for gs://%s/%s", attrs["eventType"], bucket, name)
        return None
    if bucket != decl.bucket_name:
        log.debug("skipping gs://%s/%s: another bucket", bucket, name)
        return None
    if decl.prefix and not name.startswith(decl.prefix):
        log.debug("skipping gs://%s/%s: outside prefix %r", bucket, name, decl.prefix)
        return None
    try:
        payload = json.loads(m.data.decode("utf-8")) if m.data else {}
        generation = int(attrs["objectGeneration"])
        size = int(payload.get("size", 0))
    except (ValueError, UnicodeDecodeError) as e:
        return Envelope(
            event=m,
            event_id=f"pubsub:{m.message_id}",
            ack_id=received.ack_id,
            received_at=now,
            attempt=attempt,
            object_name=name,
            error=ValueError(f"malformed notification payload or generation: {e}"),
        )
    content_type = payload.get("contentType")
    if decl.content_types and not (content_type or "").startswith(tuple(decl.content_types)):
        log.debug("skipping gs://%s/%s: content type %s", bucket, name, content_type)
        return None
    event_id = GCSFileEvent.make_event_id(bucket, name, generation)
    event = GCSFileEvent(
        bucket_name=bucket,
        name=name,
        generation=generation,
        size=size,
        content_type=content_type,
        event_time=_parse_time(attrs.get("eventTime") or payload.get("updated")),
        event_id=event_id,
        metadata=attrs,
        reader=GCSBlobReader(env, project, bucket, name, generation),
        object_metadata=dict(payload.get("metadata") or {}),
    )
    return Envelope(event, event_id, received.ack_id, now, attempt, object_name=name)


class GCSBucketResource(Resource):
    """A bucket, created with uniform bucket-level access, the app's labels and the
    declared ``location``. Deleting a non-empty one needs ``force_destroy=True`` (or
    ``--force``); one this app did not create is never deleted.

    fake-gcs-server (``emulator``) drops bucket labels and locations, so there the
    state folder's :class:`~buildflow.provisioning.CreatedLedger` records what ``plan``
    created."""

    kind = "bucket"

    def __init__(self, env: Environment, project: str | None, decl: GCSFileStream) -> None:
        self.env = env
        self.project = project
        self.decl = decl
        self.name = f"gs://{decl.bucket_name}"
        self.location = decl.location

    def _client(self) -> Any:
        return storage_client(self.env, self.project)

    def inspect(self) -> ResourceState:
        try:
            found = self._client().lookup_bucket(self.decl.bucket_name)
        except Exception as e:
            raise cloud_error_line(f"bucket {self.name}", e) from e
        if found is None:
            return ResourceState(exists=False)
        conflicts = []
        have = (found.location or "").upper()
        if self.env.name == "gcp" and self.location and have and have != self.location.upper():
            conflicts.append(
                f"location {have}, declared {self.location.upper()} (a bucket cannot move: "
                "declare its location, or use another bucket)"
            )
        return ResourceState(exists=True, conflicts=tuple(conflicts))

    def new_bucket(self) -> Any:
        """The bucket ``create`` inserts: labels and uniform bucket-level access set
        (https://cloud.google.com/storage/docs/uniform-bucket-level-access)."""
        bucket = self._client().bucket(self.decl.bucket_name)
        bucket.labels = self.labels()
        bucket.iam_configuration.uniform_bucket_level_access_enabled = True
        return bucket

    def create(self) -> None:
        try:
            bucket = self._client().create_bucket(
                self.new_bucket(), project=self.project, location=self.location
            )
        except Exception as e:
            raise cloud_error_line(f"bucket {self.name}: create", e) from e
        if self.env.name == "emulator":
            CreatedLedger(self.env.state_dir).record(self.kind, self.name, self.app, str(bucket.time_created))

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        bucket = self._client().get_bucket(self.decl.bucket_name)
        labels = bucket.labels
        if self.env.name == "emulator" and not labels:
            ledger = CreatedLedger(self.env.state_dir)
            labels = ledger.labels(self.kind, self.name, str(bucket.time_created))
        return label_keep_reasons(labels, self.app)

    def delete_blockers(self) -> list[str]:
        if self.decl.force_destroy:
            return []
        blobs = list(self._client().list_blobs(self.decl.bucket_name, max_results=1))
        return ["bucket holds objects and force_destroy=False"] if blobs else []

    def delete(self) -> None:
        client = self._client()
        try:
            bucket = client.bucket(self.decl.bucket_name)
            while True:  # Bucket.delete(force=True) stops at 256 objects
                page = list(client.list_blobs(self.decl.bucket_name, max_results=1000, versions=True))
                if not page:
                    break
                for blob in page:
                    blob.delete()
            bucket.delete()
        except Exception as e:
            raise cloud_error_line(f"bucket {self.name}: delete", e) from e
        if self.env.name == "emulator":
            CreatedLedger(self.env.state_dir).forget(self.kind, self.name)


#: Waits (seconds) between attempts to create a notification while the service agent's
#: publisher grant propagates: about 9 minutes in all. IAM: "typically 2 minutes, but could
#: potentially take 7 minutes or longer"
#: (https://cloud.google.com/iam/docs/access-change-propagation).
PROPAGATION_DELAYS_S: tuple[float, ...] = (5, 10, 20, 40, 60, 60, 60, 60, 60, 60, 60, 60)


def _is_propagation_403(e: BaseException) -> bool:
    """The 403 Cloud Storage answers a notification insert with until the service agent's
    grant is visible: "... does not have permission to publish messages to the Cloud Pub/Sub
    topic ..." (https://cloud.google.com/storage/docs/reporting-changes#troubleshooting)."""
    return type(e).__name__ == "Forbidden" and "permission to publish" in str(e)


def create_notification(
    create: Callable[[], Any],
    what: str,
    delays_s: Sequence[float] = PROPAGATION_DELAYS_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call ``create`` (a notification insert); on the IAM-propagation 403 wait
    ``delays_s[i]`` and try again, logging what it waits for. Any other error, or the 403
    after the last wait, is raised."""
    for attempt, delay in enumerate([*delays_s, None]):
        try:
            create()
            return
        except Exception as e:
            if delay is None or not _is_propagation_403(e):
                raise
            log.warning(
                "notification %s: waiting %.0f s for the Storage service agent's Pub/Sub publisher "
                "grant to propagate (attempt %d of %d)",
                what,
                delay,
                attempt + 1,
                len(delays_s) + 1,
            )
            sleep(delay)


class GCSNotificationResource(Resource):
    """The bucket's OBJECT_FINALIZE notification to the topic (``gcp`` only), and the
    publisher role the Cloud Storage service agent needs on that topic."""

    kind = "notification"

    def __init__(self, env: Environment, project: str, decl: GCSFileStream, topic_path: str) -> None:
        self.env = env
        self.project = project
        self.decl = decl
        self.topic_path = topic_path
        self.topic = topic_path.rsplit("/", 1)[-1]
        self.name = f"gs://{decl.bucket_name} -> {topic_path}"

    def _find(self) -> Any:
        bucket = storage_client(self.env, self.project).bucket(self.decl.bucket_name)
        for n in bucket.list_notifications():
            if n.topic_name == self.topic and n.topic_project == self.project:
                return n
        return None

    def inspect(self) -> ResourceState:
        try:
            n = self._find()
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return ResourceState(exists=False)
            raise cloud_error_line(f"notification {self.name}", e) from e
        if n is None:
            return ResourceState(exists=False)
        conflicts = []
        if list(n.event_types or []) != ["OBJECT_FINALIZE"]:
            conflicts.append(f"event types {n.event_types}, declared ['OBJECT_FINALIZE']")
        if (n.blob_name_prefix or "") != self.decl.prefix:
            conflicts.append(f"prefix {n.blob_name_prefix!r}, declared {self.decl.prefix!r}")
        if n.payload_format != "JSON_API_V1":
            conflicts.append(f"payload format {n.payload_format}, declared JSON_API_V1")
        return ResourceState(True, conflicts=tuple(conflicts))

    def create(self) -> None:
        """Grant the Cloud Storage service agent ``roles/pubsub.publisher`` on the topic
        (merged into the existing binding: a rerun adds no duplicate), then create the
        notification, retrying while the grant propagates (:func:`create_notification`)."""
        client = storage_client(self.env, self.project)
        try:
            agent = client.get_service_account_email(project=self.project)
            publisher = pubsub_publisher(self.env)
            policy = publisher.get_iam_policy(request={"resource": self.topic_path})
            if add_binding(policy, "roles/pubsub.publisher", f"serviceAccount:{agent}"):
                publisher.set_iam_policy(request={"resource": self.topic_path, "policy": policy})
            notification = client.bucket(self.decl.bucket_name).notification(
                topic_name=self.topic,
                topic_project=self.project,
                event_types=["OBJECT_FINALIZE"],
                payload_format="JSON_API_V1",
                blob_name_prefix=self.decl.prefix or None,
            )
            create_notification(notification.create, self.name)
        except ProvisioningError:
            raise
        except Exception as e:
            raise cloud_error_line(f"notification {self.name}: create", e) from e

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        return topic_keep_reasons(self.env, self.topic_path, self.app, deleting, "the notification's topic")

    def delete(self) -> None:
        try:
            n = self._find()
            if n is not None:
                n.delete()
        except Exception as e:
            if type(e).__name__ != "NotFound":
                raise cloud_error_line(f"notification {self.name}: delete", e) from e


class GCSFileStreamProvider(SourceProvider):
    """Binds :class:`GCSFileStream` to ``gcp`` or ``emulator``."""

    shared_consumers = True

    declaration: GCSFileStream

    @property
    def project(self) -> str:
        return resolve_project(
            self.declaration.project_id,
            self.environment,
            self.declaration.describe(),
            "set project_id on the declaration, e.g. GCSFileStream(project_id='my-project', ...),",
        )

    def topic_path(self) -> str:
        if self.environment.name == "emulator":
            return gcs_events_topic(self.environment)
        return f"projects/{self.project}/topics/buildflow-{self.declaration.bucket_name}"

    def subscription_path(self, consumer: str) -> str:
        return f"projects/{self.project}/subscriptions/buildflow-{self.declaration.bucket_name}-{consumer}"

    def resources(self, consumer: str) -> list[Resource]:
        env, decl = self.environment, self.declaration
        topic = self.topic_path()
        out: list[Resource] = [GCSBucketResource(env, self.project, decl)]
        if env.name == "gcp":
            out.append(PubSubTopicResource(env, topic))
        if (dead := self._dead_letter_topic()) is not None:
            out.append(PubSubTopicResource(env, dead))
        project = self.project
        # the subscription before the notification: a message published before its
        # subscription exists is not delivered to it
        # (https://cloud.google.com/pubsub/docs/subscriber#subscription-workflow)
        out.append(
            PubSubSubscriptionResource(
                env,
                self.subscription_path(consumer),
                topic,
                decl.ack_deadline_secs,
                dead_letter_topic=self._dead_letter_topic(),
                max_delivery_attempts=decl.max_delivery_attempts,
                project_number=lambda: project_number(env, project),
            )
        )
        if env.name == "gcp":
            out.append(GCSNotificationResource(env, self.project, decl, topic))
        return out

    def _dead_letter_topic(self) -> str | None:
        t = self.declaration.dead_letter_topic
        if t is None or t.startswith("projects/"):
            return t
        return f"projects/{self.project}/topics/{t}"

    def upload(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Upload ``data`` as object ``name`` (its OBJECT_FINALIZE raises the event)."""
        bucket = storage_client(self.environment, self.project).bucket(self.declaration.bucket_name)
        try:
            bucket.blob(name).upload_from_string(data, content_type=content_type)
        except Exception as e:
            raise cloud_error_line(f"upload gs://{bucket.name}/{name}", e) from e
        return f"gs://{bucket.name}/{name}"

    def backfill(self, *, dry_run: bool = False) -> int:
        """Publish, for every live object already in the bucket (under ``prefix``), the
        OBJECT_FINALIZE notification Cloud Storage would have sent for it: the same
        attributes (``bucketId``, ``objectId``, ``objectGeneration``, ``eventType``,
        ``payloadFormat=JSON_API_V1``, plus ``buildflowBackfill=true``) and the object
        resource as the JSON payload
        (https://cloud.google.com/storage/docs/pubsub-notifications#payload). The event id,
        ``<bucket>/<object>#<generation>``, is therefore the one the live notification has,
        so an object already processed (or notified as well) lands once in an idempotent sink.

        The message goes to the bucket's topic (``gcp``) or the stack's events topic
        (``emulator``): every subscription on it receives it, also other apps' on the same
        bucket (idempotent for them too). Returns the number of objects published (or, with
        ``dry_run``, that would be).

        Raises:
            ProvisioningError: the bucket cannot be listed or a publish failed.
        """
        decl = self.declaration
        client = storage_client(self.environment, self.project)
        topic = self.topic_path()
        publisher = pubsub_publisher(self.environment)
        futures: list[Any] = []
        try:
            for blob in client.list_blobs(decl.bucket_name, prefix=decl.prefix or None):
                if decl.content_types and not (blob.content_type or "").startswith(tuple(decl.content_types)):
                    continue
                if dry_run:
                    futures.append(None)
                    continue
                attrs = {
                    "bucketId": decl.bucket_name,
                    "objectId": blob.name,
                    "objectGeneration": str(blob.generation),
                    "eventType": "OBJECT_FINALIZE",
                    "payloadFormat": "JSON_API_V1",
                    "eventTime": (blob.updated or datetime.datetime.now(datetime.UTC)).isoformat(),
                    "buildflowBackfill": "true",
                }
                payload = json.dumps(blob._properties, default=str).encode()
                futures.append(publisher.publish(topic, payload, **attrs))
            for f in futures:
                if f is not None:
                    f.result(timeout=120)
        except Exception as e:
            raise cloud_error_line(f"backfill gs://{decl.bucket_name} to {topic}", e) from e
        return len(futures)

    def open(self, consumer: str) -> SourceRuntime[Any]:
        decl, env, project = self.declaration, self.environment, self.project
        return open_pull_source(
            env,
            self.subscription_path(consumer),
            decl.ack_deadline_secs,
            lambda received: decode_notification(received, decl, env, project),
        )
