"""Each provider's runtime state: breaker, health, quota, latency, errors, in-flight calls.

The policies are plain state machines from `resilience/`; a slot only holds
them together and turns their transitions into provider events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiproc.server.config import Config, ProviderConfig
from aiproc.server.core.events import EventBus, EventKind, ProviderEvent
from aiproc.server.providers.base import Provider
from aiproc.server.resilience.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    breaker_settings,
)
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.ewma import Ewma, WindowedRate
from aiproc.server.resilience.health import (
    HealthLevel,
    HealthSettings,
    HealthTracker,
    health_settings,
)
from aiproc.server.resilience.quota import ProviderQuota
from aiproc.server.resilience.selection import Candidate
from aiproc.server.resilience.transition import Transition

LATENCY_ALPHA = 0.2
_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class ProviderSnapshot:
    """One provider's state for the Stats RPC."""

    name: str
    kind: str
    model: str
    enabled: bool
    state: str
    breaker_state: str
    """"closed", "open", "half_open", or "" when breakers are off."""
    health: str
    """"healthy", "degraded", "critical" or "unavailable"."""
    in_flight: int
    requests: int
    failures: int
    rate_limited: int
    average_latency: float
    paused_for: float
    error_rate: float
    priority: int
    max_concurrent_requests: int


class ProviderSlot:
    """A provider with everything the failover manager needs to decide about it."""

    def __init__(
        self,
        provider: Provider,
        config: ProviderConfig,
        order: int,
        *,
        breaker: BreakerSettings | None,
        health: HealthSettings,
        failback_delay: float,
        clock: Clock,
        events: EventBus,
    ) -> None:
        self.provider = provider
        self.failback_delay = failback_delay
        self.config = config
        self.order = order
        self._clock = clock
        self._events = events
        now = clock.monotonic()
        self.breaker = (
            CircuitBreaker(breaker, now, on_transition=self._breaker_moved) if breaker else None
        )
        self.health = HealthTracker(health)
        self.quota = ProviderQuota(config.rps, config.tokens_per_minute, now)
        self.latency = Ewma(LATENCY_ALPHA)
        self.errors = WindowedRate(health.window)
        self.slots = asyncio.Semaphore(config.max_concurrent_requests)
        self.in_flight = 0
        self.leased = 0
        """Leases handed out and not yet settled: calls in flight, or about to start (their
        task waits for the rate limit or for this slot). Choosing counts these, since
        `in_flight` lags a choice by those waits."""
        self.requests = 0
        self.failures = 0
        self.rate_limited = 0
        self.down_since: float | None = None
        """Monotonic time the breaker opened, until it closes again."""
        self.failback_until = 0.0
        """Monotonic time before which a just-recovered provider ranks last."""
        self.breaker_gauge = 0
        """0 closed, 1 half-open, 2 open: written on each transition, so a metrics
        exporter on another thread can read it without touching the breaker."""

    def probing(self, now: float) -> bool:
        """Whether the breaker is half-open and has a probe slot free."""
        breaker = self.breaker
        return (
            breaker is not None
            and breaker.state(now) is BreakerState.HALF_OPEN
            and breaker.probes_in_flight < breaker.settings.half_open_max_probes
        )

    @property
    def name(self) -> str:
        return self.provider.name

    def candidate(self, now: float, *, sticky_unavailable: bool) -> Candidate:
        """What selection needs to know.

        With `sticky_unavailable` False only the error rate grades the provider:
        without health checks nothing could ever lift UNAVAILABLE, while errors
        age out of the rate's window.
        """
        level = self.health.level if sticky_unavailable else self.health.rate_level
        health = level(now)
        return Candidate(
            name=self.name,
            priority=self.config.priority,
            weight=self.config.weight,
            order=self.order,
            in_flight=self.leased,  # how busy it is about to be, not only this instant
            max_concurrent=self.config.max_concurrent_requests,
            latency_ewma=self.latency.value,
            error_rate=self.errors.error_rate(now) or 0.0,
            price_per_1k_input=self.config.price_per_1k_input,
            price_per_1k_output=self.config.price_per_1k_output,
            health=health,
        )

    def record_health(self, now: float, ok: bool) -> None:
        """An outcome for the health tracker (a check or a call); publishes a level change."""
        self._health_moved(self.health.record(now, ok))

    def _health_moved(self, moved: Transition[HealthLevel] | None) -> None:
        if moved is not None:
            self._publish(EventKind.HEALTH_CHANGED, health=moved.to_state.name.lower())

    def _breaker_moved(self, moved: Transition[BreakerState]) -> None:
        now = self._clock.monotonic()
        cause = self.breaker.cause if self.breaker is not None else ""
        self.breaker_gauge = _BREAKER_GAUGE[moved.to_state]
        if moved.to_state is BreakerState.OPEN:
            if self.down_since is None:
                self.down_since = moved.at
            self._publish(EventKind.BREAKER_OPENED, reason=repr(self.breaker))
        elif moved.to_state is BreakerState.HALF_OPEN:
            self._publish(EventKind.BREAKER_HALF_OPEN, reason=cause)
        elif moved.to_state is BreakerState.CLOSED:
            downtime = now - self.down_since if self.down_since is not None else 0.0
            self.down_since = None
            self.failback_until = now + self.failback_delay
            self._publish(EventKind.RECOVERED, reason=cause, downtime=downtime)
            # The errors that opened the breaker describe an outage that is over;
            # kept, they would rank the provider down long after its failback.
            self.errors.clear()
            self._health_moved(self.health.forget(now))

    def _publish(
        self, kind: EventKind, *, reason: str = "", downtime: float = 0.0, health: str = ""
    ) -> None:
        event = ProviderEvent(
            kind=kind,
            at=self._clock.wall(),
            provider=self.name,
            reason=reason,
            downtime=downtime,
            health=health,
        )
        self._events.publish(event)

    def state(self, now: float) -> str:
        """A short word for Stats."""
        if not self.config.enabled:
            return "disabled"
        if self.breaker is not None:
            breaker = self.breaker.state(now)
            if breaker is BreakerState.OPEN:
                return "open"
            if breaker is BreakerState.HALF_OPEN:
                return "half_open"
        if self.health.level(now) is HealthLevel.UNAVAILABLE:
            return "unavailable"
        if self.quota.paused_for(now) > 0:
            return "paused"
        return "available"

    def snapshot(self, now: float) -> ProviderSnapshot:
        return ProviderSnapshot(
            name=self.name,
            kind=self.provider.kind,
            model=self.provider.model,
            enabled=self.config.enabled,
            state=self.state(now),
            breaker_state=self.breaker.state(now).name.lower() if self.breaker else "",
            health=self.health.level(now).name.lower(),
            in_flight=self.in_flight,
            requests=self.requests,
            failures=self.failures,
            rate_limited=self.rate_limited,
            average_latency=self.latency.value or 0.0,
            paused_for=self.quota.paused_for(now),
            error_rate=self.errors.error_rate(now) or 0.0,
            priority=self.config.priority,
            max_concurrent_requests=self.config.max_concurrent_requests,
        )

    def __repr__(self) -> str:
        return (
            f"<ProviderSlot {self.name} in_flight={self.in_flight}/"
            f"{self.config.max_concurrent_requests} breaker={self.breaker!r}>"
        )


def build_slots(
    providers: Sequence[tuple[Provider, ProviderConfig]],
    config: Config,
    *,
    clock: Clock,
    events: EventBus,
) -> list[ProviderSlot]:
    """One slot per provider, with the breaker and health settings from config."""
    breaker = (
        breaker_settings(config.circuit_breaker)
        if config.failover.circuit_breaker_enabled
        else None
    )
    health = health_settings(config.health, config.failover)
    return [
        ProviderSlot(
            provider,
            provider_config,
            order,
            breaker=breaker,
            health=health,
            failback_delay=config.failover.failback_delay,
            clock=clock,
            events=events,
        )
        for order, (provider, provider_config) in enumerate(providers)
    ]
