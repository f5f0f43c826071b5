"""The Kafka source's consumer (:class:`buildflow.io.kafka.provider.KafkaSource`): the settings
commit-after-write rests on, how it joins (group or manual assignment), what a pull asks the
consumer for, nack, drain and close. The consumer on the far side is a stand-in with
confluent-kafka's ``Consumer`` methods that records each call; ``TopicPartition`` and
``KafkaException`` are confluent-kafka's own. The offset arithmetic of acks out of order is
in tests/unit/test_kafka_commits.py; the broker round trip in tests/integration/test_kafka_e2e.py."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import confluent_kafka
import pytest

from buildflow.errors import ProvisioningError
from buildflow.io import KafkaTopic
from buildflow.io.kafka import provider
from buildflow.io.kafka.provider import CONSUMER_DEFAULTS, KafkaSource

TOPIC = "photos"


class Msg:
    def __init__(self, partition: int, offset: int, error: str | None = None) -> None:
        self._p, self._o, self._err = partition, offset, error

    def error(self) -> str | None:
        return self._err

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return b"gs://bucket/object"

    def key(self) -> None:
        return None

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class Consumer:
    """confluent_kafka.Consumer's methods; every instance is kept in ``made``."""

    made: list[Consumer] = []
    partitions: dict[int, object] | None = {0: object(), 1: object()}

    def __init__(self, config: dict[str, Any], logger: Any = None) -> None:
        self.config, self.logger = config, logger
        self.queued: list[Msg] = []
        self.consumed: list[tuple[int, float]] = []
        self.subscribed: tuple[list[str], dict[str, Any]] | None = None
        self.assigned: list[Any] | None = None
        self.metadata_timeouts: list[float] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False
        Consumer.made.append(self)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = (topics, callbacks)

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.metadata_timeouts.append(timeout)
        parts = Consumer.partitions
        meta = None if parts is None else types.SimpleNamespace(error=None, partitions=parts)
        return types.SimpleNamespace(topics={} if meta is None else {topic: meta})

    def assign(self, parts: list[Any]) -> None:
        self.assigned = parts

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        self.consumed.append((num_messages, timeout))
        out, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return out

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def fake_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    ck = types.SimpleNamespace(
        Consumer=Consumer,
        TopicPartition=confluent_kafka.TopicPartition,
        KafkaException=confluent_kafka.KafkaException,
    )
    monkeypatch.setattr(provider, "_ck", lambda: ck)
    monkeypatch.setattr(Consumer, "made", [])
    monkeypatch.setattr(Consumer, "partitions", {0: object(), 1: object()})


def tp(partition: int) -> Any:
    return confluent_kafka.TopicPartition(TOPIC, partition)


def topic(**kw: Any) -> KafkaTopic:
    return KafkaTopic(bootstrap_servers="127.0.0.1:9", topic=TOPIC, payload_format="reference", **kw)


def test_the_consumer_never_commits_or_stores_offsets_by_itself() -> None:
    async def scenario() -> tuple[KafkaSource, Consumer]:
        src = KafkaSource(topic(consumer_config=(("session.timeout.ms", "9000"),)), "grp", None)
        assert await src.pull(5, 0.5) == []
        await src.close()
        return src, Consumer.made[0]

    src, con = asyncio.run(scenario())
    assert con.config == {
        **CONSUMER_DEFAULTS,
        "bootstrap.servers": "127.0.0.1:9",
        "group.id": "grp",
        # commit-after-write: only KafkaSource.ack commits, and only offsets it computed
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # a new group reads the topic from its start
        "auto.offset.reset": "earliest",
        "session.timeout.ms": "9000",  # the declaration's consumer_config wins
    }
    assert con.logger is provider.log
    topics, callbacks = con.subscribed or ([], {})
    assert topics == [TOPIC]
    # a lost partition (session expired) is given up like a revoked one
    assert callbacks == {"on_assign": src._assign, "on_revoke": src._revoked, "on_lost": src._revoked}
    assert con.closed


def test_a_group_consumer_is_drained_only_after_an_assignment_and_an_empty_pull() -> None:
    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        assert await src.pull(5, 0.5) == []
        assert not await src.is_drained()  # joining: an empty poll says nothing yet
        con = Consumer.made[0]
        _, callbacks = con.subscribed or ([], {})
        callbacks["on_assign"](con, [tp(0)])
        assert await src.is_drained()
        con.queued = [Msg(0, 5)]
        (env,) = await src.pull(5, 0.5)
        assert not await src.is_drained()  # a record in flight
        assert await src.pull(5, 0.5) == []
        assert not await src.is_drained()  # still in flight
        await src.ack([env])
        assert con.commits == [[(TOPIC, 0, 6)]]
        assert await src.is_drained()
        callbacks["on_revoke"](con, [tp(0)])
        con.queued = [Msg(0, 6)]
        (later,) = await src.pull(5, 0.5)
        await src.ack([later])  # revoked: its new owner commits it
        assert con.commits == [[(TOPIC, 0, 6)]]
        await src.close()

    asyncio.run(scenario())


def test_manual_assignment_reads_every_partition_without_a_group_join() -> None:
    async def scenario() -> None:
        src = KafkaSource(topic(assignment="manual"), "grp", None)
        assert await src.pull(5, 0.5) == []
        con = Consumer.made[0]
        assert con.subscribed is None
        assert [(p.topic, p.partition) for p in con.assigned or []] == [(TOPIC, 0), (TOPIC, 1)]
        assert await src.is_drained()  # assigned at once
        assert len(con.metadata_timeouts) == 1 and 0 < con.metadata_timeouts[0] <= 10  # never unbounded
        await src.close()

    asyncio.run(scenario())


