"""Edges of the in-process runtime that mutation testing (./mutation.sh) found unguarded: the
per-event retry's delay schedule and its handling of a ``process_batch`` that raises,
overwritten objects skipped rather than dead-lettered, the dead-letter record itself, the
idle test of ``until_idle`` runs, a source whose backlog query fails, and
``InProcessRuntime.request_stop`` (defaults, hard, before and after a run). Source and
sink are test doubles (tests/unit/test_runtime.py); the runtime is the real one."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from buildflow.errors import ObjectOverwrittenError
from buildflow.io import GCSFileEvent
from buildflow.io.base import Envelope, OutputRecord, RowRejection, SinkRuntime
from buildflow.runtime.base import RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.schema import TableSchema
from buildflow.testing import run_processor
from tests.unit.test_failure_paths import OPTS, _run_bounded, _Source, _with
from tests.unit.test_runtime import (
    Base,
    FileSink,
    FileSinkProvider,
    LoggedSource,
    Named,
    Row,
    _bound,
    _FileSinkRuntime,
    _LoggedSourceRuntime,
    _recorders,
    events,
)


def test_an_event_is_retried_after_doubling_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("buildflow.runtime.inprocess.time.sleep", lambda s: slept.append(s))

    class Down(Base):
        max_attempts = 4
        retry_backoff_ms = 30

        def process(self, event: GCSFileEvent) -> Row:
            raise TimeoutError("service down")

    result = run_processor(Down(), events(1))
    assert slept == [0.03, 0.06, 0.12]  # retry_backoff_ms, doubled before each next attempt
    assert result.dead_letters[0]["attempts"] == 4


def test_a_process_batch_that_raises_on_a_retry_is_retried_then_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("buildflow.runtime.inprocess.time.sleep", lambda s: None)
    calls: list[int] = []

    class Raising(Base):
        max_attempts = 3
        retry_backoff_ms = 1

        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            calls.append(len(events))
            raise ConnectionError(f"model server down, call {len(calls)}")

    result = run_processor(Raising(), events(1))
    assert result.rows == []
    (dead,) = result.dead_letters
    assert dead["errors"] == [f"ConnectionError: model server down, call {i}" for i in (1, 2, 3)]
    assert dead["attempts"] == 3 and calls == [1, 1, 1]


@pytest.mark.parametrize("chain", ["itself", "cause", "context"])
def test_an_overwritten_object_is_skipped_not_dead_lettered(chain: str) -> None:
    class Gone(Base):
        max_batch_size = 8  # the three events in one batch: the skip must not end the batch

        def process(self, event: GCSFileEvent) -> Row:
            if event.name != "f001.jpg":
                return Row(event.name, 0)
            gone = ObjectOverwrittenError("generation 1 of f001.jpg was overwritten")
            if chain == "itself":
                raise gone
            if chain == "cause":
                raise ValueError("cannot read") from gone
            try:
                raise gone
            except ObjectOverwrittenError:
                raise ValueError("cannot read")  # noqa: B904 (the overwrite is its __context__)

    result = run_processor(Gone(), events(3))
    assert sorted(r["name"] for r in result.rows) == ["f000.jpg", "f002.jpg"]
    assert result.dead_letters == []
    assert result.summary.events == 3


def test_an_exception_chain_with_a_cycle_is_dead_lettered() -> None:
    class Cyclic(Base):
        def process(self, event: GCSFileEvent) -> Row:
            a, b = ValueError("a"), RuntimeError("b")
            a.__context__, b.__context__ = b, a
            raise a

    result = _in_thread(lambda: run_processor(Cyclic(), events(1)))
    assert [d["reason"] for d in result.dead_letters] == ["ValueError: a"]


def test_an_exception_without_a_message_is_dead_lettered_with_its_repr() -> None:
    class Mute(Base):
        def process(self, event: GCSFileEvent) -> Row:
            raise ValueError()

    (dead,) = run_processor(Mute(), events(1)).dead_letters
    assert dead["reason"] == "ValueError: ValueError()"


class _IndexSink(_FileSinkRuntime):
    """Records each row's (event_id, row_index) and the failed_at of dead-letter rows."""

    async def write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        for r in records:
            self.decl.rows.append([r.event_id, r.row_index, str(r.values.get("failed_at"))])
        return []


