from __future__ import annotations

import asyncio

import pytest

from aiproc.server.resilience.backoff import Backoff
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.rate_limiter import RateLimiter
from aiproc.server.resilience.token_bucket import TokenBucket


def test_burst_is_free_then_calls_are_spaced_at_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    waits = [bucket.reserve(0.0) for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3])


def test_no_window_admits_more_than_rate_times_window_plus_burst() -> None:
    rate, burst = 20.0, 5
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    # Greedy callers: each starts at max(arrival, its reserved time).
    starts = []
    now = 0.0
    for _ in range(400):
        wait = bucket.reserve(now)
        starts.append(now + wait)
        now += 0.001
    for window in (0.25, 1.0, 5.0):
        for i, first in enumerate(starts):
            admitted = sum(1 for s in starts[i:] if s < first + window)
            assert admitted <= rate * window + burst + 1e-9


def test_tokens_refill_over_idle_time_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    bucket.reserve(0.0)
    bucket.reserve(0.0)
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(100.0) == pytest.approx(0.5)


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_non_positive_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=rate, burst=1, now=0.0)


async def test_concurrent_waiters_are_served_in_arrival_order_one_interval_apart() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=4.0, burst=1, clock=clock)
    finished: list[int] = []

    async def call(n: int) -> None:
        await limiter.acquire()
        finished.append(n)

    tasks = [asyncio.create_task(call(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert finished == [0]
    for expected in ([0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]):
        clock.advance(0.25)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert finished == expected
    await asyncio.gather(*tasks)
    assert limiter.waits == 4


async def test_a_cancelled_waiter_returns_its_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.advance(1.0)
    assert await limiter.acquire() == 0.0


def test_backoff_grows_by_the_multiplier_and_caps() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert backoff.ceiling(10_000) == 1.0


def test_backoff_is_jittered_within_half_to_full_ceiling() -> None:
    import random

    backoff = Backoff(initial=1.0, maximum=60.0, multiplier=2.0)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 150  # really spread, not one value


def test_adjust_spends_or_returns_tokens_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=5, now=0.0)
    bucket.adjust(0.0, -8.0)  # a usage report larger than what was booked
    assert bucket.reserve(0.0) == pytest.approx(4.0)
    bucket.adjust(0.0, 100.0)
    assert bucket.tokens == 5.0


def test_adjust_by_zero_only_refills_to_now() -> None:
    bucket = TokenBucket(rate=2.0, burst=10, now=0.0)
    bucket.adjust(0.0, -10.0)
    bucket.adjust(3.0, 0.0)
    assert bucket.tokens == pytest.approx(6.0)
