"""A provider's health level, from the outcomes of its health checks and of its real calls."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from aiproc.server.config import FailoverConfig, HealthConfig
from aiproc.server.resilience.ewma import WindowedRate
from aiproc.server.resilience.transition import Transition


class HealthLevel(IntEnum):
    """Ordered from best to worst, so `a < b` means a is healthier and `sorted` ranks them."""

    HEALTHY = 0
    DEGRADED = 1
    CRITICAL = 2
    UNAVAILABLE = 3


@dataclass(frozen=True, slots=True)
class HealthSettings:
    degraded_error_rate: float = 0.1
    """Error rate over the window at which a provider is DEGRADED. Default 0.1."""
    critical_error_rate: float = 0.5
    """Error rate over the window at which a provider is CRITICAL. Default 0.5."""
    failure_threshold: int = 3
    """Consecutive failures that make a provider UNAVAILABLE. Default 3."""
    success_threshold: int = 2
    """Consecutive successes that bring an UNAVAILABLE provider back. Default 2."""
    window: float = 60.0
    """Seconds of outcomes the error rate is computed over. Default 60s."""
    min_samples: int = 5
    """Outcomes the window must hold before its error rate grades the provider, so
    one early failure does not brand it CRITICAL. Default 5."""

    def __post_init__(self) -> None:
        if not 0 < self.degraded_error_rate <= self.critical_error_rate <= 1:
            raise ValueError("need 0 < degraded_error_rate <= critical_error_rate <= 1")
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("failure_threshold and success_threshold must be at least 1")
        if not self.window > 0:
            raise ValueError("window must be positive")


def health_settings(health: HealthConfig, failover: FailoverConfig) -> HealthSettings:
    """Settings from [health], with the UNAVAILABLE threshold from [failover]."""
    return HealthSettings(
        degraded_error_rate=health.degraded_error_rate,
        critical_error_rate=health.critical_error_rate,
        failure_threshold=failover.health_check_threshold,
        success_threshold=health.success_threshold,
        window=health.window,
    )


class HealthTracker:
    """One provider's level: UNAVAILABLE after a run of failures, else graded by its error rate.

    `failure_threshold` failures in a row make it UNAVAILABLE, and only
    `success_threshold` successes in a row end that. Otherwise the error rate
    over the last `window` seconds decides: CRITICAL at or above
    `critical_error_rate`, DEGRADED at or above `degraded_error_rate`, else
    HEALTHY; with no outcome in the window, HEALTHY. Leaving UNAVAILABLE keeps
    the window, so a provider just back reads CRITICAL or DEGRADED until its
    successes outweigh its recent errors.
    """

    def __init__(self, settings: HealthSettings) -> None:
        self.settings = settings
        self._window = WindowedRate(settings.window)
        self._failures_in_a_row = 0
        self._successes_in_a_row = 0
        self._unavailable = False
        self._reported = HealthLevel.HEALTHY
        self._latest = float("-inf")

    def level(self, now: float) -> HealthLevel:
        """The level at `now` (errors age out of the window as time passes)."""
        self._latest = max(self._latest, now)
        if self._unavailable:
            return HealthLevel.UNAVAILABLE
        return self.rate_level(now)

    def rate_level(self, now: float) -> HealthLevel:
        """The level from the error rate alone, ignoring a run of failures."""
        calls, failures = self._window.counts(now)
        if calls < self.settings.min_samples:
            return HealthLevel.HEALTHY
        rate = failures / calls
        if rate >= self.settings.critical_error_rate:
            return HealthLevel.CRITICAL
        if rate >= self.settings.degraded_error_rate:
            return HealthLevel.DEGRADED
        return HealthLevel.HEALTHY

    def record(self, now: float, ok: bool) -> Transition[HealthLevel] | None:
        """Counts one outcome; returns the change of level since the previous `record`, if any.

        A change caused by time alone (errors leaving the window) is reported by
        the next `record`, with `at` set to that call's time.
        """
        self._window.add(now, ok)
        if ok:
            self._successes_in_a_row += 1
            self._failures_in_a_row = 0
            if self._successes_in_a_row >= self.settings.success_threshold:
                self._unavailable = False
        else:
            self._failures_in_a_row += 1
            self._successes_in_a_row = 0
            if self._failures_in_a_row >= self.settings.failure_threshold:
                self._unavailable = True
        level = self.level(now)
        if level is self._reported:
            return None
        transition = Transition(self._reported, level, now)
        self._reported = level
        return transition

    def forget(self, now: float) -> Transition[HealthLevel] | None:
        """Starts afresh, as a provider that has just proven it recovered; returns the change."""
        self._window.clear()
        self._failures_in_a_row = 0
        self._successes_in_a_row = 0
        self._unavailable = False
        self._latest = max(self._latest, now)
        if self._reported is HealthLevel.HEALTHY:
            return None
        transition = Transition(self._reported, HealthLevel.HEALTHY, now)
        self._reported = HealthLevel.HEALTHY
        return transition

    def __repr__(self) -> str:
        # repr has no clock: it describes the tracker at the latest time it was given.
        if self._latest == float("-inf"):
            return f"<HealthTracker {HealthLevel.HEALTHY.name} no outcomes yet>"
        total, failed = self._window.counts(self._latest)
        return (
            f"<HealthTracker {self.level(self._latest).name} errors={failed}/{total} in "
            f"{self.settings.window:g}s, {self._failures_in_a_row} failures in a row>"
        )