class _IndexSinkProvider(FileSinkProvider):
    def open(self, schema: TableSchema) -> SinkRuntime:
        assert isinstance(self.declaration, FileSink)
        return _IndexSink(self.declaration)


class Rejecting(Base):
    def process(self, event: GCSFileEvent) -> Row:
        raise ValueError(f"cannot read {event.name}")


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 9 h ahead of UTC: a naive local timestamp taken for UTC would show."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("tokyo")
def test_a_dead_letter_record_is_row_0_of_its_event_stamped_in_utc(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    bound = _bound(
        Rejecting(),
        LoggedSource(tuple(events(2)), log=log),
        FileSink("r", rows=rows, log=slog),
        FileSink("r.dl"),
    )
    bound = _with(
        bound, dead_letter=_IndexSinkProvider(FileSink("r.dl", rows=dead, log=slog), bound.source.environment)
    )
    before = datetime.datetime.now(datetime.UTC)
    summary = _run_bounded(bound)
    assert summary.dead_letters == 2
    got = dead.items()
    assert sorted((event_id.split("#")[0], index) for event_id, index, _ in got) == [
        ("test-bucket/f000.jpg", 0),
        ("test-bucket/f001.jpg", 0),
    ]
    after = datetime.datetime.now(datetime.UTC)
    for *_, failed_at in got:
        when = datetime.datetime.fromisoformat(failed_at)
        assert when.utcoffset() == datetime.timedelta(0) and before <= when <= after


class _LateSource(_LoggedSourceRuntime):
    """Nothing for the first 0.4 s (each pull waits its timeout), yet not drained: the events
    are on their way. The runtime's idle check runs every 50 ms."""

    def __init__(self, decl: LoggedSource) -> None:
        super().__init__(decl)
        self.first_pull: float | None = None

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        self.first_pull = self.first_pull or time.monotonic()
        if time.monotonic() - self.first_pull < 0.4:
            await asyncio.sleep(timeout_s)
            return []
        return await super().pull(max_events, timeout_s)


def test_an_until_idle_run_waits_for_a_source_that_is_not_drained(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    decl = LoggedSource(tuple(events(3)), log=log)
    bound = _bound(
        Named(), decl, FileSink("late", rows=rows, log=slog), FileSink("late.dl", rows=dead, log=slog)
    )
    bound = _with(bound, source=_Source(_LateSource, decl, bound.source.environment))
    summary = _run_bounded(bound)
    assert sorted(r["name"] for r in rows.items()) == ["f000.jpg", "f001.jpg", "f002.jpg"]
    assert summary.events == 3 and summary.stop_reason != "error"


class _BacklogRaising(_LoggedSourceRuntime):
    async def backlog(self) -> int | None:
        raise ConnectionError("the backlog metric is unavailable")


def test_a_source_whose_backlog_query_fails_still_delivers_everything(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    decl = LoggedSource(tuple(events(3)), log=log)
    bound = _bound(Named(), decl, FileSink("bl", rows=rows, log=slog), FileSink("bl.dl", rows=dead, log=slog))
    bound = _with(bound, source=_Source(_BacklogRaising, decl, bound.source.environment))
    summary = _in_thread(lambda: InProcessRuntime().run([bound], OPTS, on_progress=lambda stats, s: None))
    assert len(rows.items()) == 3 and summary.error is None
    assert summary.processors[0].backlog is None


def _in_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "did not end within 60 s"
    return out[0]


def _stop_when(runtime: InProcessRuntime, pred: Any, **kw: Any) -> threading.Thread:
    def stopper() -> None:  # bounded poll
        deadline = time.monotonic() + 20
        while not pred() and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        runtime.request_stop(**kw)

    t = threading.Thread(target=stopper, daemon=True)
    t.start()
    return t


def test_request_stop_drains_and_reports_signal_by_default(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    bound = _bound(
        Named(), LoggedSource(tuple(events(4)), log=log), FileSink("s", rows=rows, log=slog), FileSink("s.dl")
    )
    runtime = InProcessRuntime()
    opts = RunOptions(handle_signals=False, drain_timeout_s=10)  # streaming: only a stop ends it
    stopper = _stop_when(runtime, lambda: len(rows.items()) == 4)
    summary = _in_thread(lambda: runtime.run([bound], opts))
    stopper.join(timeout=30)
    assert summary.stop_reason == "signal"
    assert [x for x in log.items() if x.startswith("ack")] != []
    runtime.request_stop()  # after the run: nothing to stop, and no error


def test_request_stop_hard_stops_now_and_says_so(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    bound = _bound(
        Named(), LoggedSource(tuple(events(4)), log=log), FileSink("h", rows=rows, log=slog), FileSink("h.dl")
    )
    runtime = InProcessRuntime()
    opts = RunOptions(handle_signals=False, drain_timeout_s=30)
    stopper = _stop_when(runtime, lambda: len(rows.items()) == 4, reason="stopped", hard=True)
    summary = _in_thread(lambda: runtime.run([bound], opts))
    stopper.join(timeout=30)
    assert summary.stop_reason == "hard-stop"


def test_a_stop_requested_before_the_run_applies_at_its_start(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    bound = _bound(
        Named(), LoggedSource(tuple(events(4)), log=log), FileSink("e", rows=rows, log=slog), FileSink("e.dl")
    )
    runtime = InProcessRuntime()
    runtime.request_stop("max-events")
    summary = _in_thread(lambda: runtime.run([bound], RunOptions(handle_signals=False, drain_timeout_s=10)))
    assert summary.stop_reason == "max-events"


# --- micro-batching and the --max-events budget, with a source that trickles ---------------


class _Trickle(_LoggedSourceRuntime):
    """Hands out at most ``PER_PULL`` events a pull; counts what it handed out."""

    PER_PULL = 1
    handed = 0

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        await asyncio.sleep(0.001)  # a real source waits on I/O: the loop runs other tasks
        got = await super().pull(min(max_events, self.PER_PULL), timeout_s)
        type(self).handed += len(got)
        return got


def _trickle(per_pull: int) -> type[_Trickle]:
    return type("Trickle", (_Trickle,), {"PER_PULL": per_pull, "handed": 0})


@pytest.mark.parametrize("per_pull", [1, 3])
def test_batches_grow_to_max_size_while_the_processor_is_busy_and_go_at_once_when_it_is_idle(
    tmp_path: Path, per_pull: int
) -> None:
    source = _trickle(per_pull)
    sizes: list[int] = []

    class Busy(Base):
        max_batch_size = 4
        max_batch_latency_ms = 800

        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            sizes.append(len(events))
            if len(sizes) == 1:  # busy on the first batch until 4 more events were pulled
                deadline = time.monotonic() + 2  # bounded poll
                while source.handed < len(events) + 4 and time.monotonic() < deadline:
                    time.sleep(0.005)
            return [Row(e.name, 0) for e in events]

    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    decl = LoggedSource(tuple(events(12)), log=log)
    bound = _bound(Busy(), decl, FileSink("b", rows=rows, log=slog), FileSink("b.dl", rows=dead, log=slog))
    bound = _with(bound, source=_Source(source, decl, bound.source.environment))
    summary = _run_bounded(bound)
    assert summary.events == 12 and len(rows.items()) == 12
    assert sizes[0] == per_pull  # the processor was idle: the first pull goes at once
    assert sizes[1] == 4  # the next batch filled up while the processor was busy
    assert max(sizes) == 4 and all(s <= 4 for s in sizes), sizes  # grown while busy, never past max


def test_max_events_counts_events_not_pulls_when_the_source_trickles(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    decl = LoggedSource(tuple(events(20)), log=log)

    class Four(Base):
        max_batch_size = 4
        max_batch_latency_ms = 50

        def process(self, event: GCSFileEvent) -> Row:
            return Row(event.name, 0)

    bound = _bound(Four(), decl, FileSink("m", rows=rows, log=slog), FileSink("m.dl", rows=dead, log=slog))
    bound = _with(bound, source=_Source(_trickle(1), decl, bound.source.environment))
    summary = _run_bounded(bound, RunOptions(max_events=5, handle_signals=False, drain_timeout_s=10))
    assert summary.stop_reason == "max-events"
    assert summary.events == 5 and len(rows.items()) == 5


def test_a_batch_of_only_undecodable_messages_is_dead_lettered_and_acked(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    decl = LoggedSource(tuple(events(1)), log=log, undecodable_first=True)
    bound = _bound(Named(), decl, FileSink("u", rows=rows, log=slog), FileSink("u.dl", rows=dead, log=slog))
    summary = _run_bounded(bound)
    assert [d["stage"] for d in dead.items()] == ["decode"] and rows.items() == []
    assert "ack 1" in log.items() and summary.dead_letters == 1


def test_a_process_batch_with_the_wrong_result_count_says_what_to_return() -> None:
    class Short(Base):
        def process_batch(self, events: list[GCSFileEvent]) -> list[Row]:
            return []

    (dead,) = run_processor(Short(), events(1)).dead_letters
    assert dead["reason"] == (
        "ProcessorDefinitionError: processor Short: process_batch returned 0 results for 1 events; "
        "return exactly one result (row, list of rows, None or Exception) per event, in order."
    )


def test_the_batch_time_histogram_holds_each_batchs_process_time(tmp_path: Path) -> None:
    """``buildflow_batch_seconds``: one observation per micro-batch, each within the run."""
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    bound = _bound(
        Named(), LoggedSource(tuple(events(6)), log=log), FileSink("t", rows=rows, log=slog), FileSink("t.dl")
    )
    started = time.monotonic()
    summary = _run_bounded(bound)
    wall_s = time.monotonic() - started
    stats = summary.processors[0]
    assert stats.batch_s.count == stats.batches > 0
    assert 0 < stats.batch_s.total <= wall_s


class _SlowHalf(Base):
    """Odd events fail; each event takes 20 ms (a model's work), so batches reach the
    writer one after another rather than all at once."""

    max_batch_size = 1

    def process(self, event: GCSFileEvent) -> Row:
        time.sleep(0.02)
        if event.size % 2:
            raise ValueError(f"cannot read {event.name}")
        return Row(event.name, 0)


def test_the_run_summary_counts_every_write_and_times_the_first_and_last(tmp_path: Path) -> None:
    log, rows, dead, slog, dlog = _recorders(tmp_path, "log", "rows", "dead", "slog", "dlog")
    bound = _bound(
        _SlowHalf(),
        LoggedSource(tuple(events(7)), log=log),  # the last event (f006) has a row
        FileSink("w", rows=rows, log=slog),
        FileSink("w.dl", rows=dead, log=dlog, failures=1),  # the first dead-letter write retried
    )
    opts = RunOptions(
        until_idle=True, idle_grace_ms=0, handle_signals=False, sink_retry_initial_ms=50, sink_retry_max_ms=50
    )
    t0, wall0 = time.monotonic(), time.time()
    summary = _run_bounded(bound, opts)
    wall_s, wall1 = time.monotonic() - t0, time.time()
    stats = summary.processors[0]
    assert len(rows.items()) == stats.rows == 4
    assert len(dead.items()) == stats.dead_letters == summary.dead_letters == 3
    assert stats.dead_letters_by_type == {"ValueError": 3}
    assert stats.sink_writes >= 2  # the counts above add up over several writes
    assert stats.first_row_s is not None and stats.last_write_s is not None
    assert 0 < stats.first_row_s < stats.last_write_s <= wall_s
    assert stats.first_row_at is not None and wall0 <= stats.first_row_at <= wall1


class _BadRejectionSink(_FileSinkRuntime):
    async def write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        return [RowRejection(len(records) + 5, "no such row")]  # a sink bug: no such index


class _BadRejectionSinkProvider(FileSinkProvider):
    def open(self, schema: TableSchema) -> SinkRuntime:
        assert isinstance(self.declaration, FileSink)
        return _BadRejectionSink(self.declaration)


def test_an_unexpected_error_in_a_stage_ends_the_run_naming_the_stage(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "slog")
    bound = _bound(Named(), LoggedSource(tuple(events(2)), log=log), FileSink("x"), FileSink("x.dl"))
    bound = _with(
        bound, sink=_BadRejectionSinkProvider(FileSink("x", rows=rows, log=slog), bound.source.environment)
    )
    summary = _run_bounded(bound)
    assert summary.stop_reason == "error"
    assert summary.error == "Named-write failed: IndexError: list index out of range"
    assert not [x for x in log.items() if x.startswith("ack")]  # nothing acked
