"""The async face of the token bucket: workers await `acquire()` before each provider call."""

from __future__ import annotations

from typing import Protocol

from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.token_bucket import TokenBucket


class Limiter(Protocol):
    """What a worker needs from a rate limiter: one wait per provider call, and counters.

    `RateLimiter` keeps its budget in this process; the Redis one
    (cluster/rate_limiter.py) shares one budget between every replica.
    """

    waits: int
    """Calls that had to wait."""
    waited_seconds: float
    """Seconds those calls waited, in total."""

    async def acquire(self) -> float:
        """Waits until this call may start; returns the seconds waited (0.0 if none)."""
        ...


class RateLimiter:
    """Admits calls at `rate` per second (after an initial `burst`), first come first served.

    Each caller reserves its slot at once and then sleeps until it, so waiters
    are served in arrival order and never wake together to burst past the rate.
    """

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self._clock = clock
        self._bucket = TokenBucket(rate=rate, burst=burst, now=clock.monotonic())
        self.waits = 0
        """Calls that had to wait for a token."""
        self.waited_seconds = 0.0

    async def acquire(self) -> float:
        """Waits for a token; returns the seconds waited."""
        wait = self._bucket.reserve(self._clock.monotonic())
        if wait <= 0:
            return 0.0
        self.waits += 1
        self.waited_seconds += wait
        try:
            await self._clock.sleep(wait)
        except BaseException:
            self._bucket.refund(self._clock.monotonic())
            raise
        return wait

    def __repr__(self) -> str:
        return f"<RateLimiter {self._bucket!r} waits={self.waits}>"
