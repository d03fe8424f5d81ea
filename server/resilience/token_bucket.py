"""A token bucket: the pure policy that answers "may I start now, or how long must I wait"."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second accrue up to `burst`; each call spends one.

    In any window of length w at most rate * w + burst calls are admitted.
    Reservations may drive the balance negative: a caller that reserves gets
    the time at which its token will exist, so concurrent waiters are spaced
    1/rate apart instead of all waking together.
    """

    rate: float
    burst: float
    now: float
    tokens: float = field(init=False)
    _updated: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self.tokens = self.burst
        self._updated = self.now

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self.tokens = min(self.burst, self.tokens + (now - self._updated) * self.rate)
            self._updated = now

    def reserve(self, now: float) -> float:
        """Spends one token and returns how many seconds to wait until it is really there."""
        self._refill(now)
        self.tokens -= 1.0
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate

    def refund(self, now: float) -> None:
        """Gives back a reserved token that will not be used (the waiter was cancelled)."""
        self.adjust(now, 1.0)

    def adjust(self, now: float, delta: float) -> None:
        """Adds `delta` tokens (negative spends), capped at `burst`; 0 only brings it up to `now`.

        `now` may lie ahead of the caller's clock: a reservation made for a
        later start. Calls with an earlier `now` then act on that later balance.
        """
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + delta)

    def __repr__(self) -> str:
        return f"<TokenBucket rate={self.rate}/s burst={self.burst} tokens={self.tokens:.2f}>"
