"""A one-line progress bar for `submit-batch`, redrawn in place on a terminal."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

WIDTH = 24
"""Characters of the bar itself."""
REDRAW_EVERY = 0.1
"""Seconds between redraws, so thousands of updates cost a few writes."""


@dataclass(slots=True)
class Tally:
    """How far a batch has come."""

    total: int
    succeeded: int = 0
    failed: int = 0
    bad: int = 0
    in_flight: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.bad


def render(tally: Tally, elapsed: float) -> str:
    """The bar and counts as one line, e.g. `[######------] 50% 100/200 ...`."""
    fraction = tally.done / tally.total if tally.total else 1.0
    filled = round(WIDTH * min(fraction, 1.0))
    return (
        f"[{'#' * filled}{'-' * (WIDTH - filled)}] {fraction:4.0%} {tally.done}/{tally.total}"
        f" | {tally.succeeded} ok, {tally.failed} failed, {tally.bad} bad"
        f" | {tally.in_flight} in flight | {elapsed:.1f}s"
    )


def summary(tally: Tally, elapsed: float) -> str:
    """The closing line of a batch."""
    return (
        f"{tally.done} of {tally.total} lines in {elapsed:.1f}s: "
        f"{tally.succeeded} succeeded, {tally.failed} failed, {tally.bad} bad"
    )


class ProgressBar:
    """Draws a `Tally` on a terminal; when `live` is false it stays silent until `finish`."""

    def __init__(
        self,
        tally: Tally,
        out: TextIO,
        *,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tally = tally
        self._out = out
        self._live = live
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None
        self._width = 0

    def __repr__(self) -> str:
        return f"<ProgressBar [{render(self.tally, self.elapsed)}]>"

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    def update(self) -> None:
        """Redraws the bar, at most every REDRAW_EVERY seconds."""
        now = self._clock()
        if self._live and (self._drawn_at is None or now - self._drawn_at >= REDRAW_EVERY):
            self._draw(render(self.tally, now - self._started))
            self._drawn_at = now

    def note(self, line: str) -> None:
        """Prints a line of its own above the bar."""
        self._clear()
        print(line, file=self._out, flush=True)
        self._drawn_at = None
        self.update()

    def finish(self) -> None:
        """Replaces the bar with the batch's summary line."""
        self._clear()
        print(f"aiproc: {summary(self.tally, self.elapsed)}", file=self._out, flush=True)

    def _draw(self, line: str) -> None:
        # Pad over the previous line, which may have been longer.
        self._out.write("\r" + line.ljust(self._width))
        self._out.flush()
        self._width = len(line)

    def _clear(self) -> None:
        if self._width:
            self._out.write("\r" + " " * self._width + "\r")
            self._width = 0
