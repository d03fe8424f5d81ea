"""What the failover manager tells other replicas about a provider, and what it does with
what they tell it, on a fake clock."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from aiproc.server.config import ProviderConfig, load_config
from aiproc.server.core.errors import TransientError
from aiproc.server.core.events import EventBus, EventKind, ProviderEvent
from aiproc.server.core.failover import MAX_PAUSE, FailoverManager, Lease, NoProvider
from aiproc.server.core.provider_pool import ProviderSlot, build_slots
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.resilience.breaker import BreakerState
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.selection import Selector

# The default breaker preset: 5 failures in a row open it, probes after 30s.
TRIP = 5
RECOVERY = 30.0
BREAKER_EVENTS = {EventKind.BREAKER_OPENED, EventKind.BREAKER_HALF_OPEN, EventKind.RECOVERED}


class StubProvider:
    kind = "test"
    model = "stub"
    context_window = 8192

    def __init__(self, name: str) -> None:
        self.name = name

    async def complete(self, request: CompletionRequest) -> Completion:
        raise AssertionError("the manager never calls providers")

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def aclose(self) -> None:
        return None


class RecordingSignals:
    """A ProviderSignals that keeps what this replica would tell the others."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float | bool]] = []

    def provider_paused(self, provider: str, seconds: float) -> None:
        self.sent.append(("paused", provider, seconds))

    def breaker_changed(self, provider: str, opened: bool) -> None:
        self.sent.append(("breaker", provider, opened))


class RecordingBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ProviderEvent] = []

    def publish(self, event: ProviderEvent) -> None:
        self.seen.append(event)
        super().publish(event)

    def kinds(self) -> list[EventKind]:
        return [event.kind for event in self.seen]


class Replica:
    """One replica's failover manager over providers "primary" (and "backup")."""

    def __init__(self, *names: str, **sections: Any) -> None:
        config = load_config(env={}, overrides=sections)
        self.clock = FakeClock()
        self.events = RecordingBus()
        self.signals = RecordingSignals()
        entries = [
            (StubProvider(name), ProviderConfig(name=name, kind="test", priority=i + 1))
            for i, name in enumerate(names or ("primary",))
        ]
        slots = build_slots(entries, config, clock=self.clock, events=self.events)
        self.failover = FailoverManager(
            slots,
            Selector(config.failover.strategy, random.Random(1)),
            health_checks=False,
            clock=self.clock,
            events=self.events,
            signals=self.signals,
        )

    def slot(self, name: str = "primary") -> ProviderSlot:
        return next(s for s in self.failover.slots if s.name == name)

    def breaker_state(self, name: str = "primary") -> BreakerState:
        breaker = self.slot(name).breaker
        assert breaker is not None
        return breaker.state(self.clock.monotonic())

    def lease(self) -> Lease:
        choice = self.failover.choose()
        assert isinstance(choice, Lease), choice
        return choice

    def fail(self, lease: Lease) -> None:
        self.failover.failed(lease, TransientError("503 Service Unavailable"))

    def trip(self) -> None:
        for _ in range(TRIP):
            self.fail(self.lease())
        assert self.breaker_state() is BreakerState.OPEN


# -- what this replica tells the others ---------------------------------------------


def test_a_local_rate_limit_pauses_here_and_tells_the_others_the_pause() -> None:
    replica = Replica()
    replica.failover.rate_limited(replica.lease(), 2.5, "429 Too Many Requests")
    assert replica.signals.sent == [("paused", "primary", 2.5)]
    assert replica.slot().quota.paused_for(replica.clock.monotonic()) == 2.5
    assert replica.events.kinds() == [EventKind.PAUSED]


def test_a_local_trip_and_the_probe_that_ends_it_are_told_once_each() -> None:
    replica = Replica()
    replica.trip()
    assert replica.signals.sent == [("breaker", "primary", True)]
    replica.clock.advance(RECOVERY)
    probe = replica.lease()  # half-open: a fact of this replica's clock, told to nobody
    assert probe.permit is not None
    assert probe.permit.probe
    assert replica.signals.sent == [("breaker", "primary", True)]
    replica.failover.succeeded(probe, latency=0.2)
    assert replica.signals.sent == [("breaker", "primary", True), ("breaker", "primary", False)]
    assert [k for k in replica.events.kinds() if k in BREAKER_EVENTS] == [
        EventKind.BREAKER_OPENED,
        EventKind.BREAKER_HALF_OPEN,
        EventKind.RECOVERED,
    ]


