"""A state change of a resilience policy, reported so the caller can log or count it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

S = TypeVar("S", bound=Enum)


@dataclass(frozen=True, slots=True)
class Transition(Generic[S]):
    """The policy moved from `from_state` to `to_state` at monotonic time `at`."""

    from_state: S
    to_state: S
    at: float
    """Monotonic seconds when the change took effect (not when it was noticed)."""

    def __str__(self) -> str:
        return f"{self.from_state.name} -> {self.to_state.name} at {self.at:.3f}"
