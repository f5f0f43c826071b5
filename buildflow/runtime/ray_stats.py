"""The Ray runtime's progress and summary: one processor's stats merged over its replicas
(live, finished and dead), as the in-process runtime reports them for one."""

from __future__ import annotations

from typing import Any

from buildflow.runtime.base import ProcessorStats
from buildflow.runtime.ray_scaling import ReplicaGroup

__all__ = ["merge_stats", "merge_metrics", "run_clock_start"]


def run_clock_start(groups: list[ReplicaGroup], default: float) -> float:
    """Wall clock of the first replica's run start (after its setup): the run clock."""
    starts = [s for s in (g.first_start for g in groups) if s is not None]
    return min(starts) if starts else default


def merge_stats(g: ReplicaGroup) -> ProcessorStats:
    """One processor's stats over all its replicas: live, finished and dead."""
    out = ProcessorStats(name=g.name)
    metrics: dict[str, Any] = {}
    base = g.first_start
    lasts = []
    for rid, s in g.stats.items():
        out.events += s.events
        out.rows += s.rows
        out.dead_letters += s.dead_letters
        out.batches += s.batches
        out.sink_writes += s.sink_writes
        out.setup_calls += s.setup_calls
        out.teardown_calls += s.teardown_calls
        out.sink_retries += s.sink_retries
        out.latencies_ms.extend(s.latencies_ms)
        out.latency_s.add(s.latency_s)
        out.batch_s.add(s.batch_s)
        for kind, n in s.dead_letters_by_type.items():
            out.dead_letters_by_type[kind] = out.dead_letters_by_type.get(kind, 0) + n
        for stage, seconds in s.stage_s.items():  # summed over replicas
            out.stage_s[stage] = out.stage_s.get(stage, 0.0) + seconds
        for key, value in s.read_ahead.items():  # counts summed, peaks per replica's max
            old = out.read_ahead.get(key, 0)
            out.read_ahead[key] = max(old, value) if key.startswith("peak_") else old + value
        if s.first_row_at is not None and (out.first_row_at is None or s.first_row_at < out.first_row_at):
            out.first_row_at = s.first_row_at
        if s.setup_s is not None:
            out.setup_s = max(out.setup_s or 0.0, s.setup_s)
        if s.last_write_s is not None and base is not None and rid in g.started_at:
            lasts.append(g.started_at[rid] + s.last_write_s - base)
        merge_metrics(metrics, s.metrics)
    if out.first_row_at is not None and base is not None:
        out.first_row_s = max(0.0, out.first_row_at - base)
    out.last_write_s = max(lasts) if lasts else None
    out.metrics = metrics
    out.backlog = g.backlog
    out.replicas = len(g.members)
    out.replicas_started = g.started
    out.replicas_died = len(g.died)
    out.per_replica = [
        {
            "replica": rid,
            "state": "running" if rid in g.members else "died" if rid in g.died else "finished",
            "events": s.events,
            "rows": s.rows,
            "dead_letters": s.dead_letters,
            "model_loads": s.metrics.get("model_loads", 0),
            "peak_rss_mb": round(g.rss_mb.get(rid, 0.0), 1),
            "node": g.nodes.get(rid) if isinstance(g.nodes.get(rid), str) else None,
        }
        for rid, s in g.stats.items()
    ]
    return out


def merge_metrics(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Counters add; observations ``{"count", "mean", "max"}`` combine."""
    for k, v in more.items():
        have = into.get(k)
        if isinstance(v, dict):
            if isinstance(have, dict):
                n = have["count"] + v["count"]
                into[k] = {
                    "count": n,
                    "mean": (have["mean"] * have["count"] + v["mean"] * v["count"]) / n if n else 0.0,
                    "max": max(have["max"], v["max"]),
                }
            else:
                into[k] = dict(v)
        else:
            into[k] = (have or 0) + v
