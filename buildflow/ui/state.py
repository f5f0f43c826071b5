"""What the web UI knows of a live run: counters, rates and latency percentiles.

The runtime reports progress through its ``on_progress(stats, elapsed_s)`` callback (see
:meth:`buildflow.runtime.base.Runtime.run`); :meth:`UiState.update` *is* such a callback.
The CLI passes it to the runtime and the UI server reads :meth:`UiState.snapshot`. Nothing
here parses logs or reaches into the runtime.

Thread-safe: ``update`` runs on the runtime's event-loop thread, ``snapshot`` on the UI
server's thread.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from buildflow.runtime.base import ProcessorStats

__all__ = ["UiState", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None if there are none."""
    if not values:
        return None
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return xs[k]


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


class _Live:
    """Per-processor bookkeeping between two progress calls."""

    def __init__(self, latency_window: int) -> None:
        self.stats: ProcessorStats | None = None
        self.latencies_seen = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
        self.points: collections.deque[tuple[float, int]] = collections.deque([(0.0, 0)])
        self.rate = 0.0

    def count(self, elapsed_s: float, events: int, window_s: float) -> None:
        """Record the event count at ``elapsed_s``; the rate is over the last ``window_s``
        seconds (over at least 1 s, so the first events of a run do not read as a spike)."""
        self.points.append((elapsed_s, events))
        while len(self.points) > 2 and self.points[1][0] <= elapsed_s - window_s:
            self.points.popleft()
        t0, n0 = self.points[0]
        self.rate = (events - n0) / max(elapsed_s - t0, 1.0)


class UiState:
    """The live view of a run, fed by the runtime's ``on_progress`` callback.

    Args:
        latency_window: Percentiles are over the receive-to-row latencies of the last
            this-many rows of each processor (the runtime's ``ProcessorStats.latencies_ms``).
        history_points: How many progress points the charts keep (at the default
            ``RunOptions.progress_interval_s`` of 0.5 s, 600 points are 5 minutes).
        rate_window_s: Events/s are counted over this many of the latest seconds.
    """

    def __init__(
        self, *, latency_window: int = 500, history_points: int = 600, rate_window_s: float = 5.0
    ) -> None:
        self._lock = threading.Lock()
        self._latency_window = latency_window
        self._rate_window_s = rate_window_s
        self._live: dict[str, _Live] = {}
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history_points)
        self._elapsed_s: float | None = None
        self._version = 0
        self._uploads = 0
        self._uploads_refused = 0
        self._started_at = time.time()

    # -- writers -----------------------------------------------------------------
    def update(self, stats: list[ProcessorStats], elapsed_s: float) -> None:
        """The runtime's ``on_progress`` callback: record the processors' counters.

        Called on the runtime's event-loop thread, where ``stats`` are mutated, so the
        counters are copied here and never read later from another thread.
        """
        with self._lock:
            for s in stats:
                live = self._live.setdefault(s.name, _Live(self._latency_window))
                new = s.latencies_ms[live.latencies_seen :]
                live.latencies_seen = len(s.latencies_ms)
                live.latencies.extend(new)
                live.count(elapsed_s, s.events, self._rate_window_s)
                live.stats = ProcessorStats(
                    name=s.name,
                    events=s.events,
                    rows=s.rows,
                    dead_letters=s.dead_letters,
                    batches=s.batches,
                    setup_calls=s.setup_calls,
                    teardown_calls=s.teardown_calls,
                    sink_retries=s.sink_retries,
                    backlog=s.backlog,
                    first_row_s=s.first_row_s,
                    first_row_at=s.first_row_at,
                    metrics=dict(s.metrics),
                )
            merged = [x for live in self._live.values() for x in live.latencies]
            self._history.append(
                {
                    "t": round(elapsed_s, 2),
                    "events_per_s": round(sum(live.rate for live in self._live.values()), 3),
                    "p50_ms": _round(percentile(merged, 50)),
                    "p95_ms": _round(percentile(merged, 95)),
                }
            )
            self._elapsed_s = elapsed_s
            self._version += 1

    def record_upload(self, accepted: int, refused: int) -> None:
        """Count files the UI put into a source (``accepted``) or turned away (``refused``)."""
        with self._lock:
            self._uploads += accepted
            self._uploads_refused += refused
            self._version += 1

    # -- readers -----------------------------------------------------------------
    @property
    def version(self) -> int:
        """Grows by one on every change, so a reader can tell that something is new."""
        with self._lock:
            return self._version

    def counts(self, processor: str) -> tuple[int, int]:
        """``(rows, dead_letters)`` written so far by ``processor``; (0, 0) before the
        first progress call."""
        with self._lock:
            live = self._live.get(processor)
            if live is None or live.stats is None:
                return 0, 0
            return live.stats.rows, live.stats.dead_letters

    def snapshot(self) -> dict[str, Any]:
        """The metrics as JSON-able data (the shape of ``GET /api/metrics``)::

            {"running": bool, "elapsed_s": float | None, "uploads": int, "uploads_refused": int,
             "totals": {"events", "rows", "dead_letters", "model_loads", "replicas", "backlog"},
             "processors": [{"name", "events", "rows", "dead_letters", "batches", "backlog",
                             "setup_calls", "sink_retries", "model_loads", "replicas",
                             "events_per_s", "first_row_s",
                             "latency_ms": {"p50", "p95", "p99", "window"}, "metrics"}],
             "history": [{"t", "events_per_s", "p50_ms", "p95_ms"}]}

        ``running`` turns true once the runtime reports progress, i.e. after every
        processor's ``setup()`` (model load) is done. Latencies are receive-to-row, in
        milliseconds, over the last ``latency_window`` rows. ``replicas`` is the number of
        copies of a processor that run (``metrics["replicas"]`` if the runtime reports it;
        the in-process runtime runs one per processor).
        """
        with self._lock:
            procs = []
            for name, live in self._live.items():
                s = live.stats
                assert s is not None
                lat = list(live.latencies)
                loads = s.metrics.get("model_loads")
                procs.append(
                    {
                        "name": name,
                        "events": s.events,
                        "rows": s.rows,
                        "dead_letters": s.dead_letters,
                        "batches": s.batches,
                        "backlog": s.backlog,
                        "setup_calls": s.setup_calls,
                        "sink_retries": s.sink_retries,
                        "model_loads": int(loads) if isinstance(loads, (int, float)) else None,
                        "replicas": int(s.metrics.get("replicas", 1)),
                        "events_per_s": round(live.rate, 3),
                        "first_row_s": s.first_row_s,
                        "latency_ms": {
                            "p50": _round(percentile(lat, 50)),
                            "p95": _round(percentile(lat, 95)),
                            "p99": _round(percentile(lat, 99)),
                            "window": len(lat),
                        },
                        "metrics": {k: v for k, v in s.metrics.items() if isinstance(v, (int, float))},
                    }
                )
            backlogs = [p["backlog"] for p in procs if p["backlog"] is not None]
            return {
                "running": self._elapsed_s is not None,
                "elapsed_s": self._elapsed_s,
                "uploads": self._uploads,
                "uploads_refused": self._uploads_refused,
                "totals": {
                    "events": sum(p["events"] for p in procs),
                    "rows": sum(p["rows"] for p in procs),
                    "dead_letters": sum(p["dead_letters"] for p in procs),
                    "model_loads": sum(p["model_loads"] or 0 for p in procs),
                    "replicas": sum(p["replicas"] for p in procs),
                    "backlog": sum(backlogs) if backlogs else None,
                },
                "processors": procs,
                "history": list(self._history),
            }
