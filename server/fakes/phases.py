"""Phases of behaviour for a fake provider, and the schedule that plays them in order.

A phase gives its requests one fault (or none) until it runs out of requests
or of time; then the next phase starts; after the last one the fake answers
normally again. Some scripts:

    Phase(HttpError(500), requests=30)                  the next 30 requests fail, then success
    Phase(HttpError(503), requests=3)                   succeed after 3 failures
    Phase(HttpError(429, retry_after=2))                every request, until told otherwise
    Phase(Refuse(), duration=5)                         not listening for 5 seconds
    Phase(HttpError(500), failure_rate=0.3, seed=1)     30% of requests fail, reproducibly

The schedule is a plain state machine over a clock: it decides, the server acts.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiproc.server.fakes.faults import Fault, Refuse

__all__ = ["Phase", "PhaseSchedule"]


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of behaviour: `fault` for its requests until `requests` or `duration` runs out."""

    fault: Fault | None = None
    """What the phase's requests get; None answers them normally. Default None."""
    requests: int | None = None
    """The phase ends after this many requests. Default None: no count limit."""
    duration: float | None = None
    """Seconds from the phase's start to its end. Default None: no time limit.

    With `requests` too, whichever runs out first ends the phase."""
    failure_rate: float = 1.0
    """The chance that each request gets `fault`; the rest are answered normally. Default 1."""
    seed: int = 0
    """Seeds the draws behind `failure_rate`, so a run can be replayed. Default 0."""

    def __post_init__(self) -> None:
        if self.requests is not None and self.requests < 1:
            raise ValueError("a phase's requests must be >= 1")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("a phase's duration must be > 0 seconds")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("a phase's failure_rate must be between 0 and 1")
        if isinstance(self.fault, Refuse) and (
            self.requests is not None or self.failure_rate != 1.0
        ):
            # While refusing no request arrives, so nothing could be counted or drawn.
            raise ValueError("a refuse phase ends by duration only, and refuses everything")

    def __str__(self) -> str:
        parts = [self.fault.spec if self.fault is not None else "normal"]
        if self.failure_rate != 1.0:
            parts.append(f"at {self.failure_rate:.0%} (seed {self.seed})")
        if self.requests is not None:
            parts.append(f"for {self.requests} requests")
        if self.duration is not None:
            parts.append(f"for {self.duration:g}s")
        return " ".join(parts)


class PhaseSchedule:
    """Which phase is current at the clock's time, and which fault each arriving request gets."""

    def __init__(self, now: Callable[[], float]) -> None:
        """`now` is a monotonic clock in seconds; phase durations are measured on it."""
        self._now = now
        self._pending: collections.deque[Phase] = collections.deque()
        self._current: Phase | None = None
        self._started = 0.0
        self._served = 0
        self._rng: random.Random | None = None
        self.generation = 0
        """Counts the changes of phase; a caller compares it to notice one."""

    def set(self, phases: Iterable[Phase]) -> None:
        """Replaces the schedule; the first of `phases` starts now, none means normal answers."""
        self._pending = collections.deque(phases)
        self._start_next(self._now())

    @property
    def current(self) -> Phase | None:
        """The phase in force now; None once the schedule has run out."""
        return self._advance(self._now())

    @property
    def upcoming(self) -> tuple[Phase, ...]:
        """The phases still to come after the current one."""
        self._advance(self._now())
        return tuple(self._pending)

    @property
    def served(self) -> int:
        """Requests the current phase has had so far."""
        self._advance(self._now())
        return self._served

    def time_left(self) -> float | None:
        """Seconds until the current phase runs out of time; None if it has no time limit."""
        now = self._now()
        phase = self._advance(now)
        if phase is None or phase.duration is None:
            return None
        return self._started + phase.duration - now

    def draw(self) -> Fault | None:
        """Counts one arriving request in the current phase; returns its fault, or None."""
        now = self._now()
        phase = self._advance(now)
        if phase is None:
            return None
        fault = phase.fault
        if self._rng is not None and self._rng.random() >= phase.failure_rate:
            fault = None
        self._served += 1
        if phase.requests is not None and self._served >= phase.requests:
            self._start_next(now)
        return fault

    def _advance(self, now: float) -> Phase | None:
        """Ends every phase whose time is up; each successor starts when its predecessor ended."""
        while self._current is not None and self._current.duration is not None:
            ends = self._started + self._current.duration
            if now < ends:
                break
            self._start_next(ends)
        return self._current

    def _start_next(self, at: float) -> None:
        phase = self._pending.popleft() if self._pending else None
        self._current = phase
        self._started = at
        self._served = 0
        self._rng = None
        if phase is not None and phase.fault is not None and phase.failure_rate < 1.0:
            self._rng = random.Random(phase.seed)
        self.generation += 1
