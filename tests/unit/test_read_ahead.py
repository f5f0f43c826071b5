"""Payload read-ahead (buildflow.runtime.readahead) and the once-at-a-time ``FileEvent.blob``."""

from __future__ import annotations

import dataclasses
import datetime
import threading

import pytest

from buildflow.events import BlobReader, GCSFileEvent, PubSubMessageEvent
from buildflow.io.kafka.declarations import KafkaMessageEvent
from buildflow.runtime.readahead import BlobReadAhead
from buildflow.testing import gcs_file_event


class GatedReader(BlobReader):
    """Blocks every read until ``gate`` is set; counts reads and the most at once."""

    def __init__(self, data: bytes, gate: threading.Event, counter: Counter) -> None:
        self.data, self.gate, self.counter = data, gate, counter

    def read(self) -> bytes:
        self.counter.enter()
        try:
            assert self.gate.wait(10), "gate never opened"
            if isinstance(self.data, Exception):
                raise self.data
            return self.data
        finally:
            self.counter.leave()


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.calls = 0
        self.changed = threading.Condition(self.lock)

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
            self.changed.notify_all()

    def leave(self) -> None:
        with self.lock:
            self.now -= 1
            self.changed.notify_all()

    def wait_for(self, what: str, value: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: getattr(self, what) >= value, 10), (what, value, vars(self))


def gcs_event(name: str, reader: BlobReader, size: int) -> GCSFileEvent:
    return dataclasses.replace(gcs_file_event(name, b""), reader=reader, size=size)


def test_reads_start_together_ahead_of_processing_and_each_event_gets_its_bytes() -> None:
    gate, counter = threading.Event(), Counter()
    events = [gcs_event(f"e{i}", GatedReader(f"bytes-{i}".encode(), gate, counter), 10) for i in range(8)]
    ra = BlobReadAhead(max_requests=8, max_bytes=1 << 20)
    try:
        ra.start(events)
        counter.wait_for("now", 8)  # all eight reads are in flight at once, nobody asked yet
        gate.set()
        assert [e.blob for e in events] == [f"bytes-{i}".encode() for i in range(8)]
        assert counter.calls == 8  # process waited for the read ahead, it did not read again
        assert ra.stats.peak_requests == 8
    finally:
        ra.close()


def test_the_byte_budget_holds_reads_back_until_a_release() -> None:
    gate, counter = threading.Event(), Counter()
    gate.set()
    events = [gcs_event(f"e{i}", GatedReader(b"x" * 100, gate, counter), 100) for i in range(5)]
    ra = BlobReadAhead(max_requests=8, max_bytes=250)
    try:
        ra.start(events)
        counter.wait_for("calls", 2)
        assert ra.held_bytes == 200  # a third 100-byte read would pass 250
        assert counter.calls == 2 and "_blob" not in events[2].__dict__
        ra.release(events[:2])
        counter.wait_for("calls", 4)
        ra.release(events[2:4])
        counter.wait_for("calls", 5)
        ra.release(events[4:])
        assert ra.held_bytes == 0 and ra.stats.peak_bytes == 200
    finally:
        ra.close()


def test_an_event_reached_before_its_read_started_is_read_once_by_process() -> None:
    gate, counter = threading.Event(), Counter()
    gate.set()
    events = [gcs_event(f"e{i}", GatedReader(b"y" * 100, gate, counter), 100) for i in range(3)]
    ra = BlobReadAhead(max_requests=1, max_bytes=100)  # one at a time, budget of one
    try:
        ra.start(events)
        assert events[2].blob == b"y" * 100  # not dispatched yet: read here, no deadlock
        assert events[0].blob == b"y" * 100  # the one read ahead
        ra.release(events)  # events[1] and [2] were queued: dropped, never read ahead
        assert counter.calls == 2 and "_blob" not in events[1].__dict__
        assert events[1].blob == b"y" * 100 and counter.calls == 3
    finally:
        ra.close()


def test_a_failed_read_is_not_kept_and_the_next_access_reads_again() -> None:
    gate, counter = threading.Event(), Counter()
    gate.set()
    reader = GatedReader(FileNotFoundError("gone"), gate, counter)  # type: ignore[arg-type]
    event = gcs_event("e", reader, 10)
    ra = BlobReadAhead()
    try:
        ra.start([event])
        with pytest.raises(FileNotFoundError, match="gone"):
            _ = event.blob
        counter.wait_for("calls", 1)
        with counter.changed:  # the read ahead has finished (failed)
            assert counter.changed.wait_for(lambda: counter.now == 0, 10)
        assert "_blob" not in event.__dict__ and "_blob_future" not in event.__dict__
        reader.data = b"back"
        before = counter.calls
        assert event.blob == b"back"
        assert counter.calls == before + 1
    finally:
        ra.close()


def test_payloads_in_memory_are_not_read_ahead_and_references_of_every_source_are() -> None:
    gate, counter = threading.Event(), Counter()
    now = datetime.datetime.now(datetime.UTC)
    in_message = PubSubMessageEvent("m1", b"inline", "m1", "t/m1", now, {})
    reference = PubSubMessageEvent(
        "m2", b"gs://b/o", "o", "t/m2", now, {}, uri="gs://b/o", reader=GatedReader(b"ref", gate, counter)
    )
    kafka = KafkaMessageEvent(
        "t", 0, 7, None, "k", None, "t/0/7", now, {}, reader=GatedReader(b"kref", gate, counter)
    )
    in_memory = gcs_file_event("local", b"mem")
    ra = BlobReadAhead()
    try:
        ra.start([in_message, reference, kafka, in_memory])
        counter.wait_for("now", 2)  # both references in flight together
        assert ra.stats.reads == 2
        gate.set()
        assert (in_message.blob, reference.blob, kafka.blob, in_memory.blob) == (
            b"inline",
            b"ref",
            b"kref",
            b"mem",
        )
    finally:
        ra.close()


def test_a_second_thread_waits_for_the_read_in_flight() -> None:
    gate, counter = threading.Event(), Counter()
    event = gcs_event("e", GatedReader(b"once", gate, counter), 4)
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(event.blob)) for _ in range(4)]
    for t in threads:
        t.start()
    counter.wait_for("calls", 1)
    gate.set()
    for t in threads:
        t.join(10)
    assert got == [b"once"] * 4 and counter.calls == 1


@pytest.mark.parametrize("bad", [{"max_requests": 0}, {"max_bytes": 0}, {"assumed_bytes": -1}])
def test_limits_below_one_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BlobReadAhead(**bad)
