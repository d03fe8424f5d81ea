from __future__ import annotations

import random
from collections import Counter

import pytest

from aiproc.server.config import FAILOVER_STRATEGIES
from aiproc.server.resilience.health import HealthLevel
from aiproc.server.resilience.selection import STRATEGIES, Candidate, Selector


def selector(strategy: str, seed: int = 0) -> Selector:
    return Selector(strategy, random.Random(seed))


def test_strategies_are_exactly_the_configurable_ones() -> None:
    assert STRATEGIES == FAILOVER_STRATEGIES


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="fastest"):
        selector("fastest")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_ranks_every_candidate_once(strategy: str) -> None:
    candidates = [Candidate(f"p{i}", priority=i % 3, order=i, weight=i) for i in range(7)]
    sel = selector(strategy)
    for _ in range(20):
        assert sorted(sel.rank(candidates)) == sorted(c.name for c in candidates)
    assert sel.rank([]) == []


def test_priority_orders_by_priority_then_config_order_not_input_order() -> None:
    candidates = [
        Candidate("late-b", priority=2, order=3),
        Candidate("first", priority=1, order=2),
        Candidate("late-a", priority=2, order=0),
        Candidate("second", priority=1, order=5),
    ]
    assert selector("priority").rank(candidates) == ["first", "second", "late-a", "late-b"]


def test_round_robin_rotates_the_start_over_the_priority_order() -> None:
    candidates = [Candidate("c", order=2), Candidate("a", order=0), Candidate("b", order=1)]
    sel = selector("round_robin")
    ranks = [sel.rank(candidates) for _ in range(4)]
    assert ranks == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_round_robin_spreads_first_choices_evenly() -> None:
    candidates = [Candidate(f"p{i}", order=i) for i in range(4)]
    sel = selector("round_robin")
    firsts = Counter(sel.rank(candidates)[0] for _ in range(400))
    assert firsts == {"p0": 100, "p1": 100, "p2": 100, "p3": 100}


def test_weighted_first_choice_follows_the_weights() -> None:
    candidates = [
        Candidate("light", weight=1.0, order=0),
        Candidate("heavy", weight=7.0, order=1),
        Candidate("mid", weight=2.0, order=2),
    ]
    sel = selector("weighted", seed=42)
    firsts = Counter(sel.rank(candidates)[0] for _ in range(10_000))
    assert firsts["light"] / 10_000 == pytest.approx(0.1, abs=0.02)
    assert firsts["mid"] / 10_000 == pytest.approx(0.2, abs=0.02)
    assert firsts["heavy"] / 10_000 == pytest.approx(0.7, abs=0.02)


def test_weighted_second_choice_is_drawn_among_the_rest() -> None:
    candidates = [
        Candidate("a", weight=6.0),
        Candidate("b", weight=3.0),
        Candidate("c", weight=1.0),
    ]
    sel = selector("weighted", seed=7)
    after_a = Counter(r[1] for r in (sel.rank(candidates) for _ in range(20_000)) if r[0] == "a")
    # Without replacement: once a is out, b vs c is 3 : 1.
    assert after_a["b"] / after_a.total() == pytest.approx(0.75, abs=0.02)


def test_weighted_zero_weight_only_comes_after_the_weighted_ones() -> None:
    candidates = [Candidate("never", weight=0.0, order=0), Candidate("some", weight=0.1, order=1)]
    sel = selector("weighted", seed=3)
    assert all(sel.rank(candidates) == ["some", "never"] for _ in range(1000))


def test_random_is_uniform_and_uses_every_order() -> None:
    candidates = [Candidate(name, order=i) for i, name in enumerate("abc")]
    sel = selector("random", seed=9)
    orders = Counter(tuple(sel.rank(candidates)) for _ in range(6000))
    assert len(orders) == 6
    assert all(count / 6000 == pytest.approx(1 / 6, abs=0.02) for count in orders.values())


def test_least_latency_picks_the_fastest_wherever_it_is_in_the_input() -> None:
    candidates = [
        Candidate("slow", latency_ewma=2.5, order=0),
        Candidate("medium", latency_ewma=0.8, order=1),
        Candidate("fast", latency_ewma=0.3, order=2),
    ]
    assert selector("least_latency").rank(candidates) == ["fast", "medium", "slow"]


