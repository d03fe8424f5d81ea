"""A provider's own quota: calls per second, tokens per minute, and the pauses it asks for."""

from __future__ import annotations

from aiproc.server.resilience.token_bucket import TokenBucket


def _wait(bucket: TokenBucket | None, at: float, amount: float) -> float:
    """Seconds after `at` until `bucket` holds `amount` tokens (or is full, if it cannot)."""
    if bucket is None:
        return 0.0
    bucket.adjust(at, 0.0)
    return max(0.0, min(amount, bucket.burst) - bucket.tokens) / bucket.rate


class ProviderQuota:
    """Answers how long a call to one provider must wait, so the provider never has to refuse it.

    Two token buckets, each optional (a limit of 0 means none):
    - calls: `rps` per second with a burst of one, so calls start at least
      1 / rps apart;
    - tokens: capacity `tokens_per_minute`, refilled at tokens_per_minute / 60
      per second (the provider's own model of the limit). Each call takes its
      estimated tokens up front; `correct` settles the difference once the
      provider reports the real usage. In any window of w seconds the calls
      started use at most tokens_per_minute * (1 + w / 60) tokens: a full
      minute's worth may go at once after an idle spell, then the refill rate.

    Calls start in the order they reserve: each starts when both buckets can
    pay for it, no earlier than the call before it and not during a pause, and
    pays at that moment. Paying at the start, not at the reservation, keeps
    calls held back (by a pause or by the other bucket) from all leaving when
    the hold ends: what a bucket saved while idle pays for its burst, no more.
    """

    def __init__(self, rps: float, tokens_per_minute: int, now: float) -> None:
        if rps < 0 or tokens_per_minute < 0:
            raise ValueError("rps and tokens_per_minute must not be negative")
        self.rps = rps
        self.tokens_per_minute = tokens_per_minute
        self._calls = TokenBucket(rate=rps, burst=1, now=now) if rps > 0 else None
        self._tokens = (
            TokenBucket(rate=tokens_per_minute / 60.0, burst=tokens_per_minute, now=now)
            if tokens_per_minute > 0
            else None
        )
        self._paused_until = now
        self._last_start = now

    def reserve(self, now: float, estimated_tokens: int) -> float:
        """Books the next start for a call of about `estimated_tokens`; returns the seconds to wait.

        A call estimated above a whole minute's budget waits for a full bucket,
        then runs; the calls after it wait out the overdraft.
        """
        at = max(now, self._paused_until, self._last_start)
        start = at + max(
            _wait(self._calls, at, 1.0),
            _wait(self._tokens, at, float(estimated_tokens)),
        )
        if self._calls is not None:
            self._calls.adjust(start, -1.0)
        if self._tokens is not None:
            self._tokens.adjust(start, -float(estimated_tokens))
        self._last_start = start
        return start - now

    def correct(self, now: float, estimated_tokens: int, actual_tokens: int) -> None:
        """Replaces a finished call's estimate with the usage the provider reported."""
        if self._tokens is not None:
            self._tokens.adjust(now, float(estimated_tokens - actual_tokens))

    def cancel(self, now: float, estimated_tokens: int) -> None:
        """Gives back a reservation whose call never started.

        Its tokens return to both buckets, but the start order stays: the next
        call still starts no earlier than the cancelled one was booked for.
        """
        if self._calls is not None:
            self._calls.adjust(now, 1.0)
        if self._tokens is not None:
            self._tokens.adjust(now, float(estimated_tokens))

    def pause(self, now: float, seconds: float) -> None:
        """No call starts before now + seconds (a 429/503 Retry-After); a longer pause stays.

        Calls already booked to start earlier are not moved: whoever wakes for
        one should check `paused_for` before calling.
        """
        self._paused_until = max(self._paused_until, now + seconds)

    def paused_for(self, now: float) -> float:
        """Seconds left of the current pause, 0 when there is none."""
        return max(0.0, self._paused_until - now)

    def __repr__(self) -> str:
        limits = [
            f"rps={self.rps:g}" if self._calls else "rps=unlimited",
            f"tpm={self.tokens_per_minute}" if self._tokens else "tpm=unlimited",
        ]
        if self._tokens is not None:
            limits.append(f"tokens={self._tokens.tokens:.0f}")
        limits.append(f"paused_until={self._paused_until:.3f}")
        return f"<ProviderQuota {' '.join(limits)}>"