def test_a_failed_probe_reopening_the_breaker_is_told() -> None:
    replica = Replica()
    replica.trip()
    replica.clock.advance(RECOVERY)
    replica.fail(replica.lease())
    assert replica.breaker_state() is BreakerState.OPEN
    assert replica.signals.sent == [("breaker", "primary", True), ("breaker", "primary", True)]


def test_late_failures_of_calls_admitted_before_the_trip_tell_nobody() -> None:
    replica = Replica()
    late = [replica.lease() for _ in range(3)]
    replica.trip()
    for lease in late:
        replica.fail(lease)
    assert replica.signals.sent == [("breaker", "primary", True)]


def test_calls_that_do_not_move_the_breaker_tell_nobody() -> None:
    replica = Replica()
    for _ in range(TRIP - 1):
        replica.fail(replica.lease())
    replica.failover.succeeded(replica.lease(), latency=0.1)
    replica.failover.released(replica.lease())
    assert replica.signals.sent == []


def test_a_manager_without_signals_works_alone() -> None:
    config = load_config(env={}, overrides={})
    clock = FakeClock()
    events = EventBus()
    slots = build_slots(
        [(StubProvider("primary"), ProviderConfig(name="primary", kind="test"))],
        config,
        clock=clock,
        events=events,
    )
    failover = FailoverManager(
        slots,
        Selector("priority", random.Random(1)),
        health_checks=False,
        clock=clock,
        events=events,
    )
    lease = failover.choose()
    assert isinstance(lease, Lease)
    failover.rate_limited(lease, 1.0, "429")
    assert events.counts[EventKind.PAUSED] == 1


# -- what the others tell this replica ------------------------------------------------


def test_a_remote_pause_pauses_from_now_with_the_local_event_and_no_echo() -> None:
    replica = Replica()
    replica.clock.advance(100.0)
    replica.failover.remote_paused("primary", 4.0)
    assert replica.signals.sent == []
    assert replica.slot().quota.paused_for(replica.clock.monotonic()) == 4.0
    assert replica.slot().rate_limited == 0  # none of this replica's calls was refused
    [event] = replica.events.seen
    assert event.kind is EventKind.PAUSED
    assert event.provider == "primary"
    assert event.reason == "rate limited on another replica; pausing 4.00s"
    choice = replica.failover.choose()
    assert isinstance(choice, NoProvider)
    assert choice.wait == 4.0
    replica.clock.advance(4.0)
    assert isinstance(replica.failover.choose(), Lease)


def test_a_shorter_remote_pause_does_not_cut_a_longer_one() -> None:
    replica = Replica()
    replica.failover.rate_limited(replica.lease(), 10.0, "429")
    replica.failover.remote_paused("primary", 1.0)
    assert replica.slot().quota.paused_for(replica.clock.monotonic()) == 10.0
    assert replica.signals.sent == [("paused", "primary", 10.0)]


@pytest.mark.parametrize("seconds", [0.0, -3.0, math.nan, math.inf])
def test_a_remote_pause_that_is_no_duration_is_ignored(seconds: float) -> None:
    replica = Replica()
    replica.failover.remote_paused("primary", seconds)
    assert replica.slot().quota.paused_for(replica.clock.monotonic()) == 0.0
    assert replica.events.seen == []


def test_a_remote_open_opens_here_without_echo_then_half_opens_as_usual() -> None:
    replica = Replica()
    replica.clock.advance(5.0)
    replica.failover.remote_breaker("primary", opened=True)
    replica.failover.remote_breaker("primary", opened=True)  # already open: as it was
    assert replica.breaker_state() is BreakerState.OPEN
    assert replica.signals.sent == []
    [opened] = replica.events.seen
    assert opened.kind is EventKind.BREAKER_OPENED
    assert "the breaker opened on another replica" in opened.reason
    assert isinstance(replica.failover.choose(), NoProvider)
    replica.clock.advance(RECOVERY)
    probe = replica.lease()
    assert probe.permit is not None
    assert probe.permit.probe
    assert EventKind.BREAKER_HALF_OPEN in replica.events.kinds()
    # Its own probe closing it is this replica's news: the others hear it.
    replica.failover.succeeded(probe, latency=0.1)
    assert replica.breaker_state() is BreakerState.CLOSED
    assert replica.signals.sent == [("breaker", "primary", False)]


def test_a_remote_close_closes_here_without_echo() -> None:
    replica = Replica()
    replica.trip()
    replica.clock.advance(7.0)
    replica.failover.remote_breaker("primary", opened=False)
    replica.failover.remote_breaker("primary", opened=False)  # already closed: as it was
    assert replica.breaker_state() is BreakerState.CLOSED
    assert replica.signals.sent == [("breaker", "primary", True)]  # the trip; no echo
    recovered = [e for e in replica.events.seen if e.kind is EventKind.RECOVERED]
    assert len(recovered) == 1
    assert recovered[0].reason == "the breaker closed on another replica"
    assert recovered[0].downtime == 7.0
    assert replica.slot().down_since is None
    lease = replica.lease()
    assert lease.permit is not None
    assert not lease.permit.probe


