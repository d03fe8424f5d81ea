"""Moving statistics of call outcomes: a latency average and an error rate over a time window."""

from __future__ import annotations

import math


class Ewma:
    """An exponentially weighted moving average: each sample moves the value `alpha` of the way.

    It has no value until the first sample, so a caller can tell "never measured"
    from "measured fast".
    """

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.value: float | None = None

    def update(self, sample: float) -> float:
        """Folds in one sample and returns the new average."""
        if self.value is None:
            self.value = sample
        else:
            self.value += self.alpha * (sample - self.value)
        return self.value

    def __repr__(self) -> str:
        shown = "unmeasured" if self.value is None else f"{self.value:.4f}"
        return f"<Ewma alpha={self.alpha} {shown}>"


class WindowedRate:
    """Counts successes and failures of the last `window` seconds in a fixed ring of time slices.

    Memory stays at `slices` counters whatever the traffic. The price is
    precision: a sample stops counting between `window - window / slices` and
    `window` seconds after it was added, depending on where in its slice it fell.
    """

    __slots__ = (
        "_failed",
        "_ids",
        "_latest",
        "_summed",
        "_summed_at",
        "_total",
        "_width",
        "slices",
        "window",
    )

    def __init__(self, window: float, slices: int = 60) -> None:
        if not window > 0:
            raise ValueError("window must be positive")
        if slices < 1:
            raise ValueError("slices must be at least 1")
        self.window = window
        self.slices = slices
        self._width = window / slices
        # _ids[i] is the absolute slice number whose counts ring position i holds;
        # a position is reused (and zeroed) when a newer slice lands on it.
        self._ids: list[int | None] = [None] * slices
        self._total = [0] * slices
        self._failed = [0] * slices
        self._latest = -math.inf
        # The window's (calls, failures) as of slice `_summed_at`, kept up to date by
        # `add`: every provider choice asks for them, and a full count walks all slices.
        self._summed = (0, 0)
        self._summed_at: int | None = None

    def _slice(self, now: float) -> int:
        self._latest = max(self._latest, now)
        return math.floor(now / self._width)

    def add(self, now: float, ok: bool) -> None:
        """Records one outcome at time `now`."""
        current = self._slice(now)
        pos = current % self.slices
        if self._ids[pos] != current:
            self._ids[pos] = current
            self._total[pos] = 0
            self._failed[pos] = 0
        self._total[pos] += 1
        if not ok:
            self._failed[pos] += 1
        if current == self._summed_at:
            calls, failures = self._summed
            self._summed = (calls + 1, failures + (not ok))
        else:  # an outcome for another slice than the sums': count afresh when asked
            self._summed_at = None

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) recorded in the window that ends at `now`."""
        current = self._slice(now)
        if current == self._summed_at:
            return self._summed
        oldest = current - self.slices + 1
        total = failed = 0
        for slice_id, calls, failures in zip(self._ids, self._total, self._failed, strict=True):
            if slice_id is not None and oldest <= slice_id <= current:
                total += calls
                failed += failures
        self._summed, self._summed_at = (total, failed), current
        return total, failed

    def error_rate(self, now: float) -> float | None:
        """Failures / calls in the window, or None when the window holds no calls."""
        total, failed = self.counts(now)
        return failed / total if total else None

    def clear(self) -> None:
        """Forgets every outcome."""
        self._ids = [None] * self.slices
        self._summed_at = None

    def __repr__(self) -> str:
        # repr has no clock: it shows the window that ends at the latest time seen.
        total, failed = self.counts(self._latest) if self._latest > -math.inf else (0, 0)
        return f"<WindowedRate {failed}/{total} failed in {self.window:g}s>"
