"""Streaming pull (``SubscriberClient.subscribe``, the ``gcp`` source) against the stack's
Pub/Sub server, which serves streaming pull: delivery, ack only when the runtime acks
(after its sink write), nack and close give messages back at once, skipped messages are
acked, and ``is_drained``."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.io import PubSubSubscription
from buildflow.io.google.pubsub import PubSubStreamingSource, PubSubSubscriptionProvider, decode_message
from buildflow.provisioning import apply, destroy, plan, plan_destroy


async def _pull_n(src: PubSubStreamingSource, n: int, timeout_s: float = 30) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += await src.pull(n - len(got), 0.5)
    return got


def test_streaming_pull_acks_after_the_write_and_gives_back_nacked_and_unacked(
    stack_env: Any, tmp_path: Path
) -> None:
    from google.cloud import pubsub_v1

    env = Environment(name="emulator", state_dir=tmp_path)
    name = f"stream-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    # a long ack deadline: anything seen again within the test was given back, not expired
    decl = PubSubSubscription(
        project_id="buildflow-local", subscription=name, topic=name, ack_deadline_secs=600
    )
    resources = PubSubSubscriptionProvider(decl, env).resources("p")
    apply(plan(resources))
    publisher = pubsub_v1.PublisherClient()
    for i in range(5):
        publisher.publish(decl.topic_path, f"m{i}".encode()).result(timeout=30)
    publisher.publish(decl.topic_path, b"skip me", skip="1").result(timeout=30)

    def decode(received: Any) -> Any:
        if received.message.attributes.get("skip"):
            return None  # acked and dropped by the source
        return decode_message(received, decl, env)

    async def scenario() -> None:
        src = PubSubStreamingSource(env, decl.subscription_path, decode)
        first = await _pull_n(src, 5)
        assert sorted(e.event.data for e in first) == [f"m{i}".encode() for i in range(5)]
        by_data = {e.event.data: e for e in first}
        await src.ack([by_data[b"m0"], by_data[b"m1"]])  # written: acked
        await src.nack([by_data[b"m2"]])  # failed write: back at once
        again = await _pull_n(src, 1)
        assert [e.event.data for e in again] == [b"m2"]
        assert again[0].event_id == by_data[b"m2"].event_id  # same message, same event id
        assert not await src.is_drained()  # m2, m3, m4 in flight
        await src.ack(again)
        await src.close()  # m3, m4 were handed out, never acked: nacked on close

        src2 = PubSubStreamingSource(env, decl.subscription_path, decode)
        back = await _pull_n(src2, 2)
        assert sorted(e.event.data for e in back) == [b"m3", b"m4"]
        await src2.ack(back)
        assert await src2.pull(10, 1.0) == []  # m0-m2 and the skipped one were acked
        assert await src2.is_drained()
        await src2.close()

    try:
        asyncio.run(scenario())
    finally:
        destroy(plan_destroy(resources, force=True))
        pubsub_v1.PublisherClient().delete_topic(request={"topic": decl.topic_path})


@pytest.mark.parametrize("env_name", ["gcp", "emulator"])
def test_gcp_opens_streaming_pull_and_the_emulator_unary_pull(env_name: str, tmp_path: Path) -> None:
    from buildflow.io.google.pubsub import PubSubPullSource

    decl = PubSubSubscription(project_id="my-proj-1", subscription="s-1", topic="t-1")
    src = PubSubSubscriptionProvider(decl, Environment(name=env_name, state_dir=tmp_path)).open("p")  # type: ignore[arg-type]
    assert isinstance(src, PubSubStreamingSource if env_name == "gcp" else PubSubPullSource)
