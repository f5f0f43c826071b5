"""Summary statistics shared by the benchmark suite and its Spark peer.

Both sides of a comparison summarise their latencies with this one function, so a
difference between them is never a difference in arithmetic. It sits below both
(:mod:`benchmarks.suite` and :mod:`benchmarks.spark_peer` import it; it imports neither).
"""

from __future__ import annotations

import math

__all__ = ["percentiles"]


def percentiles(xs: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p95/p99 of ``xs``, and their count ``n``.

    The p-th percentile is the smallest value with at least p % of the values at or below
    it: the value of rank ``ceil(p / 100 * n)`` in sorted order (the nearest-rank method,
    https://en.wikipedia.org/wiki/Percentile#The_nearest-rank_method). Units pass through
    unchanged (milliseconds in, milliseconds out; the keys say ``_ms``).

    Raises:
        ValueError: ``xs`` is empty.
    """
    if not xs:
        raise ValueError("percentiles() needs at least one value; got an empty list")
    s = sorted(xs)

    def q(p: float) -> float:
        return s[max(1, math.ceil(p / 100 * len(s))) - 1]

    return {"p50_ms": q(50), "p95_ms": q(95), "p99_ms": q(99), "n": len(s)}
