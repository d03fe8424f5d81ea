"""Which provider takes the next call, and what each call's outcome does to the providers.

The manager applies the policies (breaker, health, quota pauses, selection
strategy, failback) to the provider slots. It never sleeps: when no provider
can take a call it says how long to wait, and the runner waits.

What this replica learns about a provider from its own calls (a Retry-After
pause, its breaker opening or closing again) it tells the other replicas
through `ProviderSignals`; what they learn arrives as `remote_paused` and
`remote_breaker`, which act on it here and tell nobody.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from aiproc.server.core.errors import InvalidRequest, ProviderError
from aiproc.server.core.events import EventBus, EventKind, ProviderEvent
from aiproc.server.core.provider_pool import ProviderSlot
from aiproc.server.core.signals import NoSignals, ProviderSignals
from aiproc.server.resilience.breaker import BreakerState, Permit
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.health import HealthLevel
from aiproc.server.resilience.selection import Selector
from aiproc.server.resilience.transition import Transition

MAX_PAUSE = 3600.0
"""Longest pause a provider's retry hint can impose, in seconds."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to make one call to `slot` (a breaker permit, when breakers are on)."""

    slot: ProviderSlot
    permit: Permit | None


@dataclass(frozen=True, slots=True)
class NoProvider:
    """No provider can take a call now."""

    wait: float | None
    """Seconds until one may (a pause ending); None when only time will tell."""
    reasons: str
    """Each provider's reason, e.g. "primary: circuit open; backup: paused 1.5s"."""


