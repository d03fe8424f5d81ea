"""Exponential backoff with full jitter: how long to wait before retry number n."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float
    """Seconds before the first retry (the ceiling of its jittered wait)."""
    maximum: float
    """Largest ceiling, in seconds."""
    multiplier: float

    def ceiling(self, retry: int) -> float:
        """The un-jittered wait before retry `retry` (1-based)."""
        exponent = max(retry - 1, 0)
        # Cap the exponent so huge retry counts cannot overflow the float.
        return min(self.maximum, self.initial * self.multiplier ** min(exponent, 64))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """A wait drawn uniformly from [ceiling / 2, ceiling], so retries of many tasks spread out.

        Half of the ceiling is kept fixed so that a retry never comes sooner than
        half the intended spacing ("equal jitter").
        """
        ceiling = self.ceiling(retry)
        draw = (rng or random).random()
        return ceiling / 2 + draw * ceiling / 2
