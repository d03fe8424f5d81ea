"""Retrying a call on UNAVAILABLE within one overall deadline, for calls safe to repeat."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiproc.client.errors import Unavailable

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call is repeated after UNAVAILABLE."""

    attempts: int = 4
    """Calls in all, the first included. Default 4."""
    initial_backoff: float = 0.1
    """Seconds before the first retry. Default 100ms."""
    max_backoff: float = 1.0
    """Longest wait between two calls, in seconds. Default 1s."""
    multiplier: float = 2.0
    """Growth of the wait from one retry to the next. Default 2.0."""

    def backoff(self, retry: int) -> float:
        """The wait before retry number `retry` (1-based), jittered to spread out clients."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


async def call_with_retry(
    call: Callable[[float], Awaitable[_T]],
    *,
    budget: float,
    policy: RetryPolicy,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """Awaits `call(seconds_left)`, again after `Unavailable` while attempts and the
    `budget` (seconds, over all attempts) remain."""
    deadline = clock() + budget
    retry = 0
    while True:
        try:
            return await call(max(deadline - clock(), 0.0))
        except Unavailable:
            retry += 1
            pause = policy.backoff(retry)
            if retry >= policy.attempts or clock() + pause >= deadline:
                raise
        await asyncio.sleep(pause)
