from __future__ import annotations

import pytest

from aiproc.server.config import FailoverConfig, HealthConfig
from aiproc.server.resilience.health import (
    HealthLevel,
    HealthSettings,
    HealthTracker,
    health_settings,
)
from aiproc.server.resilience.transition import Transition

HEALTHY, DEGRADED, CRITICAL, UNAVAILABLE = (
    HealthLevel.HEALTHY,
    HealthLevel.DEGRADED,
    HealthLevel.CRITICAL,
    HealthLevel.UNAVAILABLE,
)


def feed(tracker: HealthTracker, now: float, outcomes: str) -> list[Transition[HealthLevel]]:
    """Records "s"/"f" outcomes at `now`; returns the transitions they caused."""
    changes = [tracker.record(now, ok=c == "s") for c in outcomes]
    return [c for c in changes if c is not None]


def test_levels_are_ordered_from_best_to_worst() -> None:
    assert HEALTHY < DEGRADED < CRITICAL < UNAVAILABLE
    assert sorted([UNAVAILABLE, HEALTHY, CRITICAL, DEGRADED]) == [
        HEALTHY,
        DEGRADED,
        CRITICAL,
        UNAVAILABLE,
    ]


def test_settings_come_from_health_and_the_failover_threshold() -> None:
    health = HealthConfig(
        degraded_error_rate=0.2, critical_error_rate=0.6, success_threshold=4, window=30.0
    )
    settings = health_settings(health, FailoverConfig(health_check_threshold=7))
    assert settings == HealthSettings(0.2, 0.6, 7, 4, 30.0)
    assert health_settings(HealthConfig(), FailoverConfig()) == HealthSettings()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"degraded_error_rate": 0.6, "critical_error_rate": 0.5},
        {"degraded_error_rate": 0.0},
        {"critical_error_rate": 1.5},
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"window": 0.0},
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        HealthSettings(**kwargs)  # type: ignore[arg-type]


def test_no_outcomes_means_healthy() -> None:
    tracker = HealthTracker(HealthSettings())
    assert tracker.level(0.0) is HEALTHY


def test_degraded_starts_at_the_degraded_error_rate() -> None:
    tracker = HealthTracker(HealthSettings())
    assert feed(tracker, 0.0, "s" * 10) == []
    feed(tracker, 0.0, "f")  # 1/11 = 9%
    assert tracker.level(0.0) is HEALTHY
    tracker = HealthTracker(HealthSettings())
    feed(tracker, 0.0, "s" * 9)
    assert feed(tracker, 0.0, "f") == [Transition(HEALTHY, DEGRADED, 0.0)]  # 1/10 = 10%
    assert tracker.level(0.0) is DEGRADED


def test_critical_starts_at_the_critical_error_rate() -> None:
    tracker = HealthTracker(HealthSettings())
    feed(tracker, 0.0, "ssfsfsfsfs")  # 4/10: degraded
    assert tracker.level(0.0) is DEGRADED
    feed(tracker, 0.0, "f")  # 5/11 = 45%
    assert tracker.level(0.0) is DEGRADED
    assert feed(tracker, 0.0, "f") == [Transition(DEGRADED, CRITICAL, 0.0)]  # 6/12
    feed(tracker, 0.0, "s")  # 6/13 = 46%: back to degraded
    assert tracker.level(0.0) is DEGRADED


def test_failures_in_a_row_make_it_unavailable_exactly_at_the_threshold() -> None:
    tracker = HealthTracker(HealthSettings(failure_threshold=3))
    feed(tracker, 0.0, "s" * 20)
    feed(tracker, 1.0, "ff")
    assert tracker.level(1.0) is HEALTHY  # 2/22 = 9%, and only 2 in a row
    assert feed(tracker, 1.0, "f") == [Transition(HEALTHY, UNAVAILABLE, 1.0)]


def test_leaving_unavailable_takes_success_threshold_successes_in_a_row() -> None:
    tracker = HealthTracker(HealthSettings(failure_threshold=3, success_threshold=2))
    feed(tracker, 0.0, "fff")
    assert tracker.level(0.0) is UNAVAILABLE
    feed(tracker, 1.0, "sfs")  # a failure resets the run of successes
    assert tracker.level(1.0) is UNAVAILABLE
    # 4 failures / 7 in the window: back, but critical until errors thin out.
    assert feed(tracker, 2.0, "s") == [Transition(UNAVAILABLE, CRITICAL, 2.0)]


def test_unavailable_does_not_wear_off_with_time() -> None:
    tracker = HealthTracker(HealthSettings())
    feed(tracker, 0.0, "fff")
    assert tracker.level(3600.0) is UNAVAILABLE


def test_errors_age_out_of_the_window() -> None:
    tracker = HealthTracker(HealthSettings(window=60.0))
    feed(tracker, 0.0, "sfsfsf")  # 3/6
    assert tracker.level(30.0) is CRITICAL
    assert tracker.level(61.0) is HEALTHY
    # The change time brought is reported by the next record, dated then.
    assert tracker.record(90.0, ok=True) == Transition(CRITICAL, HEALTHY, 90.0)


def test_record_reports_only_changes() -> None:
    tracker = HealthTracker(HealthSettings(min_samples=1))
    changes = feed(tracker, 0.0, "f" + "s" * 20 + "fff")
    assert [(c.from_state, c.to_state) for c in changes] == [
        (HEALTHY, CRITICAL),  # 1/1
        (CRITICAL, DEGRADED),  # 1/3
        (DEGRADED, HEALTHY),  # 1/11
        (HEALTHY, DEGRADED),  # 3/23
        (DEGRADED, UNAVAILABLE),  # 3 in a row
    ]


def test_repr_shows_level_and_counts() -> None:
    tracker = HealthTracker(HealthSettings(min_samples=1))
    assert repr(tracker) == "<HealthTracker HEALTHY no outcomes yet>"
    feed(tracker, 5.0, "sssf")
    assert repr(tracker) == "<HealthTracker DEGRADED errors=1/4 in 60s, 1 failures in a row>"


def test_the_error_rate_grades_only_once_the_window_holds_min_samples() -> None:
    tracker = HealthTracker(HealthSettings(min_samples=5))
    feed(tracker, 0.0, "sff")
    assert tracker.level(3.0) is HEALTHY  # 2 of 3 failed, but 3 samples are too few to judge
    feed(tracker, 3.0, "ff")
    assert tracker.level(6.0) is UNAVAILABLE  # a run of failures needs no minimum
    assert tracker.rate_level(6.0) is CRITICAL  # 4 of 5


def test_forget_starts_afresh_after_a_proven_recovery() -> None:
    tracker = HealthTracker(HealthSettings(min_samples=1))
    feed(tracker, 0.0, "ffff")
    assert tracker.level(0.0) is UNAVAILABLE
    moved = tracker.forget(1.0)
    assert moved is not None
    assert (moved.from_state, moved.to_state) == (UNAVAILABLE, HEALTHY)
    assert tracker.level(1.0) is HEALTHY
    assert tracker.forget(2.0) is None
