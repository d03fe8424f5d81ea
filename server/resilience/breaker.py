"""A per-provider circuit breaker: stop calling a failing provider, then probe it back.

CLOSED lets every call through and watches outcomes; enough failures open it.
OPEN refuses calls until `recovery_timeout` has passed, then it is HALF_OPEN:
at most `half_open_max_probes` probe calls are in flight at once; the first
probe success closes it, a probe failure opens it again with a fresh timer.

Probe accounting: `allow` hands out a `Permit` that remembers the breaker's
epoch (a counter bumped on every state change) and whether it is a probe.
A probe holds its slot until its permit is settled, whatever the breaker did
meanwhile, so half-open concurrency counts every probe really in flight. A
verdict counts only in the epoch its call was admitted in: a call admitted while
CLOSED that fails after the breaker opened cannot re-open a half-open breaker
or close it, and a probe that returns after its half-open phase ended changes
nothing but its slot.

`force_open` and `force_close` move the breaker for a reason outside its own
calls (another replica's breaker opened or closed). They are state changes like
any other: a new epoch, a fresh count, `on_transition` told; a forced OPEN
half-opens after `recovery_timeout` as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from aiproc.server.config import CircuitBreakerConfig
from aiproc.server.resilience.ewma import WindowedRate
from aiproc.server.resilience.transition import Transition


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int
    """Failures in the window (with `min_requests` calls), or in a row, that open it."""
    window: float
    """Seconds of the sliding window of outcomes."""
    min_requests: int
    """Calls the window must hold before its failure count can open the breaker."""
    recovery_timeout: float
    """Seconds OPEN before probes are let through."""
    half_open_max_probes: int
    """Probe calls in flight at once while HALF_OPEN."""
    failure_rate: float = 0.5
    """Share of the window's calls that must have failed, besides the count, for the
    window to open it; so a busy provider with a few errors among many calls stays up."""

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        for name in ("failure_threshold", "min_requests", "half_open_max_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("window", "recovery_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


PRESETS = {
    "default": BreakerSettings(5, 60.0, 10, 30.0, 3),
    "strict": BreakerSettings(3, 30.0, 5, 15.0, 2),
    "lenient": BreakerSettings(10, 120.0, 20, 60.0, 5),
}


def breaker_settings(cfg: CircuitBreakerConfig) -> BreakerSettings:
    """The preset named by `cfg`, with each non-zero field of `cfg` replacing the preset's value.

    "custom" has no preset behind it: every field must be set.
    """
    base = PRESETS.get(cfg.preset)
    if base is None and cfg.preset != "custom":
        raise ValueError(f"unknown circuit breaker preset {cfg.preset!r}")

    def pick(name: str) -> float:
        value: float = getattr(cfg, name)
        return value if value or base is None else getattr(base, name)

    return BreakerSettings(
        failure_threshold=int(pick("failure_threshold")),
        window=pick("window"),
        min_requests=int(pick("min_requests")),
        recovery_timeout=pick("recovery_timeout"),
        half_open_max_probes=int(pick("half_open_max_probes")),
        failure_rate=cfg.failure_rate or (base.failure_rate if base else 0.5),
    )


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Permit:
    """Leave to make one call; settle it exactly once with a verdict or `release`.

    Settling it again is a no-op, so `finally: breaker.release(permit)` after a
    verdict is always safe.
    """

    __slots__ = ("epoch", "probe", "settled")

    def __init__(self, epoch: int, probe: bool) -> None:
        self.epoch = epoch
        self.probe = probe
        self.settled = False

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "call"
        return f"<Permit {kind} epoch={self.epoch}{' settled' if self.settled else ''}>"


class CircuitBreaker:
    """One provider's breaker; every method takes the current monotonic time."""

    def __init__(
        self,
        settings: BreakerSettings,
        now: float,
        on_transition: Callable[[Transition[BreakerState]], None] | None = None,
    ) -> None:
        """`on_transition` hears every state change once, in order, whatever caused it."""
        self.settings = settings
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._epoch = 0
        self._since = now
        self._latest = now
        self._window = WindowedRate(settings.window)
        self._in_a_row = 0
        self._probes = 0
        self._cause = ""

    # -- queries -------------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        """The state at `now`; an OPEN breaker whose recovery timeout has passed becomes HALF_OPEN.

        That change is driven by time alone, so a caller that wants to hear it
        without waiting for traffic calls this (e.g. from its health loop).
        """
        self._tick(now)
        return self._state

    @property
    def probes_in_flight(self) -> int:
        """Probe permits handed out and not yet settled."""
        return self._probes

    @property
    def cause(self) -> str:
        """Why the breaker last changed state, e.g. "5 failures in a row" or "probe succeeded"."""
        return self._cause

    # -- admission and outcomes ----------------------------------------------

    def allow(self, now: float) -> Permit | None:
        """A permit to make one call now, or None when the breaker refuses it.

        Granted always when CLOSED, never when OPEN, and when HALF_OPEN only
        while one of the `half_open_max_probes` probe slots is free.
        """
        self._tick(now)
        if self._state is BreakerState.CLOSED:
            return Permit(self._epoch, probe=False)
        free = self.settings.half_open_max_probes - self._probes
        if self._state is BreakerState.HALF_OPEN and free > 0:
            self._probes += 1
            return Permit(self._epoch, probe=True)
        return None

    def record_success(self, now: float, permit: Permit) -> Transition[BreakerState] | None:
        """The call succeeded: counts in CLOSED; a current probe's success closes the breaker.

        Returns the state change this verdict caused, if any.
        """
        if not self._settle(now, permit):
            return None
        if self._state is BreakerState.CLOSED:
            self._window.add(now, ok=True)
            self._in_a_row = 0
            # A success can complete the window's quota of calls while the
            # failures in it already reach the threshold.
            return self._maybe_trip(now)
        if self._state is BreakerState.HALF_OPEN:
            return self._move(BreakerState.CLOSED, now, "probe succeeded")
        return None

    def record_failure(self, now: float, permit: Permit) -> Transition[BreakerState] | None:
        """The call failed: may open a CLOSED breaker; a current probe's failure re-opens it.

        Returns the state change this verdict caused, if any.
        """
        if not self._settle(now, permit):
            return None
        if self._state is BreakerState.CLOSED:
            self._window.add(now, ok=False)
            self._in_a_row += 1
            return self._maybe_trip(now)
        if self._state is BreakerState.HALF_OPEN:
            return self._move(BreakerState.OPEN, now, "a failed probe")
        return None

    def release(self, now: float, permit: Permit) -> None:
        """The call ended with no verdict (cancelled, rate-limited): frees its slot only."""
        self._settle(now, permit)

    # -- moves from outside ------------------------------------------------------

    def force_open(
        self, now: float, reason: str = "forced open"
    ) -> Transition[BreakerState] | None:
        """Opens the breaker now, as a trip would; returns the move, or None when already OPEN.

        An OPEN breaker keeps its recovery timer; a HALF_OPEN one re-opens with a
        fresh one. Every permit handed out before is stale, as after any move.
        """
        self._tick(now)
        if self._state is BreakerState.OPEN:
            return None
        return self._move(BreakerState.OPEN, now, reason)

    def force_close(
        self, now: float, reason: str = "forced closed"
    ) -> Transition[BreakerState] | None:
        """Closes the breaker now, as a probe success would; returns the move, or None when CLOSED.

        A CLOSED breaker keeps its count of recent outcomes. Every permit handed
        out before is stale, as after any move; probes still hold their slots
        until settled.
        """
        self._tick(now)
        if self._state is BreakerState.CLOSED:
            return None
        return self._move(BreakerState.CLOSED, now, reason)

    # -- internals -----------------------------------------------------------

    def _settle(self, now: float, permit: Permit) -> bool:
        """Marks the permit used; True when its verdict belongs to the current epoch."""
        self._tick(now)
        if permit.settled:
            return False
        permit.settled = True
        if permit.probe:
            self._probes -= 1
        return permit.epoch == self._epoch

    def _maybe_trip(self, now: float) -> Transition[BreakerState] | None:
        s = self.settings
        total, failed = self._window.counts(now)
        if self._in_a_row >= s.failure_threshold:
            cause = f"{self._in_a_row} failures in a row"
        elif (
            total >= s.min_requests
            and failed >= s.failure_threshold
            and failed >= s.failure_rate * total
        ):
            cause = f"{failed}/{total} failures in {s.window:g}s"
        else:
            return None
        return self._move(BreakerState.OPEN, now, cause)

    def _tick(self, now: float) -> None:
        self._latest = max(self._latest, now)
        if self._state is BreakerState.OPEN:
            due = self._since + self.settings.recovery_timeout
            if now >= due:
                self._move(BreakerState.HALF_OPEN, due, "recovery timeout passed")

    def _move(self, to: BreakerState, at: float, cause: str) -> Transition[BreakerState]:
        transition = Transition(self._state, to, at)
        self._state = to
        self._since = at
        self._cause = cause
        # A new epoch makes every permit handed out before this change stale.
        self._epoch += 1
        # Every way into CLOSED or OPEN starts counting afresh: the reference
        # kept a counter across cycles and could never close again.
        self._window.clear()
        self._in_a_row = 0
        if self._on_transition is not None:
            self._on_transition(transition)
        return transition

    def __repr__(self) -> str:
        # repr has no clock: it describes the breaker at the latest time it was given.
        now = self._latest
        if self._state is BreakerState.CLOSED:
            total, failed = self._window.counts(now)
            return (
                f"<CircuitBreaker CLOSED failures={failed}/{total} in {self.settings.window:g}s, "
                f"{self._in_a_row} in a row>"
            )
        if self._state is BreakerState.OPEN:
            left = max(0.0, self._since + self.settings.recovery_timeout - now)
            return f"<CircuitBreaker OPEN after {self._cause}, half-open in {left:.1f}s>"
        return (
            f"<CircuitBreaker HALF_OPEN probes={self._probes}/"
            f"{self.settings.half_open_max_probes} in flight>"
        )
