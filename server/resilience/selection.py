"""Provider selection: which providers to try for one call, in order of preference.

The caller removes providers that may not take the call (disabled, breaker
open, at their concurrency limit), asks `Selector.rank` for the order of the
rest, and walks that list: the first is tried, a failover goes to the next.

Health comes before the strategy. Candidates are stably partitioned by health
level (HEALTHY, then DEGRADED, then CRITICAL, then UNAVAILABLE should one slip
through) and the strategy orders each level on its own. A struggling provider
is then only tried when every healthier one has been, whatever the strategy
says about its cost or speed, yet it stays in the list, so it keeps getting the
calls it needs to show it has recovered. Every tie falls back to priority,
then to the configured order, never to hash order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiproc.server.resilience.health import HealthLevel


@dataclass(frozen=True, slots=True)
class Candidate:
    """What selection knows about one eligible provider at the moment of the call."""

    name: str
    priority: int = 1
    """Lower is preferred."""
    weight: float = 1.0
    """Share of traffic under `weighted`; 0 means only after every weighted one."""
    order: int = 0
    """Index in the configuration, the last tie-breaker."""
    in_flight: int = 0
    max_concurrent: int = 10
    latency_ewma: float | None = None
    """Seconds, averaged; None until the provider has answered once."""
    error_rate: float = 0.0
    """Failed share of recent calls, 0..1."""
    price_per_1k_input: float = 0.0
    """0 means unknown."""
    price_per_1k_output: float = 0.0
    """0 means unknown."""
    health: HealthLevel = HealthLevel.HEALTHY


def _priority(c: Candidate) -> tuple[int, int]:
    return c.priority, c.order


def _latency(c: Candidate) -> tuple[bool, float]:
    # An unmeasured provider goes first: ranked last it would never be called,
    # so never measured, and least_latency would stay blind to it for ever.
    # One call is all it takes; from then on its average speaks for it.
    return c.latency_ewma is not None, c.latency_ewma or 0.0


def _errors(c: Candidate) -> tuple[bool, float]:
    return False, c.error_rate


def _cost(c: Candidate) -> tuple[bool, float]:
    # Only a provider with no price at all is unknown; it goes after every
    # priced one rather than passing for free.
    price = c.price_per_1k_input + c.price_per_1k_output
    return price <= 0, price


def _load(c: Candidate) -> tuple[bool, float]:
    # No capacity at all counts as busier than any share of a real one.
    if c.max_concurrent <= 0:
        return True, 0.0
    return False, c.in_flight / c.max_concurrent


# Each key sorts ascending on (bool, value); the bool sets apart what the value
# cannot rank: unmeasured latency (first), no price or no capacity (last).
_SORT_KEYS: dict[str, Callable[[Candidate], tuple[bool, float]]] = {
    "least_latency": _latency,
    "least_errors": _errors,
    "least_cost": _cost,
    "least_busy": _load,
}

STRATEGIES = (
    "priority",
    "round_robin",
    "weighted",
    "random",
    "least_latency",
    "least_errors",
    "least_cost",
    "least_busy",
)


class Selector:
    """Ranks candidates by one strategy; round_robin and the random ones keep state across calls."""

    def __init__(self, strategy: str, rng: random.Random) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self._rng = rng
        self.calls = 0
        """Times `rank` was called; round_robin starts each call one place further on."""

    def rank(self, candidates: Sequence[Candidate]) -> list[str]:
        """Every candidate's name, most preferred first."""
        by_priority = sorted(candidates, key=_priority)
        levels: dict[HealthLevel, list[Candidate]] = {}
        for candidate in by_priority:
            levels.setdefault(candidate.health, []).append(candidate)
        ranked: list[str] = []
        for level in sorted(levels):
            ranked.extend(c.name for c in self._order(levels[level]))
        self.calls += 1
        return ranked

    def _order(self, group: list[Candidate]) -> list[Candidate]:
        """Orders one health level; `group` arrives in priority order, so stable sorts tie on it."""
        if self.strategy == "priority":
            return group
        if self.strategy == "round_robin":
            start = self.calls % len(group)
            return group[start:] + group[:start]
        if self.strategy == "random":
            shuffled = list(group)
            self._rng.shuffle(shuffled)
            return shuffled
        if self.strategy == "weighted":
            return sorted(group, key=self._race)
        return sorted(group, key=_SORT_KEYS[self.strategy])

    def _race(self, c: Candidate) -> float:
        # Each candidate draws an exponential finish time with rate = weight and
        # the earliest wins (Efraimidis-Spirakis): the first place goes to c with
        # probability weight / total, and the rest of the order is the same
        # draw repeated without the winner.
        if c.weight <= 0:
            return math.inf
        return -math.log(1.0 - self._rng.random()) / c.weight

    def __repr__(self) -> str:
        return f"<Selector {self.strategy} calls={self.calls}>"
