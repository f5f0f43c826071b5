"""The :class:`PubSubSubscription` declaration: messages that carry (or point at) a file."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from buildflow.errors import ConfigurationError
from buildflow.events import PubSubMessageEvent
from buildflow.io.base import SourceDeclaration

__all__ = ["PubSubSubscription"]

# https://cloud.google.com/pubsub/docs/create-topic#resource_names
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$")


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
        ack_deadline_secs: 10-600 s; leases of in-flight messages are extended to it.

    Raises:
        ConfigurationError: a name or value is invalid.
    """

    project_id: str
    subscription: str
    topic: str
    ack_deadline_secs: int = 60

    event_type: ClassVar[type] = PubSubMessageEvent

    def __post_init__(self) -> None:
        topic = self.topic.rsplit("/", 1)[-1]
        for what, value in (("subscription", self.subscription), ("topic", topic)):
            if not _NAME.match(value) or value.startswith("goog"):
                raise ConfigurationError(
                    f"PubSubSubscription: invalid {what} {value!r}: 3-255 letters, digits or "
                    "-._~+%, starting with a letter and not with 'goog'."
                )
        if not 10 <= self.ack_deadline_secs <= 600:
            raise ConfigurationError(
                f"PubSubSubscription: ack_deadline_secs={self.ack_deadline_secs!r} is outside "
                "Pub/Sub's allowed range 10..600."
            )

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
