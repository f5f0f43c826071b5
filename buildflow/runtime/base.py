"""The runtime interface: what runs bound processors, in-process or on a cluster."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

from buildflow.io.base import SinkProvider, SourceProvider
from buildflow.metrics import BucketCounts
from buildflow.processor import ProcessorSpec
from buildflow.provisioning import Resource

__all__ = [
    "BoundProcessor",
    "RunOptions",
    "ProcessorStats",
    "RunSummary",
    "Runtime",
    "StopReason",
]

StopReason = Literal["until-idle", "max-events", "signal", "error", "hard-stop", "stopped"]


@dataclasses.dataclass(frozen=True)
class BoundProcessor:
    """A processor with its source, sink and dead-letter destination bound to an environment."""

    spec: ProcessorSpec
    source: SourceProvider
    sink: SinkProvider
    dead_letter: SinkProvider

    @property
    def name(self) -> str:
        return self.spec.name

    def resources(self) -> list[Resource]:
        from buildflow.io.base import DeadLetterRow
        from buildflow.schema import schema_from_dataclass

        return [
            *self.source.resources(self.spec.name),
            *self.sink.resources(self.spec.schema),
            *self.dead_letter.resources(schema_from_dataclass(DeadLetterRow)),
        ]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run behaves.

    Attributes:
        until_idle: Stop once every source is drained and every sink flushed.
        max_events: Stop pulling after this many events (in total), then drain.
        idle_grace_ms: With ``until_idle``, how long everything must stay idle before
            stopping (milliseconds), so files still being copied are not missed.
        drain_timeout_s: After a stop is asked for (signal, limit, idle), how long
            in-flight events get to finish before the run stops hard (seconds).
        max_inflight_batches: Micro-batches per processor between source and sink; the
            source is not pulled beyond this (backpressure).
        sink_retry_initial_ms / sink_retry_max_ms: Capped exponential backoff, with full
            jitter, between attempts of a failed sink write (milliseconds).
        handle_signals: Install SIGINT/SIGTERM handlers (first: drain, second: stop now).
        progress_interval_s: How often ``on_progress`` is called.
    """

    until_idle: bool = False
    max_events: int | None = None
    idle_grace_ms: int = 300
    drain_timeout_s: float = 30.0
    max_inflight_batches: int = 2
    sink_retry_initial_ms: int = 100
    sink_retry_max_ms: int = 5_000
    handle_signals: bool = True
    progress_interval_s: float = 0.5


