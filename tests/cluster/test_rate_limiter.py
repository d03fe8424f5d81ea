"""The Redis rate limiter against a real Redis (127.0.0.1:6379): one budget for every replica.

Sleeps go to FakeClocks, so nothing here waits for real time; the assertions
are on the slots Redis booked (microseconds of Redis TIME).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from itertools import pairwise

import pytest
from redis.asyncio import Redis

from aiproc.server.cluster.rate_limiter import RedisRateLimiter, Reservation
from aiproc.server.resilience.clock import Clock, FakeClock

REDIS_URL = "redis://127.0.0.1:6379/0"


class RecordingClock(FakeClock):
    """A FakeClock that also remembers how long each sleep was asked to last."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start=start)
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


class RecordingLimiter(RedisRateLimiter):
    """Remembers every slot it booked and whether each refund gave its slot back."""

    def __init__(self, redis: Redis, key: str, rate: float, burst: int, clock: Clock) -> None:
        super().__init__(redis, key, rate=rate, burst=burst, clock=clock)
        self.booked: list[Reservation] = []
        self.refunds: list[bool] = []

    async def reserve(self) -> Reservation:
        reservation = await super().reserve()
        self.booked.append(reservation)
        return reservation

    async def refund(self, reservation: Reservation) -> bool:
        given = await super().refund(reservation)
        self.refunds.append(given)
        return given


@pytest.fixture
def prefix() -> str:
    return f"aiproc-test-{uuid.uuid4().hex}"


@pytest.fixture
async def redis_clients(prefix: str) -> AsyncIterator[Callable[[], Redis]]:
    """Opens clients to the test Redis (one per "replica"); deletes the test's keys after."""
    clients: list[Redis] = []

    def connect() -> Redis:
        client = Redis.from_url(REDIS_URL, decode_responses=True)
        clients.append(client)
        return client

    yield connect
    cleaner = connect()
    async for key in cleaner.scan_iter(match=f"{prefix}*"):
        await cleaner.delete(key)
    for client in clients:
        await client.aclose()


