"""Counters and timings a processor reports (e.g. ``model_loads``), shown in the run summary;
and :class:`BucketCounts`, the runtime's mergeable histograms (latency, batch time).

Thread-safe: processors call them from the worker thread while the runtime reads them
from the event loop.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from typing import Any

__all__ = ["Metrics", "NULL_METRICS", "BucketCounts", "DEFAULT_BUCKETS_S"]


class Metrics:
    """A named set of counters (``increment``) and distributions (``observe``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, float] = {}
        self._observations: dict[str, list[float]] = {}

    def increment(self, name: str, value: float = 1) -> None:
        """Add ``value`` to the counter ``name`` (created at 0)."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + value

    def observe(self, name: str, value: float) -> None:
        """Record one observation, e.g. ``observe("load_model_latency_ms", 812.0)``."""
        with self._lock:
            self._observations.setdefault(name, []).append(value)

    def counter(self, name: str) -> float:
        with self._lock:
            return self._counters.get(name, 0)

    def snapshot(self) -> dict[str, Any]:
        """Counters as numbers; observations as ``{"count", "mean", "max"}``."""
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            for k, vs in self._observations.items():
                out[k] = {"count": len(vs), "mean": sum(vs) / len(vs), "max": max(vs)}
            return out


class _NullMetrics(Metrics):
    """Used outside a runtime: records nothing."""

    def increment(self, name: str, value: float = 1) -> None:
        return None

    def observe(self, name: str, value: float) -> None:
        return None


NULL_METRICS: Metrics = _NullMetrics()


#: Upper bounds (seconds) of ``buildflow_event_latency_seconds`` and
#: ``buildflow_batch_seconds``: prometheus-client's default buckets
#: (``prometheus_client.Histogram.DEFAULT_BUCKETS``, 5 ms .. 10 s) with 30 s and 60 s added,
#: since receive-to-row latency includes model loads and sink retries.
DEFAULT_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclasses.dataclass
class BucketCounts:
    """A histogram's counts over fixed upper bounds, mergeable by addition (replicas add up).

    Attributes:
        bounds: Increasing upper bounds, seconds; a last ``+Inf`` bucket is implied.
        counts: Observations per bucket, not cumulative: ``counts[i]`` are those in
            ``(bounds[i-1], bounds[i]]``, ``counts[-1]`` those above ``bounds[-1]``.
        total: Sum of the observations (seconds).
    """

    bounds: tuple[float, ...] = DEFAULT_BUCKETS_S
    counts: list[int] = dataclasses.field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value_s)] += 1
        self.total += value_s

    def add(self, other: BucketCounts) -> None:
        """Add ``other``'s counts (same bounds) to these.

        Raises:
            ValueError: the bounds differ.
        """
        if other.bounds != self.bounds:
            raise ValueError(
                f"cannot add histograms over different bounds: {other.bounds!r} vs {self.bounds!r}"
            )
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.total += other.total

    def copy(self) -> BucketCounts:
        return BucketCounts(self.bounds, list(self.counts), self.total)

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound, observations <= it), ...]``, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts):
            running += n
            out.append((bound, running))
        return out
