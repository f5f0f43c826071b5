"""The in-process runtime: the reference semantics of buildflow.

One asyncio event loop runs, per processor, a three-stage pipeline joined by bounded
queues (backpressure: the source is never pulled more than ``max_inflight_batches``
micro-batches ahead of the sink):

    pull + micro-batch  ->  process (worker thread)  ->  write rows + dead letters, then ack

* ``setup``/``process``/``teardown`` run on one dedicated worker thread per processor,
  so decoding and inference never block the loop, and the model is loaded once.
* Events are acked only after their rows (or their dead-letter records) are written:
  at-least-once delivery; sinks de-duplicate on ``(event_id, row_index)``.
* An exception for one event dead-letters that event alone. If ``process_batch``
  raises, the batch is retried one event at a time to isolate the bad ones.
* Sink writes are retried with capped exponential backoff and full jitter; events stay
  unacked meanwhile, and the bounded queues stop the source from running ahead.
* The first SIGINT/SIGTERM drains (stop pulling, finish in-flight batches, flush, ack,
  teardown); a second one, or the drain deadline, stops at once without acking what is
  unfinished (it is redelivered next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import random
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from buildflow.errors import (
    BuildflowError,
    ObjectOverwrittenError,
    PipelineStageError,
    ProcessorDefinitionError,
    ResourceGoneError,
    RowRejectedError,
    RowValidationError,
)
from buildflow.io.base import (
    DeadLetterRow,
    Envelope,
    EventOutcome,
    OutputRecord,
    RowRejection,
    SinkRuntime,
    SourceRuntime,
)
from buildflow.metrics import Metrics
from buildflow.processor import Processor
from buildflow.runtime.base import (
    BoundProcessor,
    ProcessorStats,
    RunOptions,
    RunSummary,
    Runtime,
    StopReason,
)
from buildflow.runtime.readahead import BlobReadAhead
from buildflow.runtime.retry import Backoff
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import TableSchema, row_to_record, schema_from_dataclass

__all__ = ["InProcessRuntime"]

log = logging.getLogger("buildflow.runtime")

_DONE = object()
_MAX_COALESCED_ROWS = 4096  # one sink write carries at most about this many rows


def _peak_rss_mb() -> float:
    """Peak resident set of this process, MB. Linux: ``VmHWM`` of /proc/self/status (the
    peak of this program's own memory: ``ru_maxrss`` survives ``exec`` and so reports the
    parent's size for a runner started from a big process such as pytest); elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


#: Seconds a sink write is retried while the sink says its table does not exist, before the
#: run stops with :class:`ResourceGoneError`.
GONE_GRACE_S = 10.0


def _overwritten(e: BaseException) -> bool:
    """``e`` is, or was caused by, an :class:`ObjectOverwrittenError`."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ObjectOverwrittenError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


class _Budget:
    """The ``--max-events`` budget shared by every processor of a run."""

    def __init__(self, limit: int | None) -> None:
        self.remaining = limit

    def take(self, n: int) -> int:
        if self.remaining is None:
            return n
        got = min(n, self.remaining)
        self.remaining -= got
        return got


class _BatchResult:
    __slots__ = ("envelopes", "records", "dead")

    def __init__(
        self, envelopes: list[Envelope[Any]], records: list[OutputRecord], dead: list[OutputRecord]
    ) -> None:
        self.envelopes = envelopes
        self.records = records
        self.dead = dead


def _outcomes(result: _BatchResult) -> list[EventOutcome]:
    """Each event's written rows (in ``row_index`` order) or dead-letter record."""
    rows: dict[str, list[OutputRecord]] = {}
    for r in result.records:
        rows.setdefault(r.event_id, []).append(r)
    dead = {d.event_id: d.values for d in result.dead}
    return [
        EventOutcome(
            e.event_id,
            [r.values for r in sorted(rows.get(e.event_id, []), key=lambda r: r.row_index)],
            dead.get(e.event_id),
        )
        for e in result.envelopes
    ]


class _Worker:
    """One processor's pipeline."""

    def __init__(self, bound: BoundProcessor, options: RunOptions, run: _Run) -> None:
        self.bound = bound
        self.rng = run.rng
        self.sleep = run.sleep
        self.spec = bound.spec
        self.options = options
        self.run = run
        self.stats = ProcessorStats(name=bound.name)
        self.metrics = Metrics()
        self.thread = BlockingWorker(f"buildflow-{bound.name}")
        self.pull_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=options.max_inflight_batches)
        self.write_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=options.max_inflight_batches)
        self.inflight = 0  # batches pulled and not yet acked
        self.processing = False  # the worker thread is in process_batch()
        self.source: SourceRuntime[Any] | None = None
        self.sink: SinkRuntime | None = None
        self.dl_sink: SinkRuntime | None = None
        self.dl_schema: TableSchema = schema_from_dataclass(DeadLetterRow)
        self.source_label = self.spec.source.describe()
        self.set_up = False
        processor = self.spec.processor
        self.read_ahead: BlobReadAhead | None = None
        if processor.read_ahead_requests > 0 and processor.read_ahead_bytes > 0:
            self.read_ahead = BlobReadAhead(
                max_requests=processor.read_ahead_requests, max_bytes=processor.read_ahead_bytes
            )

    # -- lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        processor = self.spec.processor
        processor.__dict__["_buildflow_metrics"] = self.metrics
        self.source = self.bound.source.open(self.spec.name)
        self.sink = self.bound.sink.open(self.spec.schema)
        self.dl_sink = self.bound.dead_letter.open(self.dl_schema)
        t0 = time.monotonic()
        await self.thread.run(processor.setup)
        self.set_up = True
        self.stats.setup_calls += 1
        self.stats.setup_s = time.monotonic() - t0
        log.info("processor %s ready: setup() took %.2f s", self.spec.name, self.stats.setup_s)

    async def close(self) -> list[str]:
        """``teardown``, then close the source, the sink and the dead-letter sink; each is
        tried whatever the others did. Returns a message per failure (the run's error)."""
        failures: list[str] = []
        if self.set_up:
            try:
                await self.thread.run(self.spec.processor.teardown)
            except Exception as e:
                failures.append(f"processor {self.spec.name}: teardown() failed: {_reason(e)}")
                log.exception("%s", failures[-1])
            self.stats.teardown_calls += 1
        self.thread.stop()
        if self.read_ahead is not None:
            self.read_ahead.close()
            self.stats.read_ahead = self.read_ahead.stats.as_dict()
        for what, handle in (
            ("source", self.source),
            ("sink", self.sink),
            ("dead-letter sink", self.dl_sink),
        ):
            if handle is not None:
                try:
                    await handle.close()
                except Exception as e:
                    failures.append(f"processor {self.spec.name}: closing its {what} failed: {_reason(e)}")
                    log.error("%s", failures[-1], exc_info=not isinstance(e, BuildflowError))
        return failures

    # -- stage 1: pull and form micro-batches ------------------------------------
    async def pull_loop(self) -> None:
        assert self.source is not None
        size, latency_s = self.spec.max_batch_size, self.spec.max_batch_latency_ms / 1000
        try:
            while not self.run.stopping.is_set():
                batch: list[Envelope[Any]] = []
                first_at: float | None = None
                while len(batch) < size and not self.run.stopping.is_set():
                    if first_at is None:
                        timeout = 0.1  # idle poll: notice a stop promptly
                    else:
                        timeout = first_at + latency_s - time.monotonic()
                        if timeout <= 0:
                            break
                    want = self.run.budget.take(size - len(batch))
                    if want == 0:
                        self.run.request_stop("max-events")
                        break
                    t_pull = time.monotonic()
                    try:
                        got = await self.source.pull(want, timeout)
                    except ResourceGoneError:  # one line of its own (destroy under a run)
                        raise
                    except Exception as e:  # a source retries what is transient itself
                        raise PipelineStageError(
                            f"processor {self.spec.name}: pulling from {self.source_label} failed: "
                            f"{_reason(e)}; the events not acked are delivered again on the next run"
                        ) from e
                    if got:  # time spent in pulls that returned events (idle polls are not work)
                        self.stats.stage_s["pull"] += time.monotonic() - t_pull
                    if len(got) < want and self.run.budget.remaining is not None:
                        self.run.budget.remaining += want - len(got)
                    if got:
                        batch.extend(got)
                        first_at = first_at or time.monotonic()
                        if self.pull_q.empty() and not self.processing:
                            # Nothing to wait for: the processor is idle, so the events
                            # there now go at once. Batches grow while it is busy.
                            break
                if batch:
                    self.stats.events += len(batch)
                    self.inflight += 1
                    if self.read_ahead is not None:  # payload downloads start now, many at once
                        self.read_ahead.start(e.event for e in batch if e.error is None)
                    self._prefetch(batch)
                    await self.pull_q.put(batch)
        finally:
            await self._put_done(self.pull_q)

    def _prefetch(self, batch: list[Envelope[Any]]) -> None:
        """Let the processor start on a batch early (see ``Processor.prefetch``)."""
        processor = self.spec.processor
        if type(processor).prefetch is Processor.prefetch:
            return
        try:
            processor.prefetch([e.event for e in batch if e.error is None])
        except Exception:  # an optimisation only: process_batch does the work anyway
            log.exception("processor %s: prefetch() failed; continuing without it", self.spec.name)

    # -- stage 2: process on the worker thread -----------------------------------
    async def process_loop(self) -> None:
        try:
            while True:
                batch = await self.pull_q.get()
                if batch is _DONE:
                    return
                self.processing = True
                t0 = time.monotonic()
                try:
                    result = await self.thread.run(functools.partial(self._process_sync, batch))
                finally:
                    self.processing = False
                    if self.read_ahead is not None:
                        self.read_ahead.release(e.event for e in batch)
                self.stats.batch_s.observe(time.monotonic() - t0)
                self.stats.stage_s["process"] += time.monotonic() - t0
                await self.write_q.put(result)
        finally:
            await self._put_done(self.write_q)

    async def _put_done(self, q: asyncio.Queue[Any]) -> None:
        if self.run.hard.is_set():  # cancelled: never block in a finally
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(_DONE)
        else:
            await q.put(_DONE)

    def _call_batch(self, events: list[Any]) -> list[Any]:
        results = list(self.spec.processor.process_batch(events))
        if len(results) != len(events):
            raise ProcessorDefinitionError(
                f"processor {self.spec.name}: process_batch returned {len(results)} results "
                f"for {len(events)} events; return exactly one result (row, list of rows, "
                "None or Exception) per event, in order."
            )
        return results

    def _process_sync(self, all_envelopes: list[Envelope[Any]]) -> _BatchResult:
        undecodable = [e for e in all_envelopes if e.error is not None]
        envelopes = [e for e in all_envelopes if e.error is None]
        dead: list[OutputRecord] = [
            self._dead_letter(e, e.error, "decode") for e in undecodable if e.error is not None
        ]
        if not envelopes:
            return _BatchResult(all_envelopes, [], dead)
        events = [e.event for e in envelopes]
        try:
            results = self._call_batch(events)
        except Exception as batch_error:
            if len(events) == 1:
                results = [batch_error]
            else:  # isolate the bad event(s): the good ones still get their rows
                log.debug(
                    "processor %s: batch failed (%s); retrying one at a time",
                    self.spec.name,
                    _reason(batch_error),
                )
                results = []
                for ev in events:
                    try:
                        results.append(self._call_batch([ev])[0])
                    except Exception as e:
                        results.append(e)
        records: list[OutputRecord] = []
        for env, res in zip(envelopes, results):
            if isinstance(res, BaseException) and _overwritten(res):
                log.info("processor %s: skipped %s: %s", self.spec.name, env.object_name or env.event_id, res)
                continue  # a newer generation raised its own event: nothing to dead-letter
            if isinstance(res, BaseException):
                res, errors = self._retry(env, res)
                if isinstance(res, BaseException):
                    dead.append(self._dead_letter(env, res, "process", errors))
                    continue
            rows = [] if res is None else list(res) if isinstance(res, (list, tuple)) else [res]
            try:
                converted = [
                    OutputRecord(env.event_id, i, row_to_record(r, self.spec.schema))
                    for i, r in enumerate(rows)
                ]
            except RowValidationError as e:
                dead.append(self._dead_letter(env, e, "validate"))
                continue
            records.extend(converted)
        return _BatchResult(all_envelopes, records, dead)

    def _retry(self, env: Envelope[Any], first: BaseException) -> tuple[Any, list[str]]:
        """Try a failed event again, up to ``max_attempts`` in all, with doubling backoff.

        Returns its result (or the last exception) and the reasons of the failed attempts.
        """
        processor = self.spec.processor
        errors = [_reason(first)]
        result: Any = first
        delay_s = processor.retry_backoff_ms / 1000
        while len(errors) < processor.max_attempts:
            time.sleep(delay_s)  # on the worker thread, never the loop
            delay_s *= 2
            try:
                out = self._call_batch([env.event])[0]
            except Exception as e:
                out = e
            if not isinstance(out, BaseException):
                return out, errors
            result = out
            errors.append(_reason(out))
        return result, errors

    def _dead_letter(
        self, env: Envelope[Any], exc: BaseException, stage: str, errors: list[str] | None = None
    ) -> OutputRecord:
        reason = _reason(exc)
        errors = errors or [reason]
        log.warning(
            "processor %s: dead-lettered %s: %s", self.spec.name, env.object_name or env.event_id, reason
        )
        row = DeadLetterRow(
            event_id=env.event_id,
            processor=self.spec.name,
            source=self.source_label,
            object_name=env.object_name,
            reason=reason,
            error_type=type(exc).__name__,
            stage=stage,
            attempts=env.attempt - 1 + len(errors),
            failed_at=datetime.datetime.now(datetime.UTC),
            errors=errors,
        )
        return OutputRecord(env.event_id, 0, row_to_record(row, self.dl_schema))

    # -- stage 3: write, then ack ------------------------------------------------
    async def write_loop(self) -> None:
        assert self.source is not None and self.sink is not None and self.dl_sink is not None
        done = False
        while not done:
            item = await self.write_q.get()
            if item is _DONE:
                return
            result: _BatchResult = item
            merged = 1
            # Coalesce micro-batches that are already waiting (the sink was slower than the
            # model): one write instead of several, so a slow sink (a DuckDB file open, a
            # BigQuery MERGE job) costs once per write, not once per batch.
            while not self.write_q.empty() and len(result.records) < _MAX_COALESCED_ROWS:
                more = self.write_q.get_nowait()
                if more is _DONE:
                    done = True
                    break
                result = _BatchResult(
                    result.envelopes + more.envelopes, result.records + more.records, result.dead + more.dead
                )
                merged += 1
            t_write = time.monotonic()
            if result.records:
                rejected = await self._write_with_retry(self.sink, result.records, "sink")
                if rejected:
                    self._reject(result, rejected)
            if result.dead:
                refused = await self._write_with_retry(self.dl_sink, result.dead, "dead-letter")
                for r in refused or ():
                    log.error(
                        "processor %s: the dead-letter sink refused the record of %s (%s); "
                        "the event is acked and its failure is only in this log",
                        self.spec.name,
                        result.dead[r.index].event_id,
                        r.reason,
                    )
            if getattr(self.source, "wants_outcomes", False):
                await self.source.settle(_outcomes(result))
            t_ack = time.monotonic()
            self.stats.stage_s["write"] += t_ack - t_write
            try:
                await self.source.ack(result.envelopes)
            except ResourceGoneError:
                raise
            except Exception as e:
                raise PipelineStageError(
                    f"processor {self.spec.name}: acking {len(result.envelopes)} events on "
                    f"{self.source_label} failed: {_reason(e)}; their rows are written, so the "
                    "redelivery on the next run is skipped by the sink's (event id, row index) key"
                ) from e
            self.inflight -= merged
            now = time.monotonic()
            self.stats.stage_s["ack"] += now - t_ack
            wall = datetime.datetime.now(datetime.UTC)
            self.stats.batches += merged
            self.stats.sink_writes += 1
            self.stats.rows += len(result.records)
            self.stats.dead_letters += len(result.dead)
            self.stats.last_write_s = now - self.run.started
            if result.records and self.stats.first_row_s is None:
                self.stats.first_row_s = now - self.run.started
                self.stats.first_row_at = time.time()
            for env in result.envelopes:
                latency_s = (wall - env.received_at).total_seconds()
                self.stats.latencies_ms.append(latency_s * 1000)
                self.stats.latency_s.observe(latency_s)
            for d in result.dead:
                kind = str(d.values.get("error_type") or "Exception")
                self.stats.dead_letters_by_type[kind] = self.stats.dead_letters_by_type.get(kind, 0) + 1

    def _reject(self, result: _BatchResult, rejected: Sequence[RowRejection]) -> None:
        """Dead-letter the events whose rows the sink refused for good."""
        by_event: dict[str, str] = {}
        for r in rejected:
            by_event.setdefault(result.records[r.index].event_id, r.reason)
        envs = {e.event_id: e for e in result.envelopes}
        result.records = [r for r in result.records if r.event_id not in by_event]
        for event_id, reason in by_event.items():
            result.dead.append(self._dead_letter(envs[event_id], RowRejectedError(reason), "sink"))

    async def _write_with_retry(
        self, sink: SinkRuntime, records: list[OutputRecord], what: str
    ) -> Sequence[RowRejection] | None:
        backoff: Backoff | None = None
        attempt = 1
        gone_since: float | None = None
        while True:
            try:
                return await sink.write(records)
            except ResourceGoneError as e:
                # BigQuery may answer NotFound for a moment after a table is created: retried
                # for GONE_GRACE_S, then the run stops (the table was deleted under it).
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since >= GONE_GRACE_S:
                    raise
                err: Exception = e
            except BuildflowError as e:
                err = e
            except Exception as e:
                err = e
            self.stats.sink_retries += 1
            if backoff is None:
                backoff = Backoff(
                    self.options.sink_retry_initial_ms, self.options.sink_retry_max_ms, self.rng
                )
            log.warning(
                "processor %s: %s write of %d rows failed (attempt %d), retrying in <= %d ms: %s",
                self.spec.name,
                what,
                len(records),
                attempt,
                backoff.ceiling_ms,
                _reason(err),
            )
            await self.sleep(backoff.next_delay_s())
            attempt += 1

    async def is_idle(self) -> bool:
        assert self.source is not None
        return (
            self.inflight == 0
            and self.pull_q.empty()
            and self.write_q.empty()
            and await self.source.is_drained()
        )

    async def refresh_backlog(self) -> None:
        assert self.source is not None
        with contextlib.suppress(Exception):
            self.stats.backlog = await self.source.backlog()
        self.stats.metrics = self.metrics.snapshot()


