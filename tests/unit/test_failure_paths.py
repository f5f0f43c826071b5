"""Failure paths of the delivery promises (README "Guarantees"), at the runtime's level,
with test doubles of the code on the other side (source and sink runtimes): a dead-letter
sink that fails for a while, the retry delay schedule, and stages that raise.

Each test here fails when the promise it names is broken (issue 22 lists the breaks)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from buildflow.io import GCSFileEvent
from buildflow.io.base import Envelope, SourceRuntime
from buildflow.runtime.base import RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.runtime.retry import Backoff
from buildflow.schema import TableSchema
from tests.unit.test_runtime import (
    Base,
    FileSink,
    FileSinkProvider,
    LoggedSource,
    LoggedSourceProvider,
    Named,
    Recorder,
    Row,
    _bound,
    _FileSinkRuntime,
    _LoggedSourceRuntime,
    _recorders,
    events,
)

OPTS = RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False, drain_timeout_s=10)


class Rejecting(Base):
    max_batch_size = 10

    def process(self, event: GCSFileEvent) -> Row:
        raise ValueError(f"cannot read {event.name}")


class Sleeps:
    """A ``retry_sleep`` that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


# --- 1. the dead-letter write is retried, and the event acked only after it -------------


def test_a_failing_dead_letter_sink_is_retried_and_the_event_acked_only_after_its_record(
    tmp_path: Path,
) -> None:
    """The dead-letter table is briefly unavailable: the record is written once it is
    back, and only then is the event acked; nothing is acked while it fails."""
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "sink-log")
    bound = _bound(
        Rejecting(),
        LoggedSource(tuple(events(2)), log=log),
        FileSink("dl-flaky", rows=rows, log=Recorder(tmp_path / "sink-log.jsonl")),
        FileSink("dl-flaky.dl", rows=dead, log=log, failures=3),
    )
    sleeps = Sleeps()
    summary = InProcessRuntime(retry_sleep=sleeps).run([bound], OPTS)
    assert log.items() == ["pull 2", "fail", "fail", "fail", "write 2", "ack 2"]
    assert sorted(d["object_name"] for d in dead.items()) == ["f000.jpg", "f001.jpg"]
    assert {d["reason"] for d in dead.items()} == {
        "ValueError: cannot read f000.jpg",
        "ValueError: cannot read f001.jpg",
    }
    assert len(sleeps.delays) == 3 and summary.processors[0].sink_retries == 3
    assert summary.stop_reason == "until-idle" and summary.error is None
    assert summary.dead_letters == 2 and rows.items() == []


def test_a_dead_letter_sink_that_never_recovers_acks_nothing(tmp_path: Path) -> None:
    """With the dead-letter table down for good, a stop drains nothing: the run stops hard
    at the drain deadline, and the event stays unacked (delivered again next run)."""
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "sink-log")
    bound = _bound(
        Rejecting(),
        LoggedSource(tuple(events(1)), log=log),
        FileSink("dl-down", rows=rows, log=Recorder(tmp_path / "sink-log.jsonl")),
        FileSink("dl-down.dl", rows=dead, log=log, failures=10**9),
    )
    runtime = InProcessRuntime()
    opts = RunOptions(handle_signals=False, drain_timeout_s=0.2, sink_retry_initial_ms=1, sink_retry_max_ms=2)

    never = threading.Event()

    def stop_after_failures() -> None:  # bounded poll: three failed attempts, or 10 s
        deadline = time.monotonic() + 10
        while log.items().count("fail") < 3 and time.monotonic() < deadline:
            never.wait(0.01)
        runtime.request_stop()

    stopper = threading.Thread(target=stop_after_failures, daemon=True)
    stopper.start()
    summary = runtime.run([bound], opts)
    stopper.join(timeout=30)
    assert log.items().count("fail") >= 3, log.items()
    assert "ack 1" not in log.items() and dead.items() == []
    assert summary.stop_reason == "hard-stop"


# --- 4. the retry delay schedule: capped exponential, full jitter ----------------------