def test_a_remote_close_ends_half_open_and_the_probe_in_flight_then_counts_for_nothing() -> None:
    replica = Replica()
    replica.trip()
    replica.clock.advance(RECOVERY)
    probe = replica.lease()
    replica.failover.remote_breaker("primary", opened=False)
    replica.fail(probe)  # a verdict from the half-open phase that is over
    assert replica.breaker_state() is BreakerState.CLOSED
    assert replica.signals.sent == [("breaker", "primary", True)]


def test_calls_leased_before_remote_moves_do_not_steer_the_breaker() -> None:
    replica = Replica()
    before = [replica.lease() for _ in range(TRIP)]
    replica.failover.remote_breaker("primary", opened=True)
    replica.failover.remote_breaker("primary", opened=False)
    for lease in before:
        replica.fail(lease)
    assert replica.breaker_state() is BreakerState.CLOSED
    assert replica.signals.sent == []


def test_unknown_providers_are_ignored() -> None:
    replica = Replica("primary", "backup")
    replica.failover.remote_paused("elsewhere", 5.0)
    replica.failover.remote_breaker("elsewhere", opened=True)
    replica.failover.remote_breaker("elsewhere", opened=False)
    assert replica.events.seen == []
    assert replica.signals.sent == []
    now = replica.clock.monotonic()
    for name in ("primary", "backup"):
        assert replica.breaker_state(name) is BreakerState.CLOSED
        assert replica.slot(name).quota.paused_for(now) == 0.0


def test_a_replica_without_breakers_ignores_remote_breaker_moves() -> None:
    replica = Replica(failover={"circuit_breaker_enabled": False})
    replica.failover.remote_breaker("primary", opened=True)
    assert replica.slot().breaker is None
    assert replica.events.seen == []
    assert isinstance(replica.failover.choose(), Lease)


def test_a_pause_asked_for_is_at_most_an_hour_here_and_elsewhere() -> None:
    replica = Replica()
    replica.failover.rate_limited(replica.lease(), 1e300, "429 Retry-After: 1e300")
    assert replica.signals.sent == [("paused", "primary", MAX_PAUSE)]
    assert replica.slot().quota.paused_for(replica.clock.monotonic()) == MAX_PAUSE
    other = Replica()
    other.failover.remote_paused("primary", 1e300)
    assert other.slot().quota.paused_for(other.clock.monotonic()) == MAX_PAUSE


# -- capacity --------------------------------------------------------------------------


def capped_manager(*caps: tuple[str, int]) -> FailoverManager:
    """A manager over providers of these names and max_concurrent_requests, in priority order."""
    config = load_config(env={}, overrides={})
    entries = [
        (
            StubProvider(name),
            ProviderConfig(name=name, kind="test", priority=i + 1, max_concurrent_requests=cap),
        )
        for i, (name, cap) in enumerate(caps)
    ]
    clock, events = FakeClock(), EventBus()
    return FailoverManager(
        build_slots(entries, config, clock=clock, events=events),
        Selector(config.failover.strategy, random.Random(1)),
        health_checks=False,
        clock=clock,
        events=events,
        signals=RecordingSignals(),
    )


def chosen(manager: FailoverManager) -> Lease:
    choice = manager.choose()
    assert isinstance(choice, Lease), choice
    return choice


def test_leases_not_yet_settled_count_against_a_providers_capacity() -> None:
    """A task chooses before its call starts (it waits for the rate limit first), so choices
    made meanwhile must see the capacity it took, or they all queue behind one provider."""
    manager = capped_manager(("narrow", 2), ("wide", 10))

    names = [chosen(manager).slot.name for _ in range(5)]

    assert names == ["narrow", "narrow", "wide", "wide", "wide"]


def test_every_way_a_lease_ends_gives_its_capacity_back() -> None:
    manager = capped_manager(("narrow", 3), ("wide", 10))
    first, second, third = chosen(manager), chosen(manager), chosen(manager)
    assert chosen(manager).slot.name == "wide"

    manager.succeeded(first, 0.1)
    manager.failed(second, TransientError("503 Service Unavailable"))
    manager.released(third)

    assert [chosen(manager).slot.name for _ in range(3)] == ["narrow"] * 3
    assert next(s for s in manager.slots if s.name == "narrow").leased == 3
