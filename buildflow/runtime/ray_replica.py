"""One replica of a processor on Ray: the in-process runtime, run inside a Ray actor."""

from __future__ import annotations

import dataclasses
import os
import time

from buildflow.runtime.base import BoundProcessor, ProcessorStats, RunOptions, RunSummary
from buildflow.runtime.inprocess import _peak_rss_mb

__all__ = ["Replica"]


class Replica:
    """One replica of a processor (a threaded Ray actor): the in-process runtime over one
    bound processor whose clients are its own or those of the servers above."""

    def __init__(self, bound: BoundProcessor, options: RunOptions, replica: str) -> None:
        from buildflow.runtime.inprocess import InProcessRuntime

        self._bound = bound
        self._options = dataclasses.replace(options, handle_signals=False, progress_interval_s=0.25)
        self._replica = replica
        self._runtime = InProcessRuntime()
        self._stats: ProcessorStats | None = None
        self._started_at: float | None = None  # wall clock of the run clock's start
        self._lag = 0.0

    def run(self) -> tuple[RunSummary, float | None, float]:
        """Run until a stop; returns (the summary, the wall clock its run clock started at,
        this process's peak RSS in MiB)."""

        def on_progress(stats: list[ProcessorStats], elapsed: float) -> None:
            self._stats = stats[0]
            if self._started_at is None:
                self._started_at = time.time() - elapsed

        summary = self._runtime.run([self._bound], self._options, on_progress=on_progress)
        return summary, self._started_at, _peak_rss_mb()

    def stats(self) -> tuple[ProcessorStats | None, float | None, float]:
        """(a copy of the live stats, the wall clock its run started at, peak RSS MiB)."""
        s = self._stats
        if s is not None:
            s = s.copy()
        return s, self._started_at, _peak_rss_mb()

    def node(self) -> str:
        """The Ray node this replica runs on (its id)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def stop(self, hard: bool = False) -> None:
        self._runtime.request_stop("signal", hard=hard)

    def pid(self) -> int:
        return os.getpid()
