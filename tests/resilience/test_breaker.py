from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from aiproc.server.config import CircuitBreakerConfig
from aiproc.server.resilience.breaker import (
    PRESETS,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Permit,
    breaker_settings,
)
from aiproc.server.resilience.transition import Transition

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
# default preset: 5 failures / 60s window / 10 min requests / 30s recovery / 3 probes
DEFAULT = PRESETS["default"]


def make(
    settings: BreakerSettings = DEFAULT,
) -> tuple[CircuitBreaker, list[Transition[BreakerState]]]:
    events: list[Transition[BreakerState]] = []
    return CircuitBreaker(settings, 0.0, on_transition=events.append), events


def permit(breaker: CircuitBreaker, now: float) -> Permit:
    granted = breaker.allow(now)
    assert granted is not None, f"refused at {now}: {breaker!r}"
    return granted


def call(breaker: CircuitBreaker, now: float, ok: bool) -> None:
    p = permit(breaker, now)
    if ok:
        breaker.record_success(now, p)
    else:
        breaker.record_failure(now, p)


def trip(breaker: CircuitBreaker, now: float) -> None:
    for _ in range(breaker.settings.failure_threshold):
        call(breaker, now, ok=False)
    assert breaker.state(now) is OPEN


# -- settings -----------------------------------------------------------------


def test_presets_hold_the_documented_values() -> None:
    assert PRESETS["default"] == BreakerSettings(5, 60.0, 10, 30.0, 3)
    assert PRESETS["strict"] == BreakerSettings(3, 30.0, 5, 15.0, 2)
    assert PRESETS["lenient"] == BreakerSettings(10, 120.0, 20, 60.0, 5)
    for name in ("default", "strict", "lenient"):
        assert breaker_settings(CircuitBreakerConfig(preset=name)) == PRESETS[name]


def test_non_zero_config_fields_replace_the_presets_values() -> None:
    cfg = CircuitBreakerConfig(preset="strict", recovery_timeout=99.0, half_open_max_probes=7)
    assert breaker_settings(cfg) == BreakerSettings(3, 30.0, 5, 99.0, 7)


def test_custom_takes_every_value_from_the_config_and_needs_them_all() -> None:
    cfg = CircuitBreakerConfig(
        preset="custom",
        failure_threshold=2,
        window=10.0,
        min_requests=4,
        recovery_timeout=5.0,
        half_open_max_probes=1,
    )
    assert breaker_settings(cfg) == BreakerSettings(2, 10.0, 4, 5.0, 1)
    with pytest.raises(ValueError, match="recovery_timeout"):
        breaker_settings(replace(cfg, recovery_timeout=0.0))


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="preset"):
        breaker_settings(CircuitBreakerConfig(preset="paranoid"))


@pytest.mark.parametrize(
    "field", ["failure_threshold", "window", "min_requests", "recovery_timeout"]
)
def test_settings_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        replace(DEFAULT, **{field: 0})


# -- opening --------------------------------------------------------------------


def test_failures_in_a_row_open_it_even_with_little_traffic() -> None:
    breaker, events = make()
    for t in range(4):
        call(breaker, t * 100.0, ok=False)  # far apart: the window never holds 10 calls
    assert breaker.state(400.0) is CLOSED
    call(breaker, 400.0, ok=False)
    assert breaker.state(400.0) is OPEN
    assert events == [Transition(CLOSED, OPEN, 400.0)]


def test_a_success_breaks_the_run_of_failures() -> None:
    breaker, events = make()
    for ok in [False] * 4 + [True] + [False] * 4:
        call(breaker, 0.0, ok)
    assert breaker.state(0.0) is CLOSED
    assert events == []


def test_interleaved_failures_open_it_once_the_window_holds_min_requests() -> None:
    breaker, events = make()
    # F S F S F S F S F: 5 failures, never 2 in a row, only 9 calls: not yet.
    for i in range(9):
        call(breaker, float(i), ok=i % 2 == 1)
    assert breaker.state(9.0) is CLOSED
    # The 10th call completes min_requests; 5/10 failed reaches the threshold.
    call(breaker, 9.0, ok=True)
    assert breaker.state(9.0) is OPEN
    assert events == [Transition(CLOSED, OPEN, 9.0)]


