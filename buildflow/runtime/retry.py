"""The delay schedule between attempts of a failed sink write.

Capped exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
And Jitter", 2015): before attempt ``k + 1`` (``k`` failures so far, from 1) the runtime
waits a delay drawn uniformly from ``[0, min(max_ms, initial_ms * 2 ** (k - 1))]``
milliseconds. With the defaults of :class:`~buildflow.runtime.base.RunOptions` (100 ms,
5 s) the ceilings are 100, 200, 400, 800, 1600, 3200, 5000, 5000, ... ms.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """One write's delay schedule; call :meth:`next_delay_s` after each failed attempt.

    Args:
        initial_ms: Ceiling of the first delay (milliseconds, > 0).
        max_ms: Cap of every ceiling (milliseconds, >= ``initial_ms``).
        rng: Source of the jitter; a seeded ``random.Random`` makes the schedule
            reproducible (tests). Default: the ``random`` module's shared generator.
    """

    def __init__(self, initial_ms: float, max_ms: float, rng: random.Random | None = None) -> None:
        if initial_ms <= 0 or max_ms < initial_ms:
            raise ValueError(
                f"backoff needs 0 < initial_ms <= max_ms, got initial_ms={initial_ms!r}, "
                f"max_ms={max_ms!r}; set sink_retry_initial_ms / sink_retry_max_ms accordingly"
            )
        self.initial_ms = initial_ms
        self.max_ms = max_ms
        self.ceiling_ms = min(initial_ms, max_ms)  # of the next delay
        self._uniform = rng.uniform if rng is not None else random.uniform

    def next_delay_s(self) -> float:
        """The delay before the next attempt (seconds), then double the ceiling up to the cap."""
        delay_ms = self._uniform(0, self.ceiling_ms)
        self.ceiling_ms = min(self.ceiling_ms * 2, self.max_ms)
        return delay_ms / 1000
