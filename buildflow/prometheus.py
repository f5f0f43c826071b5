"""Prometheus metrics of a run (``buildflow run --metrics-port PORT``), through prometheus-client.

:class:`MetricsExporter` is a run's progress callback (``on_progress``) and an HTTP server of
the Prometheus text format (https://prometheus.io/docs/instrumenting/exposition_formats/) at
``/metrics``. Every metric is labelled ``processor``; on Ray the figures are summed over the
processor's replicas (live, finished and died), as the run summary counts them.

========================================  =========  ===========================================
metric                                    type       meaning
========================================  =========  ===========================================
``buildflow_events_total``                counter    events pulled from the source
``buildflow_rows_total``                  counter    rows written to the sink
``buildflow_dead_letters_total``          counter    events dead-lettered, label ``error_type``
                                                     (the exception's class, as in the
                                                     dead-letter row)
``buildflow_event_latency_seconds``       histogram  receive to written (rows or dead letter)
                                                     and acked, per event
``buildflow_batch_seconds``               histogram  ``process`` time of one micro-batch
``buildflow_backlog``                     gauge      events waiting at the source (absent when
                                                     the source cannot tell)
``buildflow_replicas``                    gauge      replicas running (1 in-process)
``buildflow_model_loads_total``           counter    model loads (``metrics.increment
                                                     ("model_loads")`` in ``setup``)
========================================  =========  ===========================================

The histograms' buckets are :data:`buildflow.metrics.DEFAULT_BUCKETS_S`. Values are those of
the latest progress callback (every ``RunOptions.progress_interval_s``, 0.5 s by default) and
the final one at the end of the run.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from buildflow.errors import BuildflowError
from buildflow.metrics import BucketCounts
from buildflow.runtime.base import ProcessorStats

__all__ = ["MetricsExporter", "MetricsServerError"]


class MetricsServerError(BuildflowError):
    """The metrics server could not listen on the address asked for."""


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    name: str
    events: int
    rows: int
    dead_letters_by_type: dict[str, int]
    latency_s: BucketCounts
    batch_s: BucketCounts
    backlog: int | None
    replicas: int
    model_loads: float


def _snapshot(s: ProcessorStats) -> _Snapshot:
    return _Snapshot(
        name=s.name,
        events=s.events,
        rows=s.rows,
        dead_letters_by_type=dict(s.dead_letters_by_type),
        latency_s=s.latency_s.copy(),
        batch_s=s.batch_s.copy(),
        backlog=s.backlog,
        replicas=s.replicas if s.replicas is not None else 1,
        model_loads=float(s.metrics.get("model_loads", 0) or 0),
    )


def _histogram(name: str, doc: str, values: list[tuple[str, BucketCounts]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["processor"], unit="seconds")
    for processor, h in values:
        family.add_metric(
            [processor],
            [("+Inf" if math.isinf(b) else repr(float(b)), float(n)) for b, n in h.cumulative()],
            sum_value=h.total,
        )
    return family


class _StatsCollector(Collector):
    def __init__(self, exporter: MetricsExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        snaps = self._exporter.snapshots()
        events = CounterMetricFamily(
            "buildflow_events", "Events pulled from the source.", labels=["processor"]
        )
        rows = CounterMetricFamily("buildflow_rows", "Rows written to the sink.", labels=["processor"])
        dead = CounterMetricFamily(
            "buildflow_dead_letters",
            "Events dead-lettered, by the exception's class name.",
            labels=["processor", "error_type"],
        )
        loads = CounterMetricFamily(
            "buildflow_model_loads", "Model loads (setup of a replica).", labels=["processor"]
        )
        backlog = GaugeMetricFamily(
            "buildflow_backlog", "Events waiting at the source.", labels=["processor"]
        )
        replicas = GaugeMetricFamily(
            "buildflow_replicas", "Replicas running (1 in-process).", labels=["processor"]
        )
        for s in snaps:
            events.add_metric([s.name], s.events)
            rows.add_metric([s.name], s.rows)
            for kind, n in sorted(s.dead_letters_by_type.items()):
                dead.add_metric([s.name, kind], n)
            loads.add_metric([s.name], s.model_loads)
            if s.backlog is not None:
                backlog.add_metric([s.name], s.backlog)
            replicas.add_metric([s.name], s.replicas)
        yield events
        yield rows
        yield dead
        yield _histogram(
            "buildflow_event_latency",
            "Receive to written (rows or dead letter) and acked, per event.",
            [(s.name, s.latency_s) for s in snaps],
        )
        yield _histogram(
            "buildflow_batch", "process() time of one micro-batch.", [(s.name, s.batch_s) for s in snaps]
        )
        yield backlog
        yield replicas
        yield loads


class MetricsExporter:
    """Serves a run's figures at ``http://HOST:PORT/metrics`` (see the module docstring).

    Use it as (or inside) the run's progress callback::

        exporter = MetricsExporter([b.name for b in bound])
        url = exporter.start("127.0.0.1", 0)      # 0: a free port
        try:
            runtime.run(bound, options, on_progress=exporter.update)
        finally:
            exporter.stop()

    Args:
        processors: The run's processor names: they are exported (at 0) before the first
            progress callback, so a scrape never misses a series.
    """

    def __init__(self, processors: Sequence[str] = ()) -> None:
        self._lock = threading.Lock()
        self._snaps: dict[str, _Snapshot] = {n: _snapshot(ProcessorStats(name=n)) for n in processors}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(self))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def update(self, stats: list[ProcessorStats], elapsed: float = 0.0) -> None:
        """Take the latest figures (the signature of ``Runtime.run``'s ``on_progress``)."""
        snaps = [_snapshot(s) for s in stats]
        with self._lock:
            for s in snaps:
                self._snaps[s.name] = s

    def snapshots(self) -> list[_Snapshot]:
        with self._lock:
            return list(self._snaps.values())

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port) in a daemon thread; returns the URL of
        the metrics, ``http://HOST:PORT/metrics``.

        Raises:
            MetricsServerError: the address is taken or cannot be bound.
        """
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise MetricsServerError(
                f"cannot serve metrics on {host}:{port} ({e.strerror or e}); "
                "pick another --metrics-port, or 0 for a free one"
            ) from e
        bound_port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{bound_port}/metrics"

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
