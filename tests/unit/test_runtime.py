"""The runtime's semantics, through the public test harness and test doubles of the code
on the other side (source and sink runtimes).

Tests taking the ``runtime`` fixture run on both runtimes: in-process, and Ray (replicas
in other processes, so what a processor saw is recorded in a file, :class:`Recorder`, not
in a closure). The rest drive the in-process runtime's internals (the source and sink
objects it opened) directly."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import buildflow
from buildflow.environment import Environment
from buildflow.errors import TransientSinkError
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream
from buildflow.io.base import Envelope, OutputRecord, RowRejection, SinkProvider, SinkRuntime, SourceRuntime
from buildflow.processor import inspect_processor
from buildflow.provisioning import Resource
from buildflow.runtime.base import BoundProcessor, RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.schema import TableSchema
from buildflow.testing import (
    InMemorySink,
    InMemorySource,
    InMemorySourceProvider,
    gcs_file_event,
    run_processor,
)
from buildflow.testing import _Source as _MemorySource


@dataclasses.dataclass
class Row:
    name: str
    n: int


class Base(buildflow.Processor):
    _abstract_processor = True

    def source(self) -> GCSFileStream:
        return GCSFileStream(bucket_name="photos")

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id="ds.rows")


def events(n: int) -> list[GCSFileEvent]:
    return [gcs_file_event(f"f{i:03d}.jpg", b"x" * i) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Recorder:
    """Appends JSON values to a file: what a processor saw, from whichever process runs it."""

    path: Path

    def append(self, value: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(value, default=str) + "\n")

    def items(self) -> list[Any]:
        return [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []


@pytest.fixture(params=["inprocess", "ray"])
def runtime(request: pytest.FixtureRequest) -> Any:
    if request.param == "ray":
        return request.getfixturevalue("ray_runtime")
    return InProcessRuntime()


@pytest.fixture
def rec(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "recorded.jsonl")


def test_process_may_return_a_row_a_list_or_none(runtime: Any) -> None:
    class P(Base):
        def process(self, event: GCSFileEvent) -> list[Row] | Row | None:
            if event.size == 0:
                return None
            if event.size == 1:
                return Row(event.name, 1)
            return [Row(event.name, k) for k in range(event.size)]

    result = run_processor(P(), events(3), runtime=runtime)
    got = sorted((r["name"], r["n"], r["_row_index"]) for r in result.rows)
    assert got == [("f001.jpg", 1, 0), ("f002.jpg", 0, 0), ("f002.jpg", 1, 1)]
    assert all(r["_event_id"].startswith(f"test-bucket/{r['name']}#") for r in result.rows)
    assert result.summary.events == 3 and result.summary.dead_letters == 0


def test_one_failing_event_is_dead_lettered_alone(runtime: Any) -> None:
    class P(Base):
        def process(self, event: GCSFileEvent) -> Row:
            if event.name == "f002.jpg":
                raise ValueError("cannot read this one")
            return Row(event.name, event.size)

    result = run_processor(P(), events(5), runtime=runtime)
    assert sorted(r["name"] for r in result.rows) == ["f000.jpg", "f001.jpg", "f003.jpg", "f004.jpg"]
    (dead,) = result.dead_letters
    assert dead["object_name"] == "f002.jpg"
    assert dead["reason"] == "ValueError: cannot read this one"
    assert dead["error_type"] == "ValueError" and dead["stage"] == "process"
    assert dead["event_id"].startswith("test-bucket/f002.jpg#")


def test_raising_process_batch_is_retried_per_event_to_isolate_the_bad_one(
    runtime: Any, rec: Recorder
) -> None:
    class P(Base):
        max_batch_size = 8

        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            rec.append(len(events))
            if any(e.name == "f003.jpg" for e in events):
                raise RuntimeError("model blew up")
            return [Row(e.name, e.size) for e in events]

    result = run_processor(P(), events(6), runtime=runtime)
    assert len(result.rows) == 5
    assert [d["object_name"] for d in result.dead_letters] == ["f003.jpg"]
    calls = rec.items()
    assert calls[0] == 6 and calls[1:] == [1] * 6  # whole batch, then one at a time


def test_process_batch_may_return_exceptions_per_event(runtime: Any) -> None:
    class P(Base):
        def process_batch(self, events: list[GCSFileEvent]) -> list[Row | Exception]:
            return [ValueError("odd") if e.size % 2 else Row(e.name, e.size) for e in events]

    result = run_processor(P(), events(6), runtime=runtime)
    assert sorted(r["n"] for r in result.rows) == [0, 2, 4]
    assert len(result.dead_letters) == 3


def test_process_batch_with_wrong_result_count_dead_letters_with_clear_reason(runtime: Any) -> None:
    class P(Base):
        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            return []

    result = run_processor(P(), events(2), runtime=runtime)
    assert result.rows == []
    assert all("returned 0 results for 1 events" in d["reason"] for d in result.dead_letters)


def test_invalid_row_is_dead_lettered_at_validation(runtime: Any) -> None:
    class P(Base):
        def process(self, event: GCSFileEvent) -> Row:
            return Row(event.name, "many" if event.size == 1 else event.size)  # type: ignore[arg-type]

    result = run_processor(P(), events(3), runtime=runtime)
    assert len(result.rows) == 2
    (dead,) = result.dead_letters
    assert dead["stage"] == "validate" and "'n'" in dead["reason"] and "INT64" in dead["reason"]


def test_setup_once_on_the_worker_thread_and_teardown_once(runtime: Any, rec: Recorder) -> None:
    class P(Base):
        max_batch_size = 2

        def setup(self) -> None:
            rec.append(["setup", threading.current_thread().name])
            self.metrics.increment("model_loads")

        def teardown(self) -> None:
            rec.append(["teardown", threading.current_thread().name])

        def process(self, event: GCSFileEvent) -> Row:
            rec.append(["process", threading.current_thread().name])
            return Row(event.name, 0)

    result = run_processor(P(), events(7), runtime=runtime)
    seen = rec.items()
    counts = collections.Counter(kind for kind, _ in seen)
    assert counts["setup"] == 1 and counts["teardown"] == 1
    setup_thread = next(t for kind, t in seen if kind == "setup")
    assert {t for kind, t in seen if kind == "process"} == {setup_thread} != {threading.main_thread().name}
    (stats,) = result.summary.processors
    assert stats.setup_calls == 1 and stats.metrics["model_loads"] == 1
    assert stats.batches >= 4  # 7 events in micro-batches of at most 2


def test_micro_batches_respect_max_size(runtime: Any, rec: Recorder) -> None:
    class P(Base):
        max_batch_size = 4
        max_batch_latency_ms = 1000

        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            rec.append(len(events))
            return [Row(e.name, 0) for e in events]

    run_processor(P(), events(10), runtime=runtime)
    sizes = rec.items()
    assert max(sizes) == 4 and sum(sizes) == 10


def test_slow_processing_does_not_block_the_event_loop(runtime: Any) -> None:
    class Slow(Base):
        max_batch_size = 1

        def process(self, event: GCSFileEvent) -> Row:
            time.sleep(0.3)  # a blocking "model": must run off the loop
            return Row(event.name, 0)

    result = run_processor(Slow(), events(2), runtime=runtime)
    assert len(result.rows) == 2
    assert result.summary.loop_lag_max_ms < 150


def test_max_events_stops_after_that_many(runtime: Any) -> None:
    class P(Base):
        max_batch_size = 3

        def process(self, event: GCSFileEvent) -> Row:
            return Row(event.name, 0)

    result = run_processor(
        P(), events(10), options=RunOptions(max_events=5, handle_signals=False), runtime=runtime
    )
    assert result.summary.events == 5 and len(result.rows) == 5
    assert result.summary.stop_reason == "max-events"


def test_setup_failure_is_reported_not_raised(runtime: Any) -> None:
    class Broken(Base):
        def setup(self) -> None:
            raise FileNotFoundError("weights.pth")

        def process(self, event: GCSFileEvent) -> Row:
            raise AssertionError("never called")

    result = run_processor(Broken(), events(1), runtime=runtime)
    assert result.summary.stop_reason == "error"
    assert "FileNotFoundError: weights.pth" in (result.summary.error or "")


# --- ack-after-write and sink retries, with source and sink doubles -------------------
# The doubles keep what they saw in files (Recorder), so they tell the same story when the
# Ray runtime opens them in a source server, a sink server or a replica.


@dataclasses.dataclass(frozen=True)
class FileSink(InMemorySink):
    """Rows as JSON lines in ``rows`` (a Recorder); the first ``failures`` writes raise
    TransientSinkError; with ``reject_negative`` a row with n < 0 is refused for good."""

    rows: Recorder = Recorder(Path("/nonexistent"))
    log: Recorder = Recorder(Path("/nonexistent"))
    failures: int = 0
    reject_negative: bool = False


class _FileSinkRuntime(SinkRuntime):
    def __init__(self, decl: FileSink) -> None:
        self.decl, self.left = decl, decl.failures

    async def write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        if self.left > 0:
            self.left -= 1
            self.decl.log.append("fail")
            raise TransientSinkError("table is locked")
        self.decl.log.append(f"write {len(records)}")
        refused = []
        for i, r in enumerate(records):
            if self.decl.reject_negative and r.values.get("n", 0) < 0:
                refused.append(RowRejection(i, "no such field: n"))
            else:
                self.decl.rows.append({**r.values, "_event_id": r.event_id})
        return refused


class FileSinkProvider(SinkProvider):
    def resources(self, schema: TableSchema) -> list[Resource]:
        return []

    def open(self, schema: TableSchema) -> SinkRuntime:
        assert isinstance(self.declaration, FileSink)
        return _FileSinkRuntime(self.declaration)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LoggedSource(InMemorySource):
    """In-memory events whose pulls and acks are logged; with ``undecodable_first`` the
    first event pulled comes as a message the source could not decode."""

    log: Recorder = Recorder(Path("/nonexistent"))
    undecodable_first: bool = False


class _LoggedSourceRuntime(_MemorySource):
    def __init__(self, decl: LoggedSource) -> None:
        super().__init__(decl.events)
        self.decl = decl
        self.spoiled = False

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        got = await super().pull(max_events, timeout_s)
        if got:
            self.decl.log.append(f"pull {len(got)}")
        if got and self.decl.undecodable_first and not self.spoiled:
            self.spoiled = True
            bad = dataclasses.replace(
                got[0],
                event=b"{not json",
                event_id="msg-1",
                object_name="msg-1",
                error=ValueError("payload is not JSON"),
            )
            return [bad, *got[1:]]
        return got

    async def ack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        self.decl.log.append(f"ack {len(envelopes)}")
        await super().ack(envelopes)


class LoggedSourceProvider(InMemorySourceProvider):
    def open(self, consumer: str) -> SourceRuntime[Any]:
        assert isinstance(self.declaration, LoggedSource)
        return _LoggedSourceRuntime(self.declaration)


_ENV = Environment(name="local", state_dir=Environment.resolve("local").state_dir)


def _bound(
    processor: buildflow.Processor, source: LoggedSource, sink: FileSink, dead: FileSink
) -> BoundProcessor:
    return BoundProcessor(
        spec=inspect_processor(processor),
        source=LoggedSourceProvider(source, _ENV),
        sink=FileSinkProvider(sink, _ENV),
        dead_letter=FileSinkProvider(dead, _ENV),
    )


def _recorders(tmp_path: Path, *names: str) -> list[Recorder]:
    return [Recorder(tmp_path / f"{n}.jsonl") for n in names]


class Named(Base):
    max_batch_size = 2
    max_batch_latency_ms = 0

    def process(self, event: GCSFileEvent) -> Row:
        return Row(event.name, 0)


def test_transient_sink_errors_are_retried_and_events_acked_only_after_the_write(
    runtime: Any, tmp_path: Path
) -> None:
    class P(Base):
        max_batch_size = 10

        def process(self, event: GCSFileEvent) -> Row:
            return Row(event.name, 0)

    log, rows, dead = _recorders(tmp_path, "log", "rows", "dead")
    bound = _bound(
        P(),
        LoggedSource(tuple(events(3)), log=log),
        FileSink("flaky", rows=rows, log=log, failures=2),
        FileSink("flaky.dl", rows=dead, log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    opts = RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False, sink_retry_initial_ms=10)
    summary = runtime.run([bound], opts)
    assert log.items() == ["pull 3", "fail", "fail", "write 3", "ack 3"]
    assert summary.processors[0].sink_retries == 2
    assert sorted(r["name"] for r in rows.items()) == [e.name for e in events(3)]


def test_batches_waiting_for_a_slow_sink_are_written_together_and_each_acked(
    runtime: Any, tmp_path: Path
) -> None:
    """While the sink fails, processed micro-batches queue up; once it is back, those
    waiting are coalesced into one write (one file open / one MERGE), and every event is
    still written once and acked."""
    log, sink_log, rows, dead = _recorders(tmp_path, "log", "sink-log", "rows", "dead")
    bound = _bound(
        Named(),
        LoggedSource(tuple(events(12)), log=log),
        FileSink("coalesce", rows=rows, log=sink_log, failures=3),
        FileSink("coalesce.dl", rows=dead, log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    opts = RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False, sink_retry_initial_ms=20)
    summary = runtime.run([bound], opts)
    writes = [int(x.split()[1]) for x in sink_log.items() if x.startswith("write")]
    assert sum(writes) == 12 and max(writes) > 2, sink_log.items()
    stats = summary.processors[0]
    assert stats.batches == 6 and stats.sink_writes == len(writes) < 6
    assert sorted(r["name"] for r in rows.items()) == [e.name for e in events(12)]
    assert sum(int(x.split()[1]) for x in log.items() if x.startswith("ack")) == 12


def test_backpressure_bounds_what_is_pulled_while_the_sink_is_down(runtime: Any, tmp_path: Path) -> None:
    """With the sink down, the source is pulled only a bounded number of micro-batches
    ahead; after a stop the drain cannot finish, so the run stops hard at the drain
    deadline without acking anything."""
    log, rows, dead = _recorders(tmp_path, "log", "rows", "dead")
    bound = _bound(
        Named(),
        LoggedSource(tuple(events(40)), log=log),
        FileSink("down", rows=rows, log=Recorder(tmp_path / "sink-log.jsonl"), failures=10**9),
        FileSink("down.dl", rows=dead, log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    opts = RunOptions(
        sink_retry_initial_ms=5,
        sink_retry_max_ms=10,
        drain_timeout_s=0.3,
        max_inflight_batches=2,
        handle_signals=False,
    )

    def stop_once_pulling_stopped() -> None:  # the pull log stops growing: backpressure
        deadline, last, still = time.monotonic() + 60, -1, 0
        while time.monotonic() < deadline and still < 10:
            n = len(log.items())
            still = still + 1 if n == last and n > 0 else 0
            last = n
            time.sleep(0.1)
        runtime.request_stop()

    stopper = threading.Thread(target=stop_once_pulling_stopped)
    stopper.start()
    summary = runtime.run([bound], opts)
    stopper.join()
    pulled = sum(int(x.split()[1]) for x in log.items() if x.startswith("pull"))
    # writer 1 + write queue 2 + processor 1 + pull queue 2 + puller 1 batches of 2 events
    assert 0 < pulled <= 14
    assert not [x for x in log.items() if x.startswith("ack")] and rows.items() == []
    assert summary.stop_reason == "hard-stop"


def test_rows_the_sink_refuses_are_dead_lettered_and_the_rest_written(runtime: Any, tmp_path: Path) -> None:

    class P(Base):
        def process(self, event: GCSFileEvent) -> Row:
            return Row(event.name, -1 if event.name == "f001.jpg" else 1)

    log, rows, dead = _recorders(tmp_path, "log", "rows", "dead")
    bound = _bound(
        P(),
        LoggedSource(tuple(events(3)), log=log),
        FileSink("rejecting", rows=rows, log=Recorder(tmp_path / "sink-log.jsonl"), reject_negative=True),
        FileSink("rejecting.dl", rows=dead, log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    summary = runtime.run([bound], RunOptions(until_idle=True, handle_signals=False))
    assert sorted(r["name"] for r in rows.items()) == ["f000.jpg", "f002.jpg"]
    (d,) = dead.items()
    assert d["object_name"] == "f001.jpg" and d["stage"] == "sink"
    assert d["reason"] == "RowRejectedError: no such field: n"
    assert summary.rows == 2 and summary.dead_letters == 1


def test_messages_the_source_cannot_decode_are_dead_lettered_without_process(
    runtime: Any, tmp_path: Path, rec: Recorder
) -> None:
    class P(Base):
        def process(self, event: GCSFileEvent) -> Row:
            rec.append(event.name)
            return Row(event.name, 0)

    log, rows, dead = _recorders(tmp_path, "log", "rows", "dead")
    bound = _bound(
        P(),
        LoggedSource(tuple(events(2)), log=log, undecodable_first=True),
        FileSink("decode", rows=rows, log=Recorder(tmp_path / "sink-log.jsonl")),
        FileSink("decode.dl", rows=dead, log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    runtime.run([bound], RunOptions(until_idle=True, handle_signals=False))
    assert rec.items() == ["f001.jpg"]
    (d,) = dead.items()
    assert d["stage"] == "decode" and d["reason"] == "ValueError: payload is not JSON"


def test_failed_event_is_retried_up_to_max_attempts_then_dead_lettered_with_every_error(
    runtime: Any, rec: Recorder
) -> None:
    class Flaky(Base):
        max_attempts = 3
        retry_backoff_ms = 1

        def process(self, event: GCSFileEvent) -> Row:
            rec.append(event.name)
            n = rec.items().count(event.name)
            if event.name == "f001.jpg" and n < 3:  # recovers on the third attempt
                raise ConnectionError(f"flaky service, attempt {n}")
            if event.name == "f002.jpg":  # never recovers
                raise TimeoutError(f"service down, attempt {n}")
            return Row(event.name, n)

    result = run_processor(Flaky(), events(3), runtime=runtime)
    assert sorted((r["name"], r["n"]) for r in result.rows) == [("f000.jpg", 1), ("f001.jpg", 3)]
    (dead,) = result.dead_letters
    assert dead["object_name"] == "f002.jpg" and dead["attempts"] == 3
    assert dead["errors"] == [f"TimeoutError: service down, attempt {i}" for i in (1, 2, 3)]
    assert dead["reason"] == "TimeoutError: service down, attempt 3"
    assert collections.Counter(rec.items()) == {"f000.jpg": 1, "f001.jpg": 3, "f002.jpg": 3}


def test_without_retries_a_failure_is_dead_lettered_after_one_attempt(runtime: Any, rec: Recorder) -> None:
    class Once(Base):
        def process(self, event: GCSFileEvent) -> Row:
            rec.append(event.name)
            raise ValueError("corrupt")

    result = run_processor(Once(), events(1), runtime=runtime)
    assert rec.items() == ["f000.jpg"]
    assert result.dead_letters[0]["attempts"] == 1 and result.dead_letters[0]["errors"] == [
        "ValueError: corrupt"
    ]


def test_prefetch_sees_each_batch_before_process_batch_and_its_failure_is_harmless(
    runtime: Any, rec: Recorder
) -> None:
    class P(Base):
        max_batch_size = 4
        max_batch_latency_ms = 0

        def prefetch(self, events: list[GCSFileEvent]) -> None:
            rec.append(["prefetch", [e.name for e in events]])
            if len(rec.items()) == 1:
                raise RuntimeError("prefetch is only an optimisation")

        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            rec.append(["process", [e.name for e in events]])
            return [Row(e.name, 0) for e in events]

    result = run_processor(P(), events(10), runtime=runtime)
    assert len(result.rows) == 10 and result.dead_letters == []
    calls = rec.items()
    prefetched = [names for kind, names in calls if kind == "prefetch"]
    processed = [names for kind, names in calls if kind == "process"]
    assert prefetched == processed  # every batch, same events, same order
    for names in processed:  # each batch was prefetched before it was processed
        assert calls.index(["prefetch", names]) < calls.index(["process", names])