def test_failures_older_than_the_window_do_not_count() -> None:
    def run(gap: float) -> BreakerState:
        breaker, _ = make()
        now = 0.0
        for _ in range(2):  # two bursts of 9 calls, F S F S F S F S F: 5 failures each
            for i in range(9):
                if breaker.state(now) is OPEN:
                    return OPEN
                call(breaker, now, ok=i % 2 == 1)
                now += 1.0
            now += gap
        return breaker.state(now)

    assert run(gap=0.0) is OPEN  # control: together they trip it
    assert run(gap=61.0) is CLOSED


# -- open, half-open, recovery ----------------------------------------------------


def test_open_refuses_until_the_recovery_timeout_then_probes() -> None:
    breaker, events = make()
    trip(breaker, 100.0)
    assert breaker.allow(100.0) is None
    assert breaker.allow(129.9) is None
    assert breaker.state(129.9) is OPEN
    probe = breaker.allow(130.0)
    assert probe is not None
    assert probe.probe
    assert events[-1] == Transition(OPEN, HALF_OPEN, 130.0)


def test_half_open_change_is_dated_when_due_not_when_noticed() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    assert breaker.state(500.0) is HALF_OPEN
    assert events == [Transition(CLOSED, OPEN, 0.0), Transition(OPEN, HALF_OPEN, 30.0)]


def test_half_open_lets_at_most_max_probes_in_flight() -> None:
    breaker, _ = make()
    trip(breaker, 0.0)
    probes = [permit(breaker, 30.0) for _ in range(3)]
    assert breaker.allow(30.0) is None
    assert breaker.allow(45.0) is None
    breaker.release(45.0, probes[0])  # no verdict: frees the slot, counts nothing
    assert breaker.state(45.0) is HALF_OPEN
    assert breaker.allow(45.0) is not None
    assert breaker.allow(45.0) is None
    assert breaker.probes_in_flight == 3


def test_first_probe_success_closes_and_counting_starts_afresh() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    probe = permit(breaker, 30.0)
    breaker.record_success(31.0, probe)
    assert breaker.state(31.0) is CLOSED
    assert events[-1] == Transition(HALF_OPEN, CLOSED, 31.0)
    # The failures that opened it are forgotten: 4 new ones do not re-open it.
    for _ in range(4):
        call(breaker, 32.0, ok=False)
    assert breaker.state(32.0) is CLOSED


def test_probe_failure_reopens_with_a_fresh_recovery_timer() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    probe = permit(breaker, 30.0)
    breaker.record_failure(40.0, probe)
    assert breaker.state(40.0) is OPEN
    assert breaker.allow(69.9) is None
    assert breaker.allow(70.0) is not None
    assert [(e.to_state, e.at) for e in events] == [
        (OPEN, 0.0),
        (HALF_OPEN, 30.0),
        (OPEN, 40.0),
        (HALF_OPEN, 70.0),
    ]


def test_it_closes_again_after_any_number_of_cycles() -> None:
    breaker, events = make()
    now = 0.0
    for cycle in range(200):
        trip(breaker, now)
        now += 30.0
        first = permit(breaker, now)
        if cycle % 3 == 0:  # sometimes the first probe fails and it re-opens
            breaker.record_failure(now, first)
            now += 30.0
            first = permit(breaker, now)
        second = permit(breaker, now)
        breaker.record_success(now + 1.0, first)
        breaker.release(now + 1.0, second)
        now += 1.0
        assert breaker.state(now) is CLOSED, f"cycle {cycle}: {breaker!r}"
        assert breaker.probes_in_flight == 0
    assert sum(1 for e in events if e.to_state is CLOSED) == 200


# -- permits from another epoch ------------------------------------------------------


