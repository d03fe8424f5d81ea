from __future__ import annotations

import heapq
import random

import pytest

from aiproc.server.resilience.quota import ProviderQuota


def most_in_any_window(events: list[tuple[float, float]], window: float) -> float:
    """The largest sum of amounts whose times fall within [t, t + window) for some event time t."""
    events = sorted(events)
    best = inside = 0.0
    end = 0
    for first, amount in events:
        while end < len(events) and events[end][0] < first + window:
            inside += events[end][1]
            end += 1
        best = max(best, inside)
        inside -= amount
    return best


def test_limits_of_zero_mean_unlimited() -> None:
    quota = ProviderQuota(rps=0, tokens_per_minute=0, now=0.0)
    assert all(quota.reserve(0.0, 1_000_000) == 0.0 for _ in range(1000))


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        ProviderQuota(rps=-1.0, tokens_per_minute=0, now=0.0)


def test_calls_are_spaced_at_the_rate() -> None:
    quota = ProviderQuota(rps=4.0, tokens_per_minute=0, now=0.0)
    assert [quota.reserve(0.0, 10) for _ in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert quota.reserve(10.0, 10) == 0.0


def test_no_window_holds_more_than_rps_times_w_plus_one_call() -> None:
    rng = random.Random(5)
    rps = 5.0
    quota = ProviderQuota(rps=rps, tokens_per_minute=0, now=0.0)
    starts: list[tuple[float, float]] = []
    pauses: list[tuple[float, float]] = []  # (asked at, until)
    now = 0.0
    while now < 300.0:
        now += rng.expovariate(8.0)  # more callers than the rate allows
        if rng.random() < 0.003:
            seconds = rng.uniform(0.5, 10.0)
            quota.pause(now, seconds)
            pauses.append((now, now + seconds))
        start = now + quota.reserve(now, 100)
        if rng.random() < 0.1:
            quota.cancel(now, 100)  # gave up before starting
            continue
        starts.append((start, 1.0))
        for asked, until in pauses:
            if asked <= now:  # a pause known when the call booked its start
                assert start >= until, "started during a pause"
    assert pauses
    for window in (0.1, 1.0, 5.0, 60.0):
        assert most_in_any_window(starts, window) <= rps * window + 1 + 1e-9


def simulate_tokens(
    tpm: int, seconds: float, correct: bool, workers: int = 8, seed: int = 11
) -> list[tuple[float, float]]:
    """Workers that each book a call, run it, report less than estimated, and book the next.

    Returns (start, actual tokens) of every call that started within `seconds`.
    """
    rng = random.Random(seed)
    quota = ProviderQuota(rps=0, tokens_per_minute=tpm, now=0.0)
    used: list[tuple[float, float]] = []
    running: list[tuple[float, int, int]] = []  # heap of (end, estimate, actual)

    def book(now: float) -> None:
        estimate = rng.randint(500, 3000)
        actual = int(estimate * rng.uniform(0.2, 1.0))
        start = now + quota.reserve(now, estimate)
        used.append((start, float(actual)))
        heapq.heappush(running, (start + rng.uniform(1.0, 20.0), estimate, actual))

    for _ in range(workers):
        book(0.0)
    while running[0][0] < seconds:
        end, estimate, actual = heapq.heappop(running)
        if correct:
            quota.correct(end, estimate, actual)
        book(end)
    return [u for u in used if u[0] < seconds]


def test_tokens_never_outrun_the_providers_own_bucket() -> None:
    tpm = 20_000
    used = simulate_tokens(tpm, seconds=1800.0, correct=True)
    for window in (1.0, 10.0, 60.0, 300.0, 1800.0):
        assert most_in_any_window(used, window) <= tpm * (1 + window / 60) + 1e-6
    # Saturated for half an hour: about tpm a minute, no more.
    total = sum(a for _, a in used)
    assert 0.9 * tpm * 30 < total <= tpm * 31


def test_corrections_give_unused_estimates_back() -> None:
    tpm = 20_000
    with_corrections = len(simulate_tokens(tpm, seconds=1800.0, correct=True))
    estimates_only = len(simulate_tokens(tpm, seconds=1800.0, correct=False))
    # Actuals average 60% of estimates, so about 1 / 0.6 times as many calls fit.
    assert with_corrections > 1.4 * estimates_only


def test_usage_above_the_estimate_delays_the_next_call() -> None:
    quota = ProviderQuota(rps=0, tokens_per_minute=600, now=0.0)  # 10 tokens a second
    assert quota.reserve(0.0, 600) == 0.0
    quota.correct(5.0, 600, 900)  # 300 more than booked
    assert quota.reserve(5.0, 50) == pytest.approx(30.0)  # (300 + 50 - 50 refilled) / 10


def test_usage_below_the_estimate_lets_the_next_call_go_sooner() -> None:
    quota = ProviderQuota(rps=0, tokens_per_minute=600, now=0.0)
    assert quota.reserve(0.0, 600) == 0.0
    quota.correct(1.0, 600, 100)
    assert quota.reserve(1.0, 500) == 0.0


def test_a_call_larger_than_a_minute_waits_for_a_full_bucket_then_leaves_a_debt() -> None:
    quota = ProviderQuota(rps=0, tokens_per_minute=600, now=0.0)
    assert quota.reserve(0.0, 300) == 0.0
    assert quota.reserve(0.0, 900) == pytest.approx(30.0)  # until the bucket is full again
    assert quota.reserve(30.0, 60) == pytest.approx(36.0)  # the 300 overdraft, then its 60


def test_a_cancelled_reservation_gives_its_tokens_and_slot_back() -> None:
    quota = ProviderQuota(rps=1.0, tokens_per_minute=600, now=0.0)
    assert quota.reserve(0.0, 600) == 0.0
    assert quota.reserve(0.0, 600) == pytest.approx(60.0)
    quota.cancel(0.0, 600)
    # Start order is kept (nothing starts before the cancelled booking), but
    # without its tokens returned this call would wait another 60 s.
    assert quota.reserve(60.0, 600) == 0.0


def test_pause_holds_every_call_and_then_releases_them_at_the_rate() -> None:
    quota = ProviderQuota(rps=2.0, tokens_per_minute=0, now=0.0)
    quota.pause(10.0, 30.0)
    waits = [quota.reserve(10.0 + i, 1) for i in range(5)]
    starts = [10.0 + i + w for i, w in enumerate(waits)]
    # Not a herd at 40 s: the calls held back leave half a second apart.
    assert starts == pytest.approx([40.0, 40.5, 41.0, 41.5, 42.0])


def test_calls_held_back_by_the_token_limit_still_leave_at_the_call_rate() -> None:
    quota = ProviderQuota(rps=1.0, tokens_per_minute=600, now=0.0)
    assert quota.reserve(0.0, 600) == 0.0
    assert quota.reserve(0.0, 600) == pytest.approx(60.0)  # held by tokens, not by calls
    # Only 1 token needed and 0.1 s to get it, but the call before started at
    # 60: the call bucket paid then, not while the tokens were missing.
    assert quota.reserve(0.0, 1) == pytest.approx(61.0)


def test_a_pause_is_extended_by_a_longer_one_and_never_shortened() -> None:
    quota = ProviderQuota(rps=0, tokens_per_minute=0, now=0.0)
    quota.pause(0.0, 10.0)
    quota.pause(1.0, 3.0)
    assert quota.paused_for(1.0) == pytest.approx(9.0)
    assert quota.reserve(1.0, 1) == pytest.approx(9.0)
    quota.pause(5.0, 20.0)
    assert quota.paused_for(5.0) == pytest.approx(20.0)
    assert quota.reserve(6.0, 1) == pytest.approx(19.0)
    assert quota.paused_for(30.0) == 0.0
    assert quota.reserve(30.0, 1) == 0.0


def test_pause_applies_even_without_limits() -> None:
    quota = ProviderQuota(rps=0, tokens_per_minute=0, now=0.0)
    quota.pause(0.0, 5.0)
    assert quota.reserve(2.0, 1) == pytest.approx(3.0)


def test_repr_shows_limits_and_balance() -> None:
    quota = ProviderQuota(rps=2.5, tokens_per_minute=600, now=0.0)
    quota.reserve(0.0, 100)
    assert repr(quota) == "<ProviderQuota rps=2.5 tpm=600 tokens=500 paused_until=0.000>"
    assert "rps=unlimited tpm=unlimited" in repr(ProviderQuota(0, 0, 0.0))
