"""The async face of the token bucket: workers await `acquire()` before each provider call."""

from __future__ import annotations

from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.token_bucket import TokenBucket


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