def test_manual_assignment_of_a_missing_topic_says_to_run_plan() -> None:
    Consumer.partitions = None

    async def scenario() -> None:
        src = KafkaSource(topic(assignment="manual"), "grp", None)
        try:
            with pytest.raises(
                ProvisioningError, match=r"'photos' on 127.0.0.1:9: not found .*buildflow plan"
            ):
                await src.pull(5, 0.5)
        finally:
            await src.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("timeout_s", "asked"), [(0.3, 0.3), (30.0, 1.0), (0.0, 0.05)])
def test_a_pull_waits_on_the_consumer_at_most_a_second(timeout_s: float, asked: float) -> None:
    """The consumer runs on the source's one I/O thread: a long wait would hold up acks."""

    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        await src.pull(7, timeout_s)
        assert Consumer.made[0].consumed == [(7, asked)]
        await src.close()

    asyncio.run(scenario())


def test_records_with_a_consume_error_are_skipped_and_the_rest_decoded_with_the_environment() -> None:
    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", "the-env")
        await src.pull(0, 0.1)  # opens the consumer
        con = Consumer.made[0]
        con.queued = [Msg(0, 1, error="broker transport failure"), Msg(0, 2), Msg(1, 3)]
        envs = await src.pull(5, 0.5)
        assert [e.event_id for e in envs] == ["photos/0/2", "photos/1/3"]
        assert all(getattr(e.event.reader, "env", None) == "the-env" for e in envs)
        await src.close()

    asyncio.run(scenario())


def test_nack_seeks_each_partition_back_to_its_lowest_nacked_offset() -> None:
    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        await src.pull(0, 0.1)
        con = Consumer.made[0]
        con.queued = [Msg(0, o) for o in (4, 5, 6)] + [Msg(1, 9)]
        envs = await src.pull(5, 0.5)
        await src.nack([envs[1], envs[2], envs[3]])
        assert sorted(con.seeks) == [(TOPIC, 0, 5), (TOPIC, 1, 9)]
        # nacked records are no longer in flight: with the rest acked, the source is drained
        src._assign(con, [tp(0), tp(1)])
        await src.ack([envs[0]])
        assert await src.pull(5, 0.5) == [] and await src.is_drained()
        await src.close()

    asyncio.run(scenario())


def test_an_ack_across_partitions_commits_every_owned_one_even_beside_a_revoked_one() -> None:
    """Whatever order the partitions come in, a revoked partition is skipped, not the end."""

    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        await src.pull(0, 0.1)
        con = Consumer.made[0]
        src._assign(con, [tp(p) for p in range(12)])
        con.queued = [Msg(p, 100) for p in range(12)]
        envs = await src.pull(12, 0.5)
        src._revoked(con, [tp(0)])
        for p in range(1, 12):  # one ack per pair {revoked, owned}: each in its own order
            await src.ack([envs[0], envs[p]])
        assert [c for c in con.commits] == [[(TOPIC, p, 101)] for p in range(1, 12)]
        await src.close()

    asyncio.run(scenario())


def test_a_revoked_partition_forgets_its_offsets_and_nack_or_ack_after_it_is_harmless() -> None:
    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        await src.pull(0, 0.1)
        con = Consumer.made[0]
        src._assign(con, [tp(0)])
        con.queued = [Msg(0, o) for o in range(10)]
        first = await src.pull(10, 0.5)
        await src.ack(first)
        assert con.commits[-1] == [(TOPIC, 0, 10)]
        con.queued = [Msg(0, 10), Msg(0, 11)]
        later = await src.pull(5, 0.5)
        src._revoked(con, [tp(0), tp(5)])  # 5: never held, never pulled
        assert await src.pull(5, 0.5) == [] and await src.is_drained()  # nothing of 0 in flight now
        await src.nack(later[:1])  # a record of a partition given up meanwhile
        assert con.commits[-1] == [(TOPIC, 0, 10)] and con.seeks == [(TOPIC, 0, 10)]
        # the partition comes back; the group's committed offset says 3 (another consumer
        # rewound it): what this consumer acked before the revocation counts for nothing
        src._assign(con, [tp(0)])
        con.queued = [Msg(0, 3)]
        (again,) = await src.pull(5, 0.5)
        await src.ack([again])
        assert con.commits[-1] == [(TOPIC, 0, 4)]
        src._revoked(con, [tp(0)])
        await src.ack(later[1:])  # written after the partition was given up
        assert con.commits[-1] == [(TOPIC, 0, 4)]  # not ours to commit any more
        await src.close()

    asyncio.run(scenario())


def test_an_ack_that_arrives_after_a_revocation_never_moves_a_later_commit() -> None:
    """A batch written after its partition was given up, acked before the partition comes
    back: once this consumer re-reads from the group's commit, its commit must not jump past
    records it has not processed (a crash then would skip them)."""

    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        await src.pull(0, 0.1)
        con = Consumer.made[0]
        src._assign(con, [tp(0)])
        con.queued = [Msg(0, o) for o in range(3, 12)]
        stale = await src.pull(10, 0.5)
        src._revoked(con, [tp(0)])
        await src.ack(stale[-1:])  # offset 11, written by the old batch after the revocation
        src._assign(con, [tp(0)])  # back, from the group's commit: 3
        con.queued = [Msg(0, 3), Msg(0, 4)]
        again = await src.pull(5, 0.5)
        await src.ack(again)
        assert con.commits == [[(TOPIC, 0, 5)]]  # not 12: 5..11 are not processed in this epoch
        await src.close()

    asyncio.run(scenario())


def test_close_without_a_pull_opens_no_consumer() -> None:
    async def scenario() -> None:
        src = KafkaSource(topic(), "grp", None)
        await src.close()

    asyncio.run(scenario())
    assert Consumer.made == []
