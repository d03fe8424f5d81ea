"""What every section of the benchmark suite (bench/suite.py) returns, and how it is shown.

A section measures one thing, each figure as a ratio or against a baseline run
in the same run where it can be, and says which target it is held to.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Measure:
    """One figure: `value` in `unit`, and the target it is held to, if any."""

    name: str
    value: float
    unit: str = ""
    target: str = ""
    """As a reader would write it, e.g. ">= 4" or "<= 3 ms"; "" when there is none."""
    met: bool | None = None
    """Whether the target was met; None when there is no target."""

    def shown(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        magnitude = abs(self.value)
        digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
        return f"{self.value:,.{digits}f}{' ' + self.unit if self.unit else ''}"


@dataclass(slots=True)
class SectionResult:
    title: str
    measures: list[Measure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Everything measured, for the JSON file."""
    note: str = ""
    """Why the section was skipped or what to keep in mind reading it."""


@dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    """The --quick mode: fewer and shorter rounds, the whole suite under 2 minutes."""
    folder: Path
    """A scratch folder for configs, logs and data, removed after the run."""


Section = Callable[[Settings], Awaitable[SectionResult]]


def at_least(name: str, value: float, goal: float, unit: str = "") -> Measure:
    suffix = f" {unit}" if unit else ""
    return Measure(name, value, unit, f">= {goal:g}{suffix}", value >= goal)


def at_most(name: str, value: float, goal: float, unit: str = "") -> Measure:
    suffix = f" {unit}" if unit else ""
    return Measure(name, value, unit, f"<= {goal:g}{suffix}", value <= goal)


def table(results: Sequence[SectionResult]) -> str:
    """One table of every section's measures."""
    rows = [("section", "measure", "value", "target", "met")]
    for result in results:
        if not result.measures:
            rows.append((result.title, result.note or "(nothing measured)", "", "", ""))
        for measure in result.measures:
            met = "" if measure.met is None else "yes" if measure.met else "NO"
            rows.append((result.title, measure.name, measure.shown(), measure.target, met))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"* {r.title}: {r.note}" for r in results if r.note and r.measures]
    return "\n".join(lines + notes)