@pytest.fixture
def redis(redis_clients: Callable[[], Redis]) -> Redis:
    return redis_clients()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls `condition` until it holds; fails after 5 s."""
    deadline = time.monotonic() + 5.0
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def assert_window_bound(starts_us: list[int], rate: float, burst: int, interval_us: int) -> None:
    """No half-open window [a, a + w) holds more than rate * w + burst starts."""
    starts = sorted(starts_us)
    span = starts[-1] - starts[0] + 1
    for window in {1, interval_us // 2, interval_us, 3 * interval_us, 10 * interval_us, span}:
        for i, first in enumerate(starts):
            admitted = bisect_left(starts, first + window) - i
            assert admitted <= rate * window / 1e6 + burst, (window, first, admitted)


def limiter(redis: Redis, prefix: str, rate: float, burst: int, clock: Clock) -> RecordingLimiter:
    return RecordingLimiter(
        redis, f"{prefix}:ratelimit:global", rate=rate, burst=burst, clock=clock
    )


async def test_the_first_burst_starts_at_once_then_slots_are_one_interval_apart(
    redis: Redis, prefix: str
) -> None:
    rate, burst = 1.0, 3  # a 1 s interval: the bookings below take far less real time
    lim = limiter(redis, prefix, rate, burst, FakeClock())
    slots = [await lim.reserve() for _ in range(burst + 4)]
    assert [s.wait for s in slots[:burst]] == [0.0] * burst
    first = slots[0].booked_at_us
    assert lim.interval_us == 1_000_000
    assert [s.start_us - first for s in slots[burst:]] == [1_000_000 * n for n in range(1, 5)]


async def test_acquire_sleeps_on_its_clock_until_the_booked_slot_in_arrival_order(
    redis: Redis, prefix: str
) -> None:
    clock = RecordingClock()
    lim = limiter(redis, prefix, rate=1.0, burst=2, clock=clock)
    assert [await lim.acquire(), await lim.acquire()] == [0.0, 0.0]
    assert clock.slept == []
    finished: list[int] = []

    async def call(n: int) -> float:
        waited = await lim.acquire()
        finished.append(n)
        return waited

    tasks: list[asyncio.Task[float]] = []
    for n in range(3):  # each books before the next arrives
        tasks.append(asyncio.create_task(call(n)))
        await until(lambda: clock.sleepers == len(tasks), f"waiter {n} to sleep")
    waiting = lim.booked[2:]
    assert clock.slept == [r.wait for r in waiting]
    assert [r.start_us - waiting[0].start_us for r in waiting] == [0, 1_000_000, 2_000_000]

    def finished_are(expected: list[int]) -> Callable[[], bool]:
        return lambda: finished == expected

    for expected in ([0], [0, 1], [0, 1, 2]):  # one more each interval, in arrival order
        clock.advance(1.0)
        await until(finished_are(expected), f"{expected} to finish")
    assert await asyncio.gather(*tasks) == clock.slept
    assert lim.waits == 3
    assert lim.waited_seconds == pytest.approx(sum(clock.slept))


async def test_two_replicas_share_one_budget(
    redis_clients: Callable[[], Redis], prefix: str
) -> None:
    rate, burst, calls = 10.0, 4, 40
    clocks = [FakeClock(start=1000.0), FakeClock(start=5_000_000.0)]
    replicas = [limiter(redis_clients(), prefix, rate, burst, clock) for clock in clocks]
    tasks = [asyncio.create_task(replicas[n % 2].acquire()) for n in range(calls)]
    await until(lambda: sum(len(r.booked) for r in replicas) == calls, "every call to book")
    for clock in clocks:
        clock.advance(3600.0)
    await asyncio.gather(*tasks)

    booked = [r for replica in replicas for r in replica.booked]
    interval = replicas[0].interval_us
    assert_window_bound([r.start_us for r in booked], rate, burst, interval)
    # The waiters of both replicas form one line, one interval apart.
    waiting = sorted(r.start_us for r in booked if r.wait > 0)
    assert len(waiting) >= calls - 2 * burst
    assert [b - a for a, b in pairwise(waiting)] == [interval] * (len(waiting) - 1)
    assert all(any(r.wait > 0 for r in replica.booked) for replica in replicas)


async def test_the_schedule_is_kept_in_redis_time_not_the_replicas_clocks(
    redis_clients: Callable[[], Redis], prefix: str
) -> None:
    observer = redis_clients()
    a = limiter(redis_clients(), prefix, 2.0, 1, FakeClock(start=10.0))
    b = limiter(redis_clients(), prefix, 2.0, 1, FakeClock(start=9_000_000.0))
    seconds, micros = await observer.time()
    before = seconds * 1_000_000 + micros
    slots = [await (a if n % 2 == 0 else b).reserve() for n in range(4)]
    seconds, micros = await observer.time()
    after = seconds * 1_000_000 + micros
    assert all(before <= s.booked_at_us <= after for s in slots)
    assert [s.start_us - slots[0].start_us for s in slots] == [0, 500_000, 1_000_000, 1_500_000]


async def test_a_past_tat_banks_no_credit_beyond_the_burst(redis: Redis, prefix: str) -> None:
    # The key normally expires once its TAT passes, but may outlive it by up to
    # a millisecond (PX is rounded up); a TAT long past must still count as "now".
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=FakeClock())
    seconds, micros = await redis.time()
    await redis.set(lim.key, seconds * 1_000_000 + micros - 10_000_000)
    first, second = await lim.reserve(), await lim.reserve()
    assert first.wait == 0.0
    assert first.tat_us == first.booked_at_us + lim.interval_us
    assert second.start_us == first.start_us + lim.interval_us


async def test_a_cancelled_waiter_gives_its_slot_back(redis: Redis, prefix: str) -> None:
    clock = FakeClock()
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=clock)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await until(lambda: clock.sleepers == 1, "the waiter to sleep")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lim.refunds == [True]
    cancelled = lim.booked[1]
    again = await lim.reserve()
    assert again.start_us == cancelled.start_us
    assert again.tat_us == cancelled.tat_us


async def test_a_cancelled_slot_booked_past_is_not_given_back(redis: Redis, prefix: str) -> None:
    clock = FakeClock()
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=clock)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await until(lambda: clock.sleepers == 1, "the waiter to sleep")
    later = await lim.reserve()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lim.refunds == [False]
    after = await lim.reserve()
    assert after.start_us == later.start_us + lim.interval_us
    starts = [r.start_us for r in lim.booked if r is not lim.booked[1]]
    assert_window_bound(starts, 1.0, 1, lim.interval_us)


async def test_an_unconditional_refund_would_break_the_bound(redis: Redis, prefix: str) -> None:
    # Why refunds are conditional: moving the TAT back past a later booking
    # hands that booking's slot out a second time.
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=FakeClock())
    first, cancelled, later = [await lim.reserve() for _ in range(3)]
    await redis.set(lim.key, later.tat_us - lim.interval_us, keepttl=True)
    doubled = await lim.reserve()
    assert doubled.start_us == later.start_us
    with pytest.raises(AssertionError):
        assert_window_bound([first.start_us, later.start_us, doubled.start_us], 1.0, 1, 1)
    assert cancelled.start_us < later.start_us


async def test_a_refund_is_given_once(redis: Redis, prefix: str) -> None:
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=FakeClock())
    await lim.reserve()
    slot = await lim.reserve()
    assert await lim.refund(slot) is True
    assert await lim.refund(slot) is False
    assert (await lim.reserve()).start_us == slot.start_us


async def test_the_key_expires_when_its_tat_passes(redis: Redis, prefix: str) -> None:
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=FakeClock())
    await lim.reserve()
    slot = await lim.reserve()
    ttl_ms = await redis.pttl(lim.key)
    assert 0 < ttl_ms <= -(-(slot.tat_us - slot.booked_at_us) // 1000)
    assert ttl_ms > 1000  # two intervals booked ahead
    assert await lim.refund(slot)
    assert 0 < await redis.pttl(lim.key) <= 1000  # the refund shortened it too


async def test_an_idle_limiter_leaves_nothing_behind(redis: Redis, prefix: str) -> None:
    lim = limiter(redis, prefix, rate=1.0, burst=1, clock=FakeClock())
    only = await lim.reserve()
    assert await lim.refund(only)  # back to a full bucket: nothing worth keeping
    assert await redis.exists(lim.key) == 0

    fast = limiter(redis, prefix, rate=1000.0, burst=1, clock=FakeClock())
    await fast.reserve()
    assert await redis.exists(fast.key) == 1
    await until_gone(redis, fast.key)


async def until_gone(redis: Redis, key: str) -> None:
    deadline = time.monotonic() + 5.0
    while await redis.exists(key):
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} never expired")
        await asyncio.sleep(0.001)


async def test_for_prefix_uses_the_deployment_wide_key(redis: Redis, prefix: str) -> None:
    lim = RedisRateLimiter.for_prefix(redis, prefix, rate=5.0, burst=2, clock=FakeClock())
    assert lim.key == f"{prefix}:ratelimit:global"
    assert await lim.acquire() == 0.0
    assert await redis.exists(f"{prefix}:ratelimit:global") == 1
    assert lim.interval_us == 200_000


@pytest.mark.parametrize(("rate", "burst", "match"), [(0.0, 1, "rate"), (1.0, 0, "burst")])
async def test_bad_settings_are_refused(
    redis: Redis, prefix: str, rate: float, burst: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        RedisRateLimiter(redis, f"{prefix}:unused", rate=rate, burst=burst, clock=FakeClock())