def test_calls_admitted_while_closed_cannot_steer_the_half_open_breaker() -> None:
    breaker, events = make()
    slow = [permit(breaker, 0.0) for _ in range(4)]  # in flight when it trips
    trip(breaker, 1.0)
    probe = permit(breaker, 31.0)
    assert breaker.probes_in_flight == 1
    breaker.record_failure(32.0, slow[0])
    breaker.record_success(32.0, slow[1])
    breaker.release(32.0, slow[2])
    assert breaker.state(32.0) is HALF_OPEN  # neither re-opened nor closed by them
    assert breaker.probes_in_flight == 1  # and they took no probe slot with them
    assert [permit(breaker, 32.0) for _ in range(2)]
    assert breaker.allow(32.0) is None
    breaker.record_success(33.0, probe)
    assert breaker.state(33.0) is CLOSED
    breaker.record_failure(34.0, slow[3])  # a late failure from before the trip
    assert "failures=0/0" in repr(breaker)
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, CLOSED]


def test_a_probe_outliving_its_half_open_phase_still_holds_its_slot() -> None:
    breaker, _ = make()
    trip(breaker, 0.0)
    failing, lingering = permit(breaker, 30.0), permit(breaker, 30.0)
    breaker.record_failure(31.0, failing)  # re-opens; `lingering` is still in flight
    assert breaker.state(61.0) is HALF_OPEN
    assert len([permit(breaker, 61.0) for _ in range(2)]) == 2
    assert breaker.allow(61.0) is None  # 2 new + the lingering one = 3
    breaker.record_success(62.0, lingering)  # stale verdict: frees the slot only
    assert breaker.state(62.0) is HALF_OPEN
    assert breaker.allow(62.0) is not None


def test_settling_a_permit_twice_changes_nothing() -> None:
    breaker, _ = make()
    trip(breaker, 0.0)
    probe = permit(breaker, 30.0)
    others = [permit(breaker, 30.0) for _ in range(2)]
    breaker.record_failure(31.0, probe)
    breaker.release(31.0, probe)  # e.g. a `finally:` after the verdict
    breaker.record_success(31.0, probe)
    assert breaker.state(31.0) is OPEN
    assert breaker.probes_in_flight == 2
    for other in others:
        breaker.release(31.0, other)
        breaker.release(31.0, other)
    assert breaker.probes_in_flight == 0


