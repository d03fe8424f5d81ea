from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiproc.server.resilience.ewma import Ewma, WindowedRate


def test_ewma_has_no_value_until_the_first_sample_which_it_takes_whole() -> None:
    ewma = Ewma(alpha=0.2)
    assert ewma.value is None
    assert ewma.update(1.5) == 1.5


def test_ewma_moves_alpha_of_the_way_to_each_sample() -> None:
    ewma = Ewma(alpha=0.25)
    ewma.update(1.0)
    assert ewma.update(3.0) == pytest.approx(1.5)
    assert ewma.update(3.0) == pytest.approx(1.875)


def test_ewma_forgets_an_old_level() -> None:
    ewma = Ewma(alpha=0.3)
    ewma.update(10.0)
    for _ in range(50):
        ewma.update(0.2)
    assert ewma.value == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_ewma_alpha_must_be_a_fraction(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        Ewma(alpha)


def test_ewma_repr() -> None:
    ewma = Ewma(alpha=0.5)
    assert repr(ewma) == "<Ewma alpha=0.5 unmeasured>"
    ewma.update(0.25)
    assert repr(ewma) == "<Ewma alpha=0.5 0.2500>"


def test_windowed_rate_counts_the_window_and_nothing_older() -> None:
    rate = WindowedRate(window=60.0)
    assert rate.error_rate(0.0) is None
    for t in range(0, 30):
        rate.add(float(t), ok=t % 3 != 0)  # 10 failures in 30
    assert rate.counts(30.0) == (30, 10)
    assert rate.error_rate(30.0) == pytest.approx(1 / 3)
    assert rate.counts(59.0) == (30, 10)
    assert rate.counts(75.5) == (14, 4)  # t = 16..29 remain: 18, 21, 24, 27 failed
    assert rate.counts(200.0) == (0, 0)
    assert rate.error_rate(200.0) is None


def test_windowed_rate_stays_exact_over_hours_of_slot_reuse() -> None:
    rate = WindowedRate(window=10.0, slices=10)
    for step in range(36_000):  # ten hours, one outcome a second
        rate.add(float(step), ok=step % 4 != 0)
    assert rate.counts(35_999.0) == (10, 2)  # 35990..35999: 35992 and 35996 failed


def test_windowed_rate_handles_times_below_zero() -> None:
    rate = WindowedRate(window=10.0, slices=10)
    rate.add(-0.5, ok=False)  # lands in slice -1, which must not read as "empty"
    assert rate.counts(0.0) == (1, 1)


def test_windowed_rate_clear_forgets_everything() -> None:
    rate = WindowedRate(window=60.0)
    rate.add(1.0, ok=False)
    rate.clear()
    assert rate.counts(1.0) == (0, 0)
    rate.add(2.0, ok=True)
    assert rate.counts(2.0) == (1, 0)


@pytest.mark.parametrize(("window", "slices"), [(0.0, 60), (60.0, 0)])
def test_windowed_rate_refuses_an_empty_window(window: float, slices: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - either argument may be named
        WindowedRate(window, slices)


def test_windowed_rate_repr_shows_the_latest_window() -> None:
    rate = WindowedRate(window=60.0)
    rate.add(5.0, ok=False)
    rate.add(6.0, ok=True)
    assert repr(rate) == "<WindowedRate 1/2 failed in 60s>"


class RingModel:
    """WindowedRate's documented behaviour, recounted from scratch on every question."""

    def __init__(self, window: float, slices: int) -> None:
        self.width, self.slices = window / slices, slices
        self.ring: dict[int, list[int]] = {}  # position: [slice, calls, failures]

    def add(self, at: float, ok: bool) -> None:
        current = math.floor(at / self.width)
        held = self.ring.get(current % self.slices)
        if held is None or held[0] != current:
            held = self.ring[current % self.slices] = [current, 0, 0]
        held[1] += 1
        held[2] += not ok

    def counts(self, now: float) -> tuple[int, int]:
        current = math.floor(now / self.width)
        live = [h for h in self.ring.values() if current - self.slices < h[0] <= current]
        return sum(h[1] for h in live), sum(h[2] for h in live)


@given(
    steps=st.lists(
        st.tuples(
            st.booleans(),  # add an outcome, or ask for the counts
            st.floats(min_value=-5.0, max_value=40.0, allow_nan=False),
            st.booleans(),
        ),
        max_size=150,
    )
)
def test_windowed_rate_kept_sums_always_equal_a_recount(
    steps: list[tuple[bool, float, bool]],
) -> None:
    """The sums kept between calls never drift from a full recount, whatever the order of
    times (backwards too) and however slots are reused."""
    rate, model = WindowedRate(window=10.0, slices=5), RingModel(10.0, 5)
    for adding, at, ok in steps:
        if adding:
            rate.add(at, ok)
            model.add(at, ok)
        else:
            assert rate.counts(at) == model.counts(at)