def test_sink_retries_wait_capped_exponential_delays_with_full_jitter(tmp_path: Path) -> None:
    """README "Guarantees": exponential backoff from 100 ms capped at 5 s, full jitter.
    Ten failures, a seeded jitter: the delays are exactly uniform(0, ceiling) draws for the
    ceilings 100, 200, ..., 3200, then 5000 ms."""
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "sink-log")
    bound = _bound(
        Named(),
        LoggedSource(tuple(events(1)), log=log),
        FileSink("backoff", rows=rows, log=log, failures=10),
        FileSink("backoff.dl", rows=dead, log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    sleeps = Sleeps()
    summary = InProcessRuntime(retry_rng=random.Random(22), retry_sleep=sleeps).run([bound], OPTS)
    assert RunOptions().sink_retry_initial_ms == 100 and RunOptions().sink_retry_max_ms == 5000
    ceilings_ms = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
    draws = random.Random(22)
    assert sleeps.delays == [draws.uniform(0, c) / 1000 for c in ceilings_ms]
    assert log.items() == ["pull 1", *["fail"] * 10, "write 1", "ack 1"]
    assert summary.processors[0].sink_retries == 10


def test_backoff_ceilings_double_to_the_cap_and_draws_cover_the_whole_range() -> None:
    """Unseeded: every delay lies in [0, ceiling]; with full jitter the draws spread over
    the whole range (not a fixed delay, not only the upper half as "equal jitter")."""
    b = Backoff(100, 5000)
    ceilings = []
    for _ in range(12):
        ceilings.append(b.ceiling_ms)
        assert 0 <= b.next_delay_s() * 1000 <= ceilings[-1]
    assert ceilings == [100, 200, 400, 800, 1600, 3200, *[5000] * 6]
    capped = Backoff(100, 100, random.Random(1))
    draws = [capped.next_delay_s() for _ in range(400)]
    assert max(draws) <= 0.1 and min(draws) < 0.01 and max(draws) > 0.09 and len(set(draws)) > 390
    with pytest.raises(ValueError, match="initial_ms=0"):
        Backoff(0, 100)


# --- 5. a stage that raises ends the run with stop_reason "error" ----------------------


class _AckRaising(_LoggedSourceRuntime):
    async def ack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        raise RuntimeError("ack rejected: the subscription was deleted")


class _PullRaising(_LoggedSourceRuntime):
    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        raise PermissionError("403 caller may not read the subscription")


class _CloseRaisingSink(_FileSinkRuntime):
    async def close(self) -> None:
        raise OSError("flush on close failed: disk full")


class _Source(LoggedSourceProvider):
    def __init__(self, cls: type[_LoggedSourceRuntime], decl: LoggedSource, env: Any) -> None:
        super().__init__(decl, env)
        self.cls = cls

    def open(self, consumer: str) -> SourceRuntime[Any]:
        assert isinstance(self.declaration, LoggedSource)
        return self.cls(self.declaration)


class _Sink(FileSinkProvider):
    def open(self, schema: TableSchema) -> Any:
        assert isinstance(self.declaration, FileSink)
        return _CloseRaisingSink(self.declaration)


def _run_bounded(bound: Any, opts: RunOptions = OPTS) -> Any:
    """Run in a thread and fail, rather than hang, if the run does not end within 60 s."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(InProcessRuntime().run([bound], opts)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the run did not end within 60 s"
    return out[0]


def _with(bound: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(bound, **changes)


@pytest.mark.parametrize("until_idle", [True, False])
def test_a_source_whose_ack_raises_ends_the_run_with_an_error(tmp_path: Path, until_idle: bool) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "sink-log")
    decl = LoggedSource(tuple(events(3)), log=log)
    bound = _bound(
        Named(), decl, FileSink("ack", rows=rows, log=slog), FileSink("ack.dl", rows=dead, log=slog)
    )
    bound = _with(bound, source=_Source(_AckRaising, decl, bound.source.environment))
    summary = _run_bounded(bound, RunOptions(until_idle=until_idle, idle_grace_ms=0, handle_signals=False))
    assert summary.stop_reason == "error"
    assert summary.error.startswith(
        "processor Named: acking 2 events on GCSFileStream(bucket='photos') failed: "
    )
    assert "RuntimeError: ack rejected: the subscription was deleted" in summary.error
    assert summary.error.endswith(
        "their rows are written, so the redelivery on the next run is skipped by the sink's "
        "(event id, row index) key"
    )
    assert len(rows.items()) >= 2  # written before the ack that failed


def test_a_pull_that_raises_a_non_transient_error_ends_the_run_with_an_error(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "sink-log")
    decl = LoggedSource(tuple(events(3)), log=log)
    bound = _bound(
        Named(), decl, FileSink("pull", rows=rows, log=slog), FileSink("pull.dl", rows=dead, log=slog)
    )
    bound = _with(bound, source=_Source(_PullRaising, decl, bound.source.environment))
    summary = _run_bounded(bound, RunOptions(handle_signals=False))  # no until_idle: only the error ends it
    assert summary.stop_reason == "error"
    assert summary.error == (
        "processor Named: pulling from GCSFileStream(bucket='photos') failed: "
        "PermissionError: 403 caller may not read the subscription; "
        "the events not acked are delivered again on the next run"
    )
    assert rows.items() == [] and summary.processors[0].teardown_calls == 1


def test_a_sink_whose_close_raises_ends_the_run_with_an_error(tmp_path: Path) -> None:
    log, rows, dead, slog = _recorders(tmp_path, "log", "rows", "dead", "sink-log")
    sink = FileSink("close", rows=rows, log=slog)
    bound = _bound(
        Named(), LoggedSource(tuple(events(3)), log=log), sink, FileSink("close.dl", rows=dead, log=slog)
    )
    bound = _with(bound, sink=_Sink(sink, bound.sink.environment))
    summary = _run_bounded(bound)
    assert summary.stop_reason == "error"
    assert (
        summary.error == "processor Named: closing its sink failed: OSError: flush on close failed: disk full"
    )
    assert len(rows.items()) == 3 and log.items()[-1].startswith("ack")  # the work itself was done


def test_a_teardown_that_raises_ends_the_run_with_an_error() -> None:
    from buildflow.testing import run_processor

    class P(Named):
        def teardown(self) -> None:
            raise RuntimeError("could not release the GPU")

    result = run_processor(P(), events(2))
    assert result.summary.stop_reason == "error" and len(result.rows) == 2
    assert result.summary.error == "processor P: teardown() failed: RuntimeError: could not release the GPU"