def test_least_latency_tries_unmeasured_providers_first_so_they_get_measured() -> None:
    candidates = [
        Candidate("fast", latency_ewma=0.1, order=0),
        Candidate("new-b", latency_ewma=None, priority=2, order=1),
        Candidate("new-a", latency_ewma=None, priority=1, order=2),
    ]
    assert selector("least_latency").rank(candidates) == ["new-a", "new-b", "fast"]


def test_least_errors_ranks_by_error_rate_then_priority() -> None:
    candidates = [
        Candidate("flaky", error_rate=0.3, order=0),
        Candidate("tie-low-priority", error_rate=0.01, priority=5, order=1),
        Candidate("tie-high-priority", error_rate=0.01, priority=1, order=2),
        Candidate("perfect", error_rate=0.0, priority=9, order=3),
    ]
    assert selector("least_errors").rank(candidates) == [
        "perfect",
        "tie-high-priority",
        "tie-low-priority",
        "flaky",
    ]


def test_least_cost_ranks_known_prices_cheapest_first_and_unknown_last() -> None:
    candidates = [
        Candidate("unknown", order=0),
        Candidate("pricey", price_per_1k_input=10.0, price_per_1k_output=30.0, order=1),
        Candidate("cheap", price_per_1k_input=0.15, price_per_1k_output=0.6, order=2),
        Candidate("output-only", price_per_1k_output=0.5, order=3),
    ]
    assert selector("least_cost").rank(candidates) == ["output-only", "cheap", "pricey", "unknown"]


def test_least_cost_ties_go_by_priority() -> None:
    candidates = [
        Candidate("b", price_per_1k_input=1.0, priority=3, order=0),
        Candidate("a", price_per_1k_input=1.0, priority=2, order=1),
    ]
    assert selector("least_cost").rank(candidates) == ["a", "b"]


def test_least_busy_ranks_by_share_of_capacity_in_use() -> None:
    candidates = [
        Candidate("half", in_flight=5, max_concurrent=10, order=0),
        Candidate("no-capacity", in_flight=0, max_concurrent=0, order=1),
        Candidate("big-but-fuller", in_flight=30, max_concurrent=40, order=2),
        Candidate("idle-low-priority", in_flight=0, max_concurrent=4, priority=2, order=3),
        Candidate("idle", in_flight=0, max_concurrent=1, priority=1, order=4),
    ]
    assert selector("least_busy").rank(candidates) == [
        "idle",
        "idle-low-priority",
        "half",
        "big-but-fuller",
        "no-capacity",
    ]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_health_level_comes_before_the_strategy(strategy: str) -> None:
    # The worse its health, the better each candidate looks to every strategy.
    candidates = [
        Candidate("healthy", priority=4, weight=0.01, order=3, latency_ewma=9.0,
                  error_rate=0.4, price_per_1k_input=9.0, in_flight=9,
                  health=HealthLevel.HEALTHY),
        Candidate("degraded", priority=3, weight=1.0, order=2, latency_ewma=3.0,
                  error_rate=0.3, price_per_1k_input=3.0, in_flight=3,
                  health=HealthLevel.DEGRADED),
        Candidate("critical", priority=2, weight=100.0, order=1, latency_ewma=1.0,
                  error_rate=0.2, price_per_1k_input=1.0, in_flight=1,
                  health=HealthLevel.CRITICAL),
        Candidate("unavailable", priority=1, weight=1e4, order=0, latency_ewma=0.1,
                  error_rate=0.1, price_per_1k_input=0.1, in_flight=0,
                  health=HealthLevel.UNAVAILABLE),
    ]  # fmt: skip
    sel = selector(strategy)
    for _ in range(50):
        assert sel.rank(candidates) == ["healthy", "degraded", "critical", "unavailable"]


def test_the_strategy_still_orders_within_a_health_level() -> None:
    candidates = [
        Candidate("degraded-fast", latency_ewma=0.1, health=HealthLevel.DEGRADED, order=0),
        Candidate("healthy-slow", latency_ewma=2.0, order=1),
        Candidate("degraded-slow", latency_ewma=1.0, health=HealthLevel.DEGRADED, order=2),
        Candidate("healthy-fast", latency_ewma=0.5, order=3),
    ]
    assert selector("least_latency").rank(candidates) == [
        "healthy-fast",
        "healthy-slow",
        "degraded-fast",
        "degraded-slow",
    ]


def test_repr_names_the_strategy_and_counts_calls() -> None:
    sel = selector("round_robin")
    sel.rank([Candidate("a")])
    assert repr(sel) == "<Selector round_robin calls=1>"
