"""A consumer group join that cannot finish, on the stack's broker (tansu): another member of
the same group and topic is alive (its client heartbeats) but its application stopped
polling, so the rebalance the new consumer starts waits for it, up to its
``max.poll.interval.ms``. The source reads nothing meanwhile, ``--until-idle`` does not call
it drained, and a warning names the topic, the group and what to do, instead of a silent
run at 0 events/s."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest

from buildflow.io import KafkaTopic
from buildflow.io.kafka import provider
from buildflow.io.kafka.provider import CONSUMER_DEFAULTS, KafkaSource

pytestmark = pytest.mark.slow


def test_a_join_held_up_by_a_member_that_stopped_polling_is_reported_and_not_drained(
    stack_env: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = stack_env.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic, group = f"join-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=10)
    # the stuck member: joins, gets the partition, then its application never polls again
    stuck = Consumer({**CONSUMER_DEFAULTS, "bootstrap.servers": bootstrap, "group.id": group})
    assigned: list[Any] = []
    stuck.subscribe([topic], on_assign=lambda _c, parts: assigned.extend(parts))
    deadline = time.monotonic() + 60
    while not assigned:
        assert time.monotonic() < deadline, "the first member was never assigned"
        stuck.consume(1, 0.5)
    monkeypatch.setattr(provider, "JOIN_WARNING_S", 3.0)
    source = KafkaSource(KafkaTopic(bootstrap, topic), group, None)
    caplog.set_level(logging.WARNING, logger=provider.log.name)

    async def pulls() -> None:
        deadline = time.monotonic() + 30
        while not any("assigned this consumer no partition" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no warning about the join"
            assert await source.pull(10, 0.5) == []
            assert not await source.is_drained()  # an unfinished join says nothing of the topic
        await source.close()

    try:
        asyncio.run(pulls())
    finally:
        stuck.close()
        admin.delete_topics([topic])[topic].result(timeout=10)
    [warning] = [r.getMessage() for r in caplog.records if "assigned this consumer" in r.getMessage()]
    assert repr(topic) in warning and repr(group) in warning
    assert "max.poll.interval.ms" in warning and "group_id=" in warning