def test_hours_of_flapping_traffic_keep_every_invariant() -> None:
    """A provider down 10 minutes of every 20, under random concurrent traffic, for 6 hours."""
    rng = random.Random(1234)
    breaker, events = make()
    in_flight: list[tuple[float, Permit]] = []
    now = 0.0
    while now < 6 * 3600:
        now += rng.expovariate(2.0)
        down = int(now // 600) % 2 == 1
        finished = [(end, p) for end, p in in_flight if end <= now]
        in_flight = [(end, p) for end, p in in_flight if end > now]
        for _, p in finished:
            roll = rng.random()
            if roll < 0.05:
                breaker.release(now, p)
            elif down or roll < 0.052:  # 0.2% errors while up
                breaker.record_failure(now, p)
            else:
                breaker.record_success(now, p)
        state = breaker.state(now)
        probes = sum(1 for _, p in in_flight if p.probe and not p.settled)
        assert breaker.probes_in_flight == probes <= DEFAULT.half_open_max_probes
        granted = breaker.allow(now)
        if state is OPEN:
            assert granted is None
        if granted is not None:
            in_flight.append((now + rng.uniform(0.1, 5.0), granted))
        phase_age = now % 600
        if not down and phase_age > 120:
            # Up for 2 minutes: recovery (30s) plus a probe has had time to close it.
            assert state is CLOSED, f"t={now:.1f} {breaker!r}"
        if down and phase_age > 30:
            assert state is not CLOSED, f"t={now:.1f} {breaker!r}"
    trips = sum(1 for e in events if e.from_state is CLOSED)
    closes = sum(1 for e in events if e.to_state is CLOSED)
    assert trips == 18  # once per down phase, never from the noise
    assert closes == 17  # after every down phase but the last, which ends the run


# -- repr --------------------------------------------------------------------------


def test_repr_explains_each_state() -> None:
    breaker, _ = make()
    call(breaker, 0.0, ok=False)
    call(breaker, 0.0, ok=True)
    assert repr(breaker) == "<CircuitBreaker CLOSED failures=1/2 in 60s, 0 in a row>"
    trip(breaker, 10.0)
    breaker.state(22.3)
    assert repr(breaker) == "<CircuitBreaker OPEN after 5 failures in a row, half-open in 17.7s>"
    permit(breaker, 40.0)
    assert repr(breaker) == "<CircuitBreaker HALF_OPEN probes=1/3 in flight>"


def test_a_busy_provider_with_a_few_scattered_errors_stays_closed() -> None:
    breaker, _ = make()
    now = 0.0
    for i in range(200):  # one failure in every 20 calls: 5% of a busy minute
        call(breaker, now, ok=i % 20 != 0)
        now += 0.25
    assert breaker.state(now) is CLOSED
    fresh, _ = make()
    # A like count with most calls failing (though never 5 in a row) opens it.
    for ok in [False, True, False] * 3 + [False]:
        call(fresh, now, ok=ok)
    assert fresh.state(now) is OPEN


# -- verdicts report their move ----------------------------------------------------


def test_a_verdict_returns_the_move_it_caused_and_only_that() -> None:
    breaker, _ = make()
    for _ in range(4):
        assert breaker.record_failure(0.0, permit(breaker, 0.0)) is None
    assert breaker.record_failure(0.0, permit(breaker, 0.0)) == Transition(CLOSED, OPEN, 0.0)
    probe = permit(breaker, 30.0)  # the time-driven HALF_OPEN is no verdict's doing
    assert breaker.record_failure(31.0, probe) == Transition(HALF_OPEN, OPEN, 31.0)
    probe = permit(breaker, 61.0)
    assert breaker.record_success(62.0, probe) == Transition(HALF_OPEN, CLOSED, 62.0)
    assert breaker.record_success(62.0, permit(breaker, 62.0)) is None
    assert breaker.record_success(62.0, probe) is None  # settled already


def test_cause_says_why_it_last_moved() -> None:
    breaker, _ = make()
    assert breaker.cause == ""
    trip(breaker, 0.0)
    assert breaker.cause == "5 failures in a row"
    probe = permit(breaker, 30.0)
    assert breaker.cause == "recovery timeout passed"
    breaker.record_success(30.0, probe)
    assert breaker.cause == "probe succeeded"


# -- forced moves --------------------------------------------------------------------


def test_force_open_opens_a_closed_breaker_which_then_half_opens_as_usual() -> None:
    breaker, events = make()
    moved = breaker.force_open(10.0, "opened elsewhere")
    assert moved == Transition(CLOSED, OPEN, 10.0)
    assert events == [moved]
    assert breaker.state(10.0) is OPEN
    assert breaker.cause == "opened elsewhere"
    assert repr(breaker) == "<CircuitBreaker OPEN after opened elsewhere, half-open in 30.0s>"
    assert breaker.allow(39.9) is None
    probe = permit(breaker, 40.0)
    assert probe.probe
    breaker.record_success(41.0, probe)
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, CLOSED]


def test_force_open_leaves_an_open_breaker_and_its_timer_alone() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    assert breaker.force_open(20.0) is None
    assert breaker.force_open(25.0) is None
    assert breaker.cause == "5 failures in a row"
    assert breaker.state(30.0) is HALF_OPEN  # due 30s after the trip, not after the force
    assert events == [Transition(CLOSED, OPEN, 0.0), Transition(OPEN, HALF_OPEN, 30.0)]


