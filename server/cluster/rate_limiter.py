"""One global rate limit shared by every replica: a GCRA kept in Redis.

The in-process `RateLimiter` gives each replica its own budget, so N replicas
would together call providers N times too often. Here the budget is one Redis
key holding the TAT ("theoretical arrival time") of the generic cell rate
algorithm, in microseconds of Redis's own clock (TIME): every replica books
against the same clock, whatever its machine's clock says.

With T = 1/rate (the emission interval) and `burst` calls allowed at once, a
booking made at Redis time `now` does, atomically (one Lua script):

    tat   = max(stored TAT, now)            # an idle limiter has a full burst
    start = max(now, tat - (burst - 1) * T) # when this call may start
    TAT   = tat + T                         # the next call's place in line

and the caller sleeps `start - now` on its own clock (a duration: clock
offsets between machines do not matter). So the first `burst` calls start at
once, later ones are spaced T apart in booking (= arrival) order across all
replicas, and in any window of length w at most rate * w + burst calls start.
Why: take the calls that start in [a, a + w), j the first of them booked and
k the last. Each booking adds at least T to the TAT, so TAT_k >= TAT_j + (n-1)T
for the n calls in the window. TAT_j >= start_j + T >= a + T (both branches of
the max), and TAT_k <= start_k + burst * T < a + w + burst * T. Together:
n * T < w + burst * T, i.e. n < rate * w + burst. The bound is on the booked
slots; a call really starts a little after its slot, by the time the booking's
reply took to arrive, so real starts can be closer together by that jitter.

The key expires once its TAT has passed (PX on every write): from then on it
would only say "full burst", which a missing key says too, so an idle limiter
leaves nothing in Redis.

A waiter cancelled during its sleep gives its slot back only if nothing was
booked after it (the stored TAT is still the one its booking wrote): then
moving the TAT back by T leaves Redis exactly as if it had never booked, and
the bound above holds for the calls that do start. An unconditional decrement
would not keep it: with later bookings already holding their slots, the next
caller would be given the last booked slot again, and two calls would start at
the same instant (with burst 1, two starts in an arbitrarily short window).
When a later booking exists the cancelled slot is simply lost, which only
makes the limiter slower for one interval, never faster.

Times are integers (microseconds) because a script's Lua numbers reach the
client as integer replies (fractions cut off); T is rounded up to a whole
microsecond, which can only lower the rate (by at most one part in 1e6 / rate).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis

from aiproc.server.resilience.clock import Clock

log = logging.getLogger(__name__)

_MICROS = 1_000_000

# KEYS[1] = the TAT key; ARGV[1] = T in microseconds, ARGV[2] = (burst - 1) * T.
# Returns {now, start, tat}: Redis time of the booking, the slot, the new TAT.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local start = tat - tolerance
if start < now then start = now end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return {now, start, tat}
"""

# KEYS[1] = the TAT key; ARGV[1] = the TAT the cancelled booking wrote, ARGV[2] = T.
# Returns 1 if the slot was given back, 0 if a later booking (or expiry) came first.
_REFUND = """
local stored = redis.call('GET', KEYS[1])
if not stored or tonumber(stored) ~= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(ARGV[1]) - tonumber(ARGV[2])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    """One booked slot, in microseconds of Redis time."""

    booked_at_us: int
    """Redis TIME when the slot was booked."""
    start_us: int
    """When the call may start (== booked_at_us if it need not wait)."""
    tat_us: int
    """The TAT this booking wrote: identifies it when giving the slot back."""

    @property
    def wait(self) -> float:
        """Seconds from booking to the slot."""
        return (self.start_us - self.booked_at_us) / _MICROS


class RedisRateLimiter:
    """Admits calls at `rate` per second (after an initial `burst`) across every replica.

    Implements resilience.rate_limiter.Limiter. `clock` is used only to sleep:
    the schedule itself is kept in Redis time.
    """

    def __init__(self, redis: Redis, key: str, rate: float, burst: int, clock: Clock) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.key = key
        self.interval_us = max(1, math.ceil(_MICROS / rate))
        """T, the spacing of waiting calls, in whole microseconds (rounded up)."""
        self.burst = burst
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._refund = redis.register_script(_REFUND)
        self.waits = 0
        """Calls that had to wait for their slot."""
        self.waited_seconds = 0.0

    @classmethod
    def for_prefix(
        cls, redis: Redis, prefix: str, rate: float, burst: int, clock: Clock
    ) -> RedisRateLimiter:
        """The limiter every replica of the deployment with key prefix `prefix` shares."""
        return cls(redis, f"{prefix}:ratelimit:global", rate=rate, burst=burst, clock=clock)

    async def acquire(self) -> float:
        """Books the next slot and waits for it; returns the seconds waited."""
        reservation = await self.reserve()
        wait = reservation.wait
        if wait <= 0:
            return 0.0
        self.waits += 1
        self.waited_seconds += wait
        try:
            await self._clock.sleep(wait)
        except BaseException:
            await self._refund_quietly(reservation)
            raise
        return wait

    async def reserve(self) -> Reservation:
        """Books the next slot without waiting for it (acquire = reserve, then sleep)."""
        tolerance = (self.burst - 1) * self.interval_us
        now, start, tat = await self._reserve(keys=[self.key], args=[self.interval_us, tolerance])
        return Reservation(booked_at_us=int(now), start_us=int(start), tat_us=int(tat))

    async def refund(self, reservation: Reservation) -> bool:
        """Gives back a slot that will not be used, if nothing was booked after it.

        Returns whether it was given back (see the module docstring for why
        only then).
        """
        given = await self._refund(keys=[self.key], args=[reservation.tat_us, self.interval_us])
        return bool(given)

    async def _refund_quietly(self, reservation: Reservation) -> None:
        # Runs while a cancellation (or other error) is on its way out: a Redis
        # failure here must not replace it. The slot is then lost, which is safe.
        try:
            await self.refund(reservation)
        except Exception as exc:
            log.warning("could not give back a rate-limit slot on %s: %s", self.key, exc)

    def __repr__(self) -> str:
        rate = _MICROS / self.interval_us
        return f"<RedisRateLimiter {self.key} {rate:g}/s burst={self.burst} waits={self.waits}>"
