"""Each tenant's share of the rate limit: how often it may start a task.

A tenant with share s (`[quotas]`) starts at most s * rate_limit_rps tasks per
second, after a burst of max(1, s * rate_limit_burst) once it has been idle. A
share of 1 is no cap of its own: the global limit is all there is. What is
counted is task starts, when a worker takes a task from the queue; the global
limiter still spaces every provider call, retries included.

The schedule is a GCRA per capped tenant, the algorithm of the shared global
limiter (cluster/rate_limiter.py, whose docstring proves the bound: in any
window of length w at most rate * w + burst starts), here without booking
ahead: a tenant whose next slot lies in the future is not eligible, and the
queue passes it over instead of anyone waiting for the slot. With interval T
and tolerance (burst - 1) * T, a tenant may start at `now` when

    TAT - tolerance <= now,   and starting books   TAT = max(TAT, now) + T.

The queue in this process keeps the TATs here (`ShareSchedule`); the Redis
queue keeps them in Redis and runs the same test inside its claim
(cluster/lua.py), fed with the same `Spacing`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from aiproc.server.config import QuotasConfig


@dataclass(frozen=True, slots=True)
class Spacing:
    """How a capped tenant's task starts are spaced."""

    interval: float
    """Seconds between starts at the tenant's rate: 1 / (share * rate_limit_rps)."""
    tolerance: float
    """How far ahead of its schedule the tenant may start, (burst - 1) * interval: after an
    idle spell `burst` tasks start back to back."""


def spacing(share: float, rate: float, burst: int) -> Spacing | None:
    """The spacing of a tenant with `share` of `rate` (whose burst is `burst`); None for a
    share of 1 or more, which is no cap."""
    if share >= 1.0:
        return None
    interval = 1.0 / (share * rate)
    return Spacing(interval, (max(1.0, share * burst) - 1.0) * interval)


class RateShares:
    """Every tenant's spacing, from [quotas] over [processor]'s rate limit."""

    def __init__(self, quotas: QuotasConfig, rate: float, burst: int) -> None:
        self.default = spacing(quotas.rate_share_per_tenant, rate, burst)
        """The spacing of a tenant without a rate_share of its own (None: no cap)."""
        self.own: Mapping[str, Spacing | None] = MappingProxyType(
            {
                quota.tenant: spacing(quota.rate_share, rate, burst)
                for quota in quotas.tenants
                if quota.rate_share
            }
        )
        """Tenants with a rate_share of their own, and their spacing (None: no cap)."""

    def of(self, tenant: str) -> Spacing | None:
        """`tenant`'s spacing; None if it may use the whole rate."""
        return self.own.get(tenant, self.default)

    def __repr__(self) -> str:
        capped = sum(s is not None for s in self.own.values())
        return f"<RateShares default={self.default} own={len(self.own)} ({capped} capped)>"


class ShareSchedule:
    """When each tenant may next start a task, kept in this process (see the module
    docstring); times are seconds of one monotonic clock."""

    def __init__(self, shares: RateShares) -> None:
        self._shares = shares
        # Capped tenants' TATs, least recently booked first. A TAT that has passed says
        # what a missing one says (a full burst), so those at the front are dropped as
        # time goes by: tenants that come and go leave nothing behind.
        self._tat: dict[str, float] = {}

    def ready_at(self, tenant: str, now: float) -> float:
        """When `tenant` may start its next task: `now` if it may now."""
        share = self._shares.of(tenant)
        tat = self._tat.get(tenant)
        if share is None or tat is None:
            return now
        return max(now, tat - share.tolerance)

    def book(self, tenant: str, now: float) -> None:
        """Counts a start of `tenant`'s at `now` (which `ready_at` allowed)."""
        share = self._shares.of(tenant)
        if share is None:
            return
        tat = max(self._tat.pop(tenant, now), now) + share.interval
        self._tat[tenant] = tat
        while (oldest := next(iter(self._tat))) != tenant and self._tat[oldest] <= now:
            del self._tat[oldest]

    def __len__(self) -> int:
        """Tenants whose schedule is remembered (those that started a task recently)."""
        return len(self._tat)

    def __repr__(self) -> str:
        return f"<ShareSchedule {len(self._tat)} tenants remembered>"