class _Run:
    def __init__(
        self,
        options: RunOptions,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.options = options
        self.rng = rng
        self.sleep = sleep
        self.stopping = asyncio.Event()
        self.stop_reason: StopReason = "stopped"
        self.budget = _Budget(options.max_events)
        self.started = time.monotonic()
        self.hard = asyncio.Event()
        self.signals = 0

    def request_stop(self, reason: StopReason) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.stopping.set()

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning(
                "received %s: draining in-flight events (press Ctrl-C again to stop now)",
                signal.Signals(signum).name,
            )
            self.request_stop("signal")
        else:
            log.warning(
                "received %s again: stopping now; unfinished events will be redelivered",
                signal.Signals(signum).name,
            )
            self.stop_reason = "hard-stop"
            self.hard.set()


class InProcessRuntime(Runtime):
    """Runs every processor of an app in this process, on one asyncio event loop.

    Args:
        retry_rng: The jitter of sink-write retries (:class:`~buildflow.runtime.retry.Backoff`);
            a seeded ``random.Random`` makes the delay schedule reproducible. Default: the
            ``random`` module's generator.
        retry_sleep: Awaited with each retry delay (seconds). Default ``asyncio.sleep``;
            tests pass one that records the schedule.
    """

    def __init__(
        self,
        *,
        retry_rng: random.Random | None = None,
        retry_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._retry_rng = retry_rng
        self._retry_sleep = retry_sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active: _Run | None = None
        self._early_stop: StopReason | None = None

    def run(
        self,
        processors: Sequence[BoundProcessor],
        options: RunOptions,
        on_progress: Callable[[list[ProcessorStats], float], None] | None = None,
    ) -> RunSummary:
        return asyncio.run(self._run(processors, options, on_progress))

    def request_stop(self, reason: StopReason = "signal", *, hard: bool = False) -> None:
        """Ask the run in progress to drain and stop, as a first SIGTERM would (``hard``:
        as a second one: stop now, unfinished events are redelivered). Thread-safe: for a
        supervisor, e.g. a Ray replica asked to stop. Before the run starts, the request
        is kept and applied at its start."""

        def apply() -> None:
            run = self._active
            if run is None:
                return
            run.request_stop(reason)
            if hard:
                run.stop_reason = "hard-stop"
                run.hard.set()

        loop = self._loop
        if loop is None or self._active is None:
            self._early_stop = reason
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
            loop.call_soon_threadsafe(apply)

    async def _run(
        self,
        processors: Sequence[BoundProcessor],
        options: RunOptions,
        on_progress: Callable[[list[ProcessorStats], float], None] | None,
    ) -> RunSummary:
        loop = asyncio.get_running_loop()
        run = _Run(options, self._retry_rng, self._retry_sleep)
        self._loop, self._active = loop, run
        if self._early_stop is not None:
            run.request_stop(self._early_stop)
        workers = [_Worker(b, options, run) for b in processors]
        installed: list[int] = []
        if options.handle_signals:
            for sig in (signal.SIGINT.value, signal.SIGTERM.value):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, run.on_signal, sig)
                    installed.append(sig)
        lag = [0.0]
        error: str | None = None
        try:
            try:
                for w in workers:
                    await w.open()
            except Exception as e:
                error = f"starting processor failed: {_reason(e)}"
                log.error("%s", error, exc_info=not isinstance(e, BuildflowError))
                run.stop_reason = "error"
                return self._summary(workers, run, lag[0], error)
            run.started = time.monotonic()
            pipeline = [
                asyncio.create_task(coro, name=f"{w.bound.name}-{stage}")
                for w in workers
                for stage, coro in (
                    ("pull", w.pull_loop()),
                    ("process", w.process_loop()),
                    ("write", w.write_loop()),
                )
            ]
            monitor = asyncio.create_task(self._monitor(workers, run, lag, on_progress))
            error = await self._supervise(pipeline, run)
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            if on_progress is not None:
                await asyncio.gather(*(w.refresh_backlog() for w in workers))
                on_progress([w.stats for w in workers], time.monotonic() - run.started)
        finally:
            close_errors: list[str] = []
            for w in workers:
                if run.hard.is_set():  # the worker thread may be stuck in user code
                    try:
                        close_errors += await asyncio.wait_for(w.close(), timeout=5)
                    except TimeoutError:
                        log.warning("processor %s: teardown/close did not finish within 5 s", w.bound.name)
                else:
                    close_errors += await w.close()
            for sig in installed:
                loop.remove_signal_handler(sig)
            if close_errors:
                error = "; ".join([*([error] if error else []), *close_errors])
        if error:
            run.stop_reason = "error"
        return self._summary(workers, run, lag[0], error)

    async def _supervise(self, pipeline: list[asyncio.Task[None]], run: _Run) -> str | None:
        """Wait for the pipeline to finish; enforce the drain deadline and hard stops."""
        hard = asyncio.create_task(run.hard.wait())
        stopping = asyncio.create_task(run.stopping.wait())
        pending: set[asyncio.Task[Any]] = set(pipeline)
        error: str | None = None
        deadline: float | None = None
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait(
                    pending | {hard, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for t in done & pending:
                    pending.discard(t)
                    if not t.cancelled() and t.exception() is not None:
                        exc = t.exception()
                        assert exc is not None
                        if isinstance(exc, ResourceGoneError):  # one line, in the summary
                            error = str(exc)
                            log.debug("%s", error, exc_info=exc)
                        elif isinstance(exc, PipelineStageError):  # names the processor and the stage
                            error = str(exc)
                            log.error("%s", error, exc_info=exc)
                        else:
                            error = f"{t.get_name()} failed: {_reason(exc)}"
                            log.error("%s", error, exc_info=None if isinstance(exc, BuildflowError) else exc)
                        run.request_stop("error")
                        run.hard.set()
                if stopping in done and deadline is None:
                    deadline = time.monotonic() + run.options.drain_timeout_s
                    stopping = asyncio.create_task(asyncio.Event().wait())
                if hard in done or (deadline is not None and time.monotonic() >= deadline and pending):
                    if not hard.done():
                        log.error(
                            "drain did not finish within %.1f s; stopping now", run.options.drain_timeout_s
                        )
                    if run.stop_reason != "error":
                        run.stop_reason = "hard-stop"
                    run.hard.set()
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    pending.clear()
        finally:
            hard.cancel()
            stopping.cancel()
        return error

    async def _monitor(
        self,
        workers: list[_Worker],
        run: _Run,
        lag: list[float],
        on_progress: Callable[[list[ProcessorStats], float], None] | None,
    ) -> None:
        tick = 0.05
        idle_since: float | None = None
        last_progress = 0.0
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick)
            now = time.monotonic()
            lag[0] = max(lag[0], (now - before - tick) * 1000)
            if run.options.until_idle and not run.stopping.is_set():
                idle = all([await w.is_idle() for w in workers])
                if not idle:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif (now - idle_since) * 1000 >= run.options.idle_grace_ms:
                    run.request_stop("until-idle")
            if on_progress is not None and now - last_progress >= run.options.progress_interval_s:
                last_progress = now
                for w in workers:
                    await w.refresh_backlog()
                on_progress([w.stats for w in workers], now - run.started)

    @staticmethod
    def _summary(workers: list[_Worker], run: _Run, lag: float, error: str | None) -> RunSummary:
        for w in workers:
            w.stats.metrics = w.metrics.snapshot()
        return RunSummary(
            processors=[w.stats for w in workers],
            elapsed_s=time.monotonic() - run.started,
            stop_reason="error" if error else run.stop_reason,
            peak_rss_mb=_peak_rss_mb(),
            loop_lag_max_ms=lag,
            error=error,
        )