def test_force_open_reopens_a_half_open_breaker_with_a_fresh_timer() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    probes = [permit(breaker, 30.0) for _ in range(2)]
    assert breaker.force_open(35.0) == Transition(HALF_OPEN, OPEN, 35.0)
    breaker.record_success(36.0, probes[0])  # stale: it cannot close the re-opened breaker
    assert breaker.state(36.0) is OPEN
    assert breaker.probes_in_flight == 1  # but it gave its slot back
    assert breaker.allow(64.9) is None
    assert breaker.state(65.0) is HALF_OPEN
    breaker.record_failure(65.0, probes[1])  # stale: it cannot re-open it either
    assert breaker.state(65.0) is HALF_OPEN
    assert breaker.probes_in_flight == 0
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, OPEN, HALF_OPEN]


def test_a_force_open_noticed_late_first_reports_the_half_open_that_was_due() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    assert breaker.force_open(50.0) == Transition(HALF_OPEN, OPEN, 50.0)
    assert events[1:] == [Transition(OPEN, HALF_OPEN, 30.0), Transition(HALF_OPEN, OPEN, 50.0)]
    assert breaker.state(79.9) is OPEN


def test_force_close_closes_an_open_breaker_and_ignores_calls_from_before() -> None:
    breaker, events = make()
    slow = [permit(breaker, 0.0) for _ in range(5)]  # in flight across both moves
    assert breaker.force_open(1.0) == Transition(CLOSED, OPEN, 1.0)
    moved = breaker.force_close(2.0, "closed elsewhere")
    assert moved == Transition(OPEN, CLOSED, 2.0)
    assert events[-1] == moved
    assert breaker.cause == "closed elsewhere"
    for late in slow:  # five failures, admitted before: they neither count nor re-open it
        assert breaker.record_failure(3.0, late) is None
    assert breaker.state(3.0) is CLOSED
    assert repr(breaker) == "<CircuitBreaker CLOSED failures=0/0 in 60s, 0 in a row>"
    assert breaker.allow(3.0) is not None


def test_force_close_ends_half_open_and_stale_probes_only_free_their_slots() -> None:
    breaker, events = make()
    trip(breaker, 0.0)
    probe = permit(breaker, 30.0)
    assert breaker.force_close(31.0) == Transition(HALF_OPEN, CLOSED, 31.0)
    assert breaker.probes_in_flight == 1
    assert breaker.record_failure(32.0, probe) is None
    assert breaker.state(32.0) is CLOSED
    assert breaker.probes_in_flight == 0
    assert "failures=0/0" in repr(breaker)
    assert [e.to_state for e in events] == [OPEN, HALF_OPEN, CLOSED]


def test_force_close_leaves_a_closed_breaker_and_its_count_alone() -> None:
    breaker, events = make()
    for _ in range(4):
        call(breaker, 0.0, ok=False)
    assert breaker.force_close(1.0) is None
    assert breaker.force_close(1.0) is None
    assert events == []
    call(breaker, 1.0, ok=False)  # the fifth in a row still trips it
    assert breaker.state(1.0) is OPEN


def test_forced_moves_keep_the_probe_count_true_under_random_traffic() -> None:
    rng = random.Random(99)
    breaker, events = make()
    in_flight: list[Permit] = []
    now = 0.0
    for _ in range(5000):
        now += rng.expovariate(1.0)
        roll = rng.random()
        if roll < 0.02:
            breaker.force_open(now)
        elif roll < 0.04:
            breaker.force_close(now)
        elif in_flight and roll < 0.5:
            p = in_flight.pop(rng.randrange(len(in_flight)))
            verdict = rng.choice([breaker.record_success, breaker.record_failure, breaker.release])
            verdict(now, p)
        elif (granted := breaker.allow(now)) is not None:
            in_flight.append(granted)
        assert breaker.probes_in_flight == sum(1 for p in in_flight if p.probe)
        assert breaker.probes_in_flight <= DEFAULT.half_open_max_probes
    for earlier, later in itertools.pairwise(events):
        assert earlier.to_state is later.from_state
        assert earlier.to_state is not later.to_state