@dataclasses.dataclass
class ProcessorStats:
    """Counts for one processor (all its replicas)."""

    name: str
    events: int = 0
    rows: int = 0
    dead_letters: int = 0
    batches: int = 0
    sink_writes: int = 0  # waiting micro-batches are written together: <= batches
    setup_calls: int = 0
    teardown_calls: int = 0
    sink_retries: int = 0
    backlog: int | None = None
    first_row_s: float | None = None
    first_row_at: float | None = None  # wall clock (epoch seconds) of the first row written
    last_write_s: float | None = None  # run clock of the last sink write (rows or dead letters)
    setup_s: float | None = None  # wall time of setup(): model load, imports, warm-up
    # scale-out runtimes (Ray): replicas running now, started in all, died (and replaced),
    # and per replica {"replica", "state", "events", "rows", "dead_letters", "model_loads", ...}
    replicas: int | None = None
    replicas_started: int | None = None
    replicas_died: int = 0
    per_replica: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list, repr=False)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    # dead letters by the exception's class name (DeadLetterRow.error_type)
    dead_letters_by_type: dict[str, int] = dataclasses.field(default_factory=dict)
    # receive-to-written latency of every event, and the process() time of every
    # micro-batch, in seconds (what buildflow_event_latency_seconds / buildflow_batch_seconds
    # export)
    latency_s: BucketCounts = dataclasses.field(default_factory=BucketCounts, repr=False)
    batch_s: BucketCounts = dataclasses.field(default_factory=BucketCounts, repr=False)
    # where the pipeline's time went, seconds summed over the run: "pull" (pulls that
    # returned events), "process" (process_batch of each micro-batch, on the worker
    # thread), "write" (sink and dead-letter writes, with retries), "ack"; the stages
    # overlap, so they add up to more than the run
    stage_s: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"pull": 0.0, "process": 0.0, "write": 0.0, "ack": 0.0}
    )
    # payload read-ahead (buildflow.runtime.readahead.ReadAheadStats.as_dict), after the run
    read_ahead: dict[str, float] = dataclasses.field(default_factory=dict)

    def copy(self) -> ProcessorStats:
        """A copy that later updates of this one do not change."""
        return dataclasses.replace(
            self,
            latencies_ms=list(self.latencies_ms),
            metrics=dict(self.metrics),
            per_replica=[dict(r) for r in self.per_replica],
            dead_letters_by_type=dict(self.dead_letters_by_type),
            stage_s=dict(self.stage_s),
            read_ahead=dict(self.read_ahead),
            latency_s=self.latency_s.copy(),
            batch_s=self.batch_s.copy(),
        )

    def latency_percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile ``q`` (0-100) of receive-to-row latency."""
        if not self.latencies_ms:
            return None
        xs = sorted(self.latencies_ms)
        k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
        return xs[k]


@dataclasses.dataclass
class RunSummary:
    """What a run did. ``peak_rss_mb`` is the process's peak resident set (ru_maxrss)."""

    processors: list[ProcessorStats]
    elapsed_s: float
    stop_reason: StopReason
    peak_rss_mb: float
    loop_lag_max_ms: float
    error: str | None = None

    @property
    def events(self) -> int:
        return sum(p.events for p in self.processors)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.processors)

    @property
    def dead_letters(self) -> int:
        return sum(p.dead_letters for p in self.processors)

    @property
    def first_row_s(self) -> float | None:
        firsts = [p.first_row_s for p in self.processors if p.first_row_s is not None]
        return min(firsts) if firsts else None

    @property
    def events_per_s(self) -> float:
        """Events over the whole run (``elapsed_s``: includes an until-idle grace and the drain)."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def last_write_s(self) -> float | None:
        lasts = [p.last_write_s for p in self.processors if p.last_write_s is not None]
        return max(lasts) if lasts else None

    @property
    def busy_events_per_s(self) -> float | None:
        """Events per second from the run's start (after setup) to its last sink write: the
        throughput of the work itself, without the idle grace of ``until_idle`` and the
        shutdown that ``events_per_s`` also counts. None before the first write."""
        last = self.last_write_s
        return self.events / last if last else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for p, stats in zip(d["processors"], self.processors):
            p.pop("latencies_ms")
            p.pop("latency_s")
            p.pop("batch_s")
            p["latency_p50_ms"] = stats.latency_percentile_ms(50)
            p["latency_p95_ms"] = stats.latency_percentile_ms(95)
        d.update(
            events=self.events,
            rows=self.rows,
            dead_letters=self.dead_letters,
            first_row_s=self.first_row_s,
            events_per_s=self.events_per_s,
            last_write_s=self.last_write_s,
            busy_events_per_s=self.busy_events_per_s,
        )
        return d


class Runtime(ABC):
    """Runs bound processors until a stop condition. The in-process runtime is the
    reference; other runtimes must pass the same tests."""

    @abstractmethod
    def run(
        self,
        processors: Sequence[BoundProcessor],
        options: RunOptions,
        on_progress: Callable[[list[ProcessorStats], float], None] | None = None,
    ) -> RunSummary:
        """Run until a stop condition of ``options``, a signal, or a fatal error.

        Returns the summary; a fatal error is reported in ``RunSummary.error`` with
        ``stop_reason="error"`` rather than raised, so the summary is never lost.
        """
