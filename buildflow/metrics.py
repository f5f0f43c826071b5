"""Counters and timings a processor reports (e.g. ``model_loads``), shown in the run summary.

Thread-safe: processors call them from the worker thread while the runtime reads them
from the event loop.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Metrics", "NULL_METRICS"]


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
