"""The Ray runtime's replica groups and when their size changes.

A :class:`ReplicaGroup` is the driver's view of one processor's replicas (live members,
the stats of every replica ever started, the backlog); :func:`autoscale` changes its size
between ``min_replicas`` and ``max_replicas`` by the rules of :class:`Autoscaling`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from buildflow.runtime.base import BoundProcessor, ProcessorStats, RunSummary

__all__ = ["Autoscaling", "Member", "ReplicaGroup", "autoscale", "ask_stop"]

log = logging.getLogger("buildflow.runtime.ray_runtime")  # one logger for the whole runtime


@dataclasses.dataclass(frozen=True)
class Autoscaling:
    """When the Ray runtime changes a processor's replica count (within its
    ``min_replicas``..``max_replicas``).

    Attributes:
        interval_s: How often the backlog and the rate are read (seconds).
        scale_up_drain_s: Add a replica when ``backlog / rate`` (the time the backlog
            would take to drain at the current rate) exceeds this (seconds), or when
            there is a backlog and no rate yet.
        scale_down_idle_s: Remove a replica once the backlog has stayed at 0 this long.
        cooldown_s: Least time between two changes of one processor (seconds).
        reserve_cpus: CPUs the cluster keeps free for everything else (source reads, the
            driver, other jobs): a replica is added only if ``num_cpus + reserve_cpus``
            are available.
    """

    interval_s: float = 2.0
    scale_up_drain_s: float = 10.0
    scale_down_idle_s: float = 30.0
    cooldown_s: float = 20.0
    reserve_cpus: float = 0.5


@dataclasses.dataclass
class Member:
    """A live replica, as the driver sees it."""

    rid: str
    actor: Any
    ref: Any  # the ObjectRef of Replica.run
    started: float  # driver's monotonic clock
    stopping: bool = False


@dataclasses.dataclass
class ReplicaGroup:
    """The replicas of one processor."""

    bound: BoundProcessor
    source_server: Any
    sink_server: Any
    dl_server: Any
    min_replicas: int
    max_replicas: int
    target: int
    num_cpus: float
    num_gpus: float
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    # the latest stats of every replica ever started (live, finished or dead), its run
    # clock's start (wall clock) and its peak RSS
    stats: dict[str, ProcessorStats] = dataclasses.field(default_factory=dict)
    started_at: dict[str, float] = dataclasses.field(default_factory=dict)
    rss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    finished: dict[str, RunSummary] = dataclasses.field(default_factory=dict)
    died: list[str] = dataclasses.field(default_factory=list)
    started: int = 0
    last_change: float = 0.0
    empty_since: float | None = None
    rate_window: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    backlog: int | None = None
    nodes: dict[str, Any] = dataclasses.field(default_factory=dict)  # replica -> node id (or its ref)

    @property
    def name(self) -> str:
        return self.bound.name

    @property
    def first_start(self) -> float | None:
        return min(self.started_at.values()) if self.started_at else None


def ask_stop(m: Member) -> None:
    """Ask a replica to drain and stop (it finishes what it pulled, writes, acks)."""
    m.stopping = True
    with contextlib.suppress(Exception):
        m.actor.stop.remote(False)


def autoscale(ray: Any, g: ReplicaGroup, a: Autoscaling, start_replica: Callable[[], None]) -> None:
    """One autoscaling step of ``g`` (see :class:`Autoscaling`): records the event count
    for the rate, then starts a replica (``start_replica()``), asks the newest one to
    drain and stop, or does nothing."""
    now = time.monotonic()
    g.rate_window.append((now, sum(s.events for s in g.stats.values())))
    g.rate_window = [(t, n) for t, n in g.rate_window if now - t <= max(3 * a.interval_s, 5.0)]
    if g.min_replicas == g.max_replicas or now - g.last_change < a.cooldown_s:
        return
    (t0, n0), (t1, n1) = g.rate_window[0], g.rate_window[-1]
    rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
    backlog = g.backlog or 0
    running = [m for m in g.members.values() if not m.stopping]
    if backlog > 0:
        g.empty_since = None
        drain_s = backlog / rate if rate > 0 else math.inf
        if drain_s <= a.scale_up_drain_s or len(running) >= g.max_replicas:
            return
        free = float(ray.available_resources().get("CPU", 0.0))
        if free < g.num_cpus + a.reserve_cpus:
            log.info(
                "processor %s: backlog %d but %.1f CPUs free (a replica needs %.1f, %.1f kept free): "
                "not adding one",
                g.name,
                backlog,
                free,
                g.num_cpus,
                a.reserve_cpus,
            )
            g.last_change = now  # ask again after the cool-down, not every interval
            return
        log.info(
            "processor %s: backlog %d at %.1f events/s (%.0f s to drain): adding a replica",
            g.name,
            backlog,
            rate,
            drain_s,
        )
        start_replica()
    else:
        g.empty_since = g.empty_since or now
        if now - g.empty_since >= a.scale_down_idle_s and len(running) > g.min_replicas:
            victim = max(running, key=lambda m: m.started)
            log.info(
                "processor %s: no backlog for %.0f s: stopping replica %s",
                g.name,
                now - g.empty_since,
                victim.rid,
            )
            ask_stop(victim)
            g.last_change = g.empty_since = now
