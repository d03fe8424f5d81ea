"""A tenant's share of the rate limit, as the queue in this process keeps it."""

from __future__ import annotations

from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.server.resilience.rate_share import RateShares, ShareSchedule, Spacing, spacing


def test_a_share_spaces_starts_at_its_part_of_the_rate_with_its_part_of_the_burst() -> None:
    assert spacing(0.25, rate=8.0, burst=8) == Spacing(interval=0.5, tolerance=0.5)
    # A share of a burst below one start is still one start.
    assert spacing(0.25, rate=8.0, burst=1) == Spacing(interval=0.5, tolerance=0.0)
    assert spacing(1.0, rate=8.0, burst=8) is None


def test_a_tenants_own_share_wins_over_the_default() -> None:
    quotas = QuotasConfig(
        rate_share_per_tenant=0.5,
        tenants=(
            TenantQuota("batch", rate_share=0.25),
            TenantQuota("interactive", rate_share=1.0),
            TenantQuota("queue-only", max_queued=3),
        ),
    )
    shares = RateShares(quotas, rate=8.0, burst=1)
    assert shares.of("batch") == Spacing(0.5, 0.0)
    assert shares.of("interactive") is None
    assert shares.of("queue-only") == shares.of("anyone") == Spacing(0.25, 0.0)


def test_a_capped_tenant_starts_its_burst_then_one_per_interval() -> None:
    schedule = ShareSchedule(RateShares(QuotasConfig(rate_share_per_tenant=0.25), 8.0, 8))
    now = 1000.0
    for _ in range(2):
        assert schedule.ready_at("a", now) == now
        schedule.book("a", now)
    assert schedule.ready_at("a", now) == now + 0.5
    schedule.book("a", now + 0.5)
    assert schedule.ready_at("a", now + 0.5) == now + 1.0
    # Other tenants have budgets of their own.
    assert schedule.ready_at("b", now) == now


def test_no_window_holds_more_starts_than_its_share_allows() -> None:
    rate, burst = 2.0, 2.0  # a share of 0.25 of 8 per second, burst 8
    schedule = ShareSchedule(RateShares(QuotasConfig(rate_share_per_tenant=0.25), 8.0, 8))
    starts = []
    now = 1000.0
    while now < 1030.0:  # a tenant that always wants to start, checking every 10 ms
        if schedule.ready_at("a", now) <= now:
            schedule.book("a", now)
            starts.append(now)
        now += 0.01
    for window in (0.5, 1.0, 5.0, 30.0):
        for i, first in enumerate(starts):
            started = sum(1 for s in starts[i:] if s < first + window)
            assert started <= rate * window + burst
    assert len(starts) >= rate * 30.0  # and it does get its share


def test_an_uncapped_tenant_is_never_held_nor_remembered() -> None:
    schedule = ShareSchedule(RateShares(QuotasConfig(), rate=1.0, burst=1))
    for _ in range(100):
        assert schedule.ready_at("a", 1000.0) == 1000.0
        schedule.book("a", 1000.0)
    assert len(schedule) == 0


def test_tenants_that_come_and_go_leave_nothing_behind() -> None:
    schedule = ShareSchedule(RateShares(QuotasConfig(rate_share_per_tenant=0.5), 2.0, 1))
    for n in range(100):  # one start each, one second apart: every earlier TAT has passed
        schedule.book(f"tenant-{n}", 1000.0 + n)
    assert len(schedule) == 1
