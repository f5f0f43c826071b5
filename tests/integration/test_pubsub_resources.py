"""Pub/Sub resources against the stack's Pub/Sub server (pstest stores these fields):
never-expiring subscriptions, the dead-letter policy, labels, and which topics ``destroy``
keeps (another app's subscription on them, or named by a PubSubSubscription)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.io import GCSFileStream, PubSubSubscription
from buildflow.io.google.gcs import GCSFileStreamProvider
from buildflow.io.google.pubsub import (
    PubSubSubscriptionProvider,
    PubSubSubscriptionResource,
    PubSubTopicResource,
)
from buildflow.provisioning import apply, destroy, plan, plan_destroy

PROJECT = "buildflow-local"


@pytest.fixture
def env(stack_env: Any, tmp_path: Path) -> Environment:
    return Environment(name="emulator", state_dir=tmp_path)


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def _tagged(resources: list[Any], app: str) -> list[Any]:
    for r in resources:
        r.app = app
    return resources


def test_subscription_never_expires_has_labels_and_a_dead_letter_policy(env: Environment) -> None:
    from google.cloud import pubsub_v1

    name = _unique("dl")
    decl = PubSubSubscription(
        project_id=PROJECT,
        subscription=name,
        topic=name,
        dead_letter_topic=f"{name}-dead",
        max_delivery_attempts=7,
    )
    resources = _tagged(PubSubSubscriptionProvider(decl, env).resources("p"), "my-app")
    assert [(r.kind, r.name.rsplit("/", 1)[-1]) for r in resources] == [
        ("topic", name),
        ("topic", f"{name}-dead"),
        ("subscription", name),
    ]
    apply(plan(resources))
    sub = pubsub_v1.SubscriberClient().get_subscription(request={"subscription": decl.subscription_path})
    assert sub._pb.HasField("expiration_policy") and not sub._pb.expiration_policy.HasField("ttl")
    assert sub.dead_letter_policy.dead_letter_topic == f"projects/{PROJECT}/topics/{name}-dead"
    assert sub.dead_letter_policy.max_delivery_attempts == 7
    assert dict(sub.labels) == {"managed-by": "buildflow", "buildflow-app": "my-app"}
    assert [c.action for c in plan(resources)] == ["no change"] * 3

    # a subscription made elsewhere with the 31-day default and no dead-letter policy
    old = f"projects/{PROJECT}/subscriptions/{name}-old"
    pubsub_v1.SubscriberClient().create_subscription(
        request={"name": old, "topic": decl.topic_path, "expiration_policy": {"ttl": {"seconds": 31 * 86400}}}
    )
    r = PubSubSubscriptionResource(env, old, decl.topic_path, 10)
    state = r.inspect()
    assert state.updates == ("expires after 31 idle days -> never",)
    r.update(state)  # (pstest cannot update a dead-letter policy in place; the real API can)
    assert r.inspect().updates == ()
    with_dead_letter = PubSubSubscriptionResource(
        env, old, decl.topic_path, 10, dead_letter_topic=f"projects/{PROJECT}/topics/{name}-dead"
    )
    assert any(u.startswith("dead-letter policy None") for u in with_dead_letter.inspect().updates)

    # destroy: the named topic is kept (never deleted), the dead-letter topic this app made
    # is deleted with the subscription; the hand-made subscription is not this app's
    by_kind = {
        (c.resource.kind, c.resource.name.rsplit("/", 1)[-1]): c for c in plan_destroy(resources, force=True)
    }
    assert by_kind[("subscription", name)].action == "delete"
    assert by_kind[("topic", name)].action == "kept"
    assert "never deletes a topic it subscribes to" in by_kind[("topic", name)].details[0]
    # the dead-letter topic has no other subscription: deleted
    assert by_kind[("topic", f"{name}-dead")].action == "delete"
    destroy(plan_destroy(resources, force=True))
    pubsub_v1.PublisherClient().get_topic(request={"topic": decl.topic_path})  # still there
    other = PubSubSubscriptionResource(env, old, decl.topic_path, 60)
    other.app = "my-app"
    assert "existed before" in other.keep_reasons(frozenset())[0]


def test_bucket_topic_is_kept_while_another_apps_subscription_reads_it(env: Environment) -> None:
    """The per-bucket topic (here the shape of ``gcp``'s ``buildflow-<bucket>``, built as a
    plain topic resource since the emulator has no notification API) is deleted only with the
    last subscription on it."""
    bucket = _unique("shared")
    topic = f"projects/{PROJECT}/topics/buildflow-{bucket}"
    provider = GCSFileStreamProvider(GCSFileStream(project_id=PROJECT, bucket_name=bucket), env)

    def app(app_name: str, consumer: str) -> list[Any]:
        return _tagged(
            [
                PubSubTopicResource(env, topic),
                PubSubSubscriptionResource(env, provider.subscription_path(consumer), topic, 60),
            ],
            app_name,
        )

    a, b = app("app-a", "a"), app("app-b", "b")
    apply(plan(a))
    apply(plan(b))  # the topic exists (made by app-a): app-b only adds its subscription
    a_destroy = {c.resource.kind: c for c in plan_destroy(a, force=True)}
    assert a_destroy["subscription"].action == "delete"
    assert a_destroy["topic"].action == "kept" and "other subscription" in a_destroy["topic"].details[0]
    destroy(plan_destroy(a, force=True))
    b_destroy = {c.resource.kind: c for c in plan_destroy(b, force=True)}
    # app-b's subscription goes; the topic was made by app-a: kept, with that reason
    assert b_destroy["subscription"].action == "delete"
    assert b_destroy["topic"].action == "kept" and "app-a" in b_destroy["topic"].details[0]
    destroy(plan_destroy(b, force=True))
    # app-a again, now the last reader: the topic goes with its subscription
    apply(plan(a))
    assert {c.resource.kind: c.action for c in plan_destroy(a, force=True)} == {
        "subscription": "delete",
        "topic": "delete",
    }
    destroy(plan_destroy(a, force=True))
    assert not PubSubTopicResource(env, topic).inspect().exists