class FailoverManager:
    """Chooses providers by strategy among the eligible ones and records call outcomes."""

    def __init__(
        self,
        slots: Sequence[ProviderSlot],
        selector: Selector,
        *,
        health_checks: bool,
        clock: Clock,
        events: EventBus,
        signals: ProviderSignals | None = None,
    ) -> None:
        """`signals` tells the other replicas; by default (a lone server) nobody is told."""
        if not slots:
            raise ValueError("at least one provider is required")
        self.slots = list(slots)
        self._by_name = {slot.name: slot for slot in self.slots}
        self._selector = selector
        # Without active checks nothing could ever bring an UNAVAILABLE provider
        # back, so then health only ranks providers and never excludes them.
        self._health_excludes = health_checks
        self._clock = clock
        self._events = events
        self._signals: ProviderSignals = signals if signals is not None else NoSignals()
        self._all_down = False

    def choose(self, avoid: Collection[str] = ()) -> Lease | NoProvider:
        """A lease on the best eligible provider, preferring those not in `avoid`.

        Providers in `avoid` (those that already failed this task) are used only
        when no other is eligible. A provider with free capacity beats a busier
        one ranked higher; when all are busy the best one is leased and the
        caller waits for its capacity.
        """
        now = self._clock.monotonic()
        self._end_failbacks(now)
        eligible: list[ProviderSlot] = []
        blocked: list[tuple[float | None, str]] = []
        for slot in self.slots:
            reason, wait = self._blocked(slot, now)
            if reason:
                blocked.append((wait, f"{slot.name}: {reason}"))
            else:
                eligible.append(slot)
        if eligible:
            lease = self._lease(self._ranked(eligible, avoid, now), now)
            if lease is not None:
                self._all_down = False
                return lease
        waits = [w for w, _ in blocked if w is not None]
        reasons = "; ".join(r for _, r in blocked) or "every provider is busy probing"
        if not self._all_down:
            self._all_down = True
            self._events.publish(
                ProviderEvent(EventKind.ALL_PROVIDERS_DOWN, at=self._clock.wall(), reason=reasons)
            )
        return NoProvider(min(waits) if waits else None, reasons)

    def has_alternative(self, exclude: str) -> bool:
        """Whether a provider other than `exclude` could take a call now."""
        now = self._clock.monotonic()
        return any(s.name != exclude and not self._blocked(s, now)[0] for s in self.slots)

    def _blocked(self, slot: ProviderSlot, now: float) -> tuple[str, float | None]:
        """Why `slot` cannot take a call now ("" if it can), and for how long if known."""
        if not slot.config.enabled:
            return "disabled", None
        if slot.breaker is not None:
            state = slot.breaker.state(now)
            if state is BreakerState.OPEN:
                return "circuit open", None
            if state is BreakerState.HALF_OPEN and not slot.probing(now):
                return "circuit half-open, probes in flight", None
        paused = slot.quota.paused_for(now)
        if paused > 0:
            return f"paused {paused:.1f}s (rate limited)", paused
        if self._health_excludes and slot.health.level(now) is HealthLevel.UNAVAILABLE:
            return "unavailable (health checks failing)", None
        return "", None

    def _ranked(
        self, eligible: list[ProviderSlot], avoid: Collection[str], now: float
    ) -> list[ProviderSlot]:
        fresh = [slot for slot in eligible if slot.name not in avoid] or eligible
        candidates = [
            slot.candidate(now, sticky_unavailable=self._health_excludes) for slot in fresh
        ]
        ranked = [self._by_name[name] for name in self._selector.rank(candidates)]
        # A half-open provider goes first, so its probes happen and it can close
        # again (the reference filtered it out for good). A provider just back
        # waits out its failback delay at the end of the line, so traffic
        # returns to it only once it has held.
        return sorted(ranked, key=lambda s: (not s.probing(now), s.failback_until > now))

    def _lease(self, ranked: list[ProviderSlot], now: float) -> Lease | None:
        with_room = [s for s in ranked if s.leased < s.config.max_concurrent_requests]
        for slot in with_room or ranked:
            permit = None
            if slot.breaker is not None:
                permit = slot.breaker.allow(now)
                if permit is None:
                    continue
            slot.leased += 1
            return Lease(slot, permit)
        return None

    def _end_failbacks(self, now: float) -> None:
        for slot in self.slots:
            if slot.failback_until and now >= slot.failback_until:
                slot.failback_until = 0.0
                self._events.publish(
                    ProviderEvent(
                        EventKind.FAILBACK,
                        at=self._clock.wall(),
                        provider=slot.name,
                        reason="failback delay passed",
                    )
                )

    # -- outcomes --------------------------------------------------------------

    def succeeded(self, lease: Lease, latency: float) -> None:
        now = self._clock.monotonic()
        slot = lease.slot
        slot.leased -= 1
        slot.requests += 1
        slot.latency.update(latency)
        slot.errors.add(now, ok=True)
        slot.record_health(now, ok=True)
        if slot.breaker is not None and lease.permit is not None:
            self._breaker_verdict(slot, slot.breaker.record_success(now, lease.permit))

    def failed(self, lease: Lease, error: ProviderError) -> None:
        """A failed call; a request the provider rightly refused says nothing about its health."""
        now = self._clock.monotonic()
        slot = lease.slot
        slot.requests += 1
        if isinstance(error, InvalidRequest):
            self.released(lease)
            return
        slot.leased -= 1
        slot.failures += 1
        slot.errors.add(now, ok=False)
        slot.record_health(now, ok=False)
        if slot.breaker is not None and lease.permit is not None:
            self._breaker_verdict(slot, slot.breaker.record_failure(now, lease.permit))

    def rate_limited(self, lease: Lease, pause: float, reason: str) -> None:
        """The provider asked us to wait: no call to it starts for `pause` seconds."""
        now = self._clock.monotonic()
        slot = lease.slot
        slot.requests += 1
        slot.rate_limited += 1
        pause = min(pause, MAX_PAUSE)  # what the other replicas are told, too
        self._pause(slot, now, pause, reason)
        self.released(lease)
        self._signals.provider_paused(slot.name, pause)

    def released(self, lease: Lease) -> None:
        """The call ended with no verdict on the provider (cancelled, refused as invalid)."""
        lease.slot.leased -= 1
        if lease.slot.breaker is not None and lease.permit is not None:
            lease.slot.breaker.release(self._clock.monotonic(), lease.permit)

    def _pause(self, slot: ProviderSlot, now: float, seconds: float, reason: str) -> None:
        # A provider asking for longer is broken, or out of quota for the day: an hour on,
        # one call finds out which. Uncapped, "Retry-After: 1e300" paused it for good (and
        # Stats could not even express the wait).
        seconds = min(seconds, MAX_PAUSE)
        slot.quota.pause(now, seconds)
        self._events.publish(
            ProviderEvent(
                EventKind.PAUSED,
                at=self._clock.wall(),
                provider=slot.name,
                reason=f"{reason}; pausing {seconds:.2f}s",
            )
        )

    def _breaker_verdict(self, slot: ProviderSlot, moved: Transition[BreakerState] | None) -> None:
        """Tells the other replicas when a call's verdict opened or closed `slot`'s breaker."""
        if moved is not None and moved.to_state is not BreakerState.HALF_OPEN:
            self._signals.breaker_changed(slot.name, moved.to_state is BreakerState.OPEN)

    # -- what other replicas saw ---------------------------------------------------

    def remote_paused(self, provider: str, seconds: float) -> None:
        """Another replica was rate limited by `provider`: no call to it starts for `seconds`.

        The pause runs from now (a longer pause already running stays). Unknown
        providers (replicas may be configured differently) and pauses that are
        not a positive finite number of seconds are ignored.
        """
        slot = self._by_name.get(provider)
        if slot is None or not 0 < seconds < math.inf:
            return
        self._pause(slot, self._clock.monotonic(), seconds, "rate limited on another replica")

    def remote_breaker(self, provider: str, opened: bool) -> None:
        """Another replica's breaker for `provider` opened (or closed again): so does this one's.

        A forced OPEN half-opens after its recovery timeout as usual; an OPEN
        breaker told to open stays as it is. The slot publishes the usual events.
        Unknown providers, and replicas without breakers, ignore it.
        """
        slot = self._by_name.get(provider)
        if slot is None or slot.breaker is None:
            return
        now = self._clock.monotonic()
        if opened:
            slot.breaker.force_open(now, "the breaker opened on another replica")
        else:
            slot.breaker.force_close(now, "the breaker closed on another replica")

    def failed_over(self, task_id: str, source: str, target: str, reason: str) -> None:
        self._events.publish(
            ProviderEvent(
                EventKind.FAILOVER,
                at=self._clock.wall(),
                provider=source,
                to_provider=target,
                reason=reason,
                task_id=task_id,
            )
        )

    def __repr__(self) -> str:
        return f"<FailoverManager {self._selector.strategy} over {[s.name for s in self.slots]}>"
