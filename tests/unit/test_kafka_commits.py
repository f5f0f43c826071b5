"""Kafka commit-after-write with acks out of pull order: the committed offset of a
partition is the highest *contiguously* acked offset + 1 (README "Guarantees"), never past
a record still in flight.

Out-of-order acks happen with two in-flight micro-batches, with Ray replicas sharing one
consumer, and when one event is retried while its neighbours are written. The consumer
on the far side is a fake that hands out records and records commits; the offset
arithmetic under test is :class:`buildflow.io.kafka.provider.KafkaSource`'s own."""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import Sequence
from typing import Any

from buildflow.io import KafkaTopic
from buildflow.io.base import Envelope
from buildflow.io.kafka.provider import KafkaSource

TOPIC = "photos"


class FakeMessage:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return b"\xff\xd8 image bytes"

    def key(self) -> bytes:
        return f"img-{self._p}-{self._o}".encode()

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class FakeConsumer:
    """Hands out the queued records in order; remembers every commit per partition."""

    def __init__(self) -> None:
        self.queued: list[FakeMessage] = []
        self.commits: list[dict[int, int]] = []

    def add(self, partition: int, offsets: range) -> None:
        self.queued += [FakeMessage(partition, o) for o in offsets]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        out, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return out

    def commit(self, offsets: Sequence[Any], asynchronous: bool) -> None:
        assert asynchronous is False  # commit-after-write waits for the broker
        self.commits.append({tp.partition: tp.offset for tp in offsets if tp.topic == TOPIC})

    def committed(self, partition: int) -> int | None:
        got = [c[partition] for c in self.commits if partition in c]
        return got[-1] if got else None

    def close(self) -> None:
        pass


def source() -> tuple[KafkaSource, FakeConsumer]:
    src = KafkaSource(KafkaTopic(bootstrap_servers="127.0.0.1:9", topic=TOPIC), "group", None)
    fake = FakeConsumer()
    src._consumer = fake
    # the group hands this consumer both partitions (what the rebalance callback reports)
    src._assign(fake, [types.SimpleNamespace(topic=TOPIC, partition=p) for p in (0, 1)])
    return src, fake


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def pull(src: KafkaSource, n: int) -> list[Envelope[Any]]:
    return await src.pull(n, 0.01)


def test_a_later_batch_acked_first_commits_nothing_past_the_earlier_one() -> None:
    """Two in-flight micro-batches: the second is written (and acked) before the first."""

    async def scenario() -> None:
        src, fake = source()
        fake.add(0, range(0, 6))
        first, second = await pull(src, 3), await pull(src, 3)
        assert [e.ack_id[2] for e in first] == [0, 1, 2] and [e.ack_id[2] for e in second] == [3, 4, 5]
        await src.ack(second)
        assert fake.committed(0) in (None, 0), fake.commits  # offsets 0-2 are still in flight
        await src.ack(first)
        assert fake.committed(0) == 6, fake.commits
        await src.close()

    run(scenario())


def test_a_retried_event_holds_the_commit_below_it_until_it_is_acked() -> None:
    """Offsets 10-14 pulled; 12 is still being retried while the others are written."""

    async def scenario() -> None:
        src, fake = source()
        fake.add(0, range(10, 15))
        envs = await pull(src, 5)
        retried = [e for e in envs if e.ack_id[2] == 12]
        await src.ack([e for e in envs if e.ack_id[2] != 12])
        assert fake.committed(0) == 12, fake.commits  # a restart re-reads 12 (and 13, 14)
        await src.ack(retried)
        assert fake.committed(0) == 15, fake.commits
        await src.close()

    run(scenario())


def test_partitions_commit_independently() -> None:
    async def scenario() -> None:
        src, fake = source()
        fake.add(0, range(0, 2))
        fake.add(1, range(7, 9))
        envs = await pull(src, 4)
        p0 = [e for e in envs if e.ack_id[1] == 0]
        p1 = [e for e in envs if e.ack_id[1] == 1]
        await src.ack([p0[1], *p1])
        assert fake.committed(1) == 9 and fake.committed(0) in (None, 0), fake.commits
        await src.ack([p0[0]])
        assert fake.committed(0) == 2, fake.commits
        await src.close()

    run(scenario())


def test_any_ack_order_never_commits_past_an_unacked_record() -> None:
    """Seeded random interleavings of pulls and out-of-order acks: after every commit, the
    committed offset is exactly the lowest offset pulled and not yet acked (or, with none
    left, the highest acked + 1), so a restart skips no record."""

    async def scenario(seed: int) -> None:
        rng = random.Random(seed)
        src, fake = source()
        fake.add(0, range(0, 40))
        unacked: list[Envelope[Any]] = []
        acked: set[int] = set()
        while fake.queued or unacked:
            if fake.queued and (not unacked or rng.random() < 0.4):
                unacked += await pull(src, rng.randint(1, 5))
                continue
            rng.shuffle(unacked)
            k = rng.randint(1, len(unacked))
            batch, unacked = unacked[:k], unacked[k:]
            await src.ack(batch)
            acked |= {e.ack_id[2] for e in batch}
            pending = [e.ack_id[2] for e in unacked]
            want = min(pending) if pending else max(acked) + 1
            # everything below the committed offset is acked; the record at it is not
            assert fake.committed(0) == want, (seed, fake.commits[-3:], sorted(pending))
        assert fake.committed(0) == 40
        await src.close()

    for seed in range(50):
        run(scenario(seed))
