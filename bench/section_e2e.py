"""End to end through gRPC: QueueTask, then the result on StreamResults, against a direct call.

For each provider latency (0 and 50 ms) one `aiproc serve` process (the default
sqlite store, limits out of reach, health checks off) runs in front of one
`aiproc fake-provider` process. At each concurrency the same fake provider is
called directly (aiohttp, as many connections as items in flight) and through
aiproc, closed loop, each after a short warm-up: aiproc's added latency is its
percentile minus the same percentile of the direct calls. The two alternate,
in rounds pooled afterwards, so that a noisy spell weighs on both. Then the
issue's latency target: an open-loop run at 100 tasks/s against the 50 ms
provider, through aiproc and directly, alternating the same way.

The load generator runs in this process on the standard asyncio loop and shares
the machine's cores with the server and the fake provider, so at high
concurrency part of what limits the figures is the client, not the server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _load import AiprocLoad, DirectLoad, Load
from _procs import Running, fake_provider, server
from _suite import Measure, SectionResult, Settings, at_most

LATENCIES = (0.0, 0.05)
"""Seconds the fake provider waits before answering."""
CONCURRENCIES = (1, 16, 64, 256)
QUICK_CONCURRENCIES = (1, 64)
OPEN_RATE = 100.0
"""Tasks per second offered in the latency-target run."""
OPEN_IN_FLIGHT = 256
BEHIND = 0.95
"""A direct baseline below this share of the offered rate means the machine was too busy."""
ROUNDS = 2
"""Rounds of direct calls and of aiproc tasks, alternately, in each measurement."""
ADDED_P50_GOAL_MS = 3.0
ADDED_P99_GOAL_MS = 15.0


def server_config(provider_url: str, concurrency: int, *, store: str = "sqlite") -> str:
    """A server that never waits on its own limits, in front of one fake provider."""
    return f"""
[server]
store = "{store}"

[processor]
num_workers = {concurrency}
queue_size = 10000
max_concurrent_requests = {concurrency}
rate_limit_rps = 1000000
rate_limit_burst = 1000000

[health]
enabled = false

[[providers]]
name = "fake"
kind = "openai"
base_url = "{provider_url}"
model = "gpt-4o-mini"
max_concurrent_requests = {concurrency}
"""


def items_for(latency: float, concurrency: int, quick: bool) -> int:
    """Items per timed run: a few seconds' worth at the rates measured on a 2-core machine."""
    if latency == 0.0:
        full = {1: 600, 16: 2000, 64: 3000, 256: 3000}
        short = {1: 200, 64: 1000}
    else:
        full = {1: 60, 16: 1000, 64: 2000, 256: 3000}
        short = {1: 30, 64: 700}
    return (short if quick else full)[concurrency]


def warmup_for(items: int, concurrency: int) -> int:
    return min(items, max(2 * concurrency, 20))


@dataclass(frozen=True, slots=True)
class Cost:
    """CPU seconds each process spent over one timed run."""

    server: float
    provider: float
    client: float

    @classmethod
    def measured(cls, before: Cost, after: Cost) -> Cost:
        return cls(
            after.server - before.server,
            after.provider - before.provider,
            after.client - before.client,
        )

    @classmethod
    def now(cls, aiproc: Running | None, provider: Running) -> Cost:
        return cls(
            aiproc.cpu_seconds() if aiproc is not None else 0.0,
            provider.cpu_seconds(),
            time.process_time(),
        )

    def plus(self, other: Cost) -> Cost:
        return Cost(
            self.server + other.server,
            self.provider + other.provider,
            self.client + other.client,
        )

    def per_item_ms(self, items: int) -> dict[str, float]:
        return {
            "server_cpu_ms": round(self.server / items * 1e3, 3),
            "provider_cpu_ms": round(self.provider / items * 1e3, 3),
            "client_cpu_ms": round(self.client / items * 1e3, 3),
        }


def ms(seconds: float) -> float:
    return seconds * 1e3


def summary(load: Load) -> dict[str, Any]:
    return {
        "done": load.done,
        "failed": load.failed,
        "seconds": round(load.seconds, 3),
        "per_second": round(load.per_second, 1),
        "p50_ms": round(ms(load.percentile(50)), 3),
        "p99_ms": round(ms(load.percentile(99)), 3),
    }


def merged(loads: Sequence[Load]) -> Load:
    """Several rounds' loads as one: every latency, and the seconds they took together."""
    return Load(
        [latency for load in loads for latency in load.latencies],
        sum(load.failed for load in loads),
        sum(load.seconds for load in loads),
    )


async def alternating(
    direct_round: Callable[[], Awaitable[Load]],
    aiproc_round: Callable[[], Awaitable[Load]],
    aiproc: Running,
    provider: Running,
) -> tuple[Load, Cost, Load, Cost]:
    """ROUNDS rounds of each, alternately, so that a noisy spell on the machine weighs on both:
    the direct calls and their cost, then aiproc's tasks and theirs, each pooled over rounds."""
    direct: list[Load] = []
    through: list[Load] = []
    direct_cost = through_cost = Cost(0.0, 0.0, 0.0)
    for _ in range(ROUNDS):
        before = Cost.now(None, provider)
        direct.append(await direct_round())
        direct_cost = direct_cost.plus(Cost.measured(before, Cost.now(None, provider)))
        before = Cost.now(aiproc, provider)
        through.append(await aiproc_round())
        through_cost = through_cost.plus(Cost.measured(before, Cost.now(aiproc, provider)))
    return merged(direct), direct_cost, merged(through), through_cost


def cell_label(latency: float, concurrency: int) -> str:
    return f"{ms(latency):g} ms provider, {concurrency} in flight"


async def run_cell(
    aiproc: Running, provider: Running, latency: float, concurrency: int, quick: bool
) -> tuple[list[Measure], dict[str, Any]]:
    items = items_for(latency, concurrency, quick)
    share = items // ROUNDS
    async with (
        DirectLoad.connect(provider.address, concurrency) as direct_load,
        AiprocLoad.connect(aiproc.address) as through_load,
    ):
        await direct_load.closed(warmup_for(items, concurrency), concurrency)
        await through_load.closed(warmup_for(items, concurrency), concurrency)
        direct, direct_cost, through, cost = await alternating(
            lambda: direct_load.closed(share, concurrency),
            lambda: through_load.closed(share, concurrency),
            aiproc,
            provider,
        )
    added_p50 = ms(through.percentile(50) - direct.percentile(50))
    added_p99 = ms(through.percentile(99) - direct.percentile(99))
    server_ms = ms(cost.server / max(through.done, 1))
    label = cell_label(latency, concurrency)
    measures = [
        Measure(f"{label}: tasks/s", through.per_second),
        Measure(f"{label}: p50", ms(through.percentile(50)), "ms"),
        Measure(f"{label}: p99", ms(through.percentile(99)), "ms"),
        Measure(f"{label}: added p50", added_p50, "ms"),
        Measure(f"{label}: added p99", added_p99, "ms"),
        Measure(f"{label}: server CPU", server_ms, "ms/task"),
    ]
    details = {
        "latency_ms": ms(latency),
        "concurrency": concurrency,
        "items": items,
        "aiproc": {**summary(through), **cost.per_item_ms(max(through.done, 1))},
        "direct": {**summary(direct), **direct_cost.per_item_ms(max(direct.done, 1))},
        "added_p50_ms": round(added_p50, 3),
        "added_p99_ms": round(added_p99, 3),
        "server_rss_mb": round(aiproc.rss_bytes() / 1e6, 1),
    }
    return measures, details


async def run_open(
    aiproc: Running, provider: Running, seconds: float
) -> tuple[list[Measure], dict[str, Any]]:
    """The issue's latency target: 100 tasks/s offered, open loop, aiproc against direct."""
    warm = min(2.0, seconds / 2)
    async with (
        DirectLoad.connect(provider.address, OPEN_IN_FLIGHT) as direct_load,
        AiprocLoad.connect(aiproc.address) as through_load,
    ):
        await direct_load.open(OPEN_RATE, warm, OPEN_IN_FLIGHT)
        await through_load.open(OPEN_RATE, warm, OPEN_IN_FLIGHT)
        direct, _, through, cost = await alternating(
            lambda: direct_load.open(OPEN_RATE, seconds / ROUNDS, OPEN_IN_FLIGHT),
            lambda: through_load.open(OPEN_RATE, seconds / ROUNDS, OPEN_IN_FLIGHT),
            aiproc,
            provider,
        )
    added_p50 = ms(through.percentile(50) - direct.percentile(50))
    added_p99 = ms(through.percentile(99) - direct.percentile(99))
    label = f"added latency at {OPEN_RATE:g} tasks/s"
    measures = [
        at_most(f"{label}, p50", added_p50, ADDED_P50_GOAL_MS, "ms"),
        at_most(f"{label}, p99", added_p99, ADDED_P99_GOAL_MS, "ms"),
    ]
    details = {
        "rate": OPEN_RATE,
        "seconds": seconds,
        "latency_ms": 50.0,
        "aiproc": {**summary(through), **cost.per_item_ms(max(through.done, 1))},
        "direct": summary(direct),
        "added_p50_ms": round(added_p50, 3),
        "added_p99_ms": round(added_p99, 3),
    }
    return measures, details


async def run(settings: Settings) -> SectionResult:
    concurrencies: Sequence[int] = QUICK_CONCURRENCIES if settings.quick else CONCURRENCIES
    open_seconds = 4.0 if settings.quick else 10.0
    measures: list[Measure] = []
    cells: list[dict[str, Any]] = []
    open_details: dict[str, Any] = {}
    for latency in LATENCIES:
        name = f"{ms(latency):g}ms"
        async with (
            fake_provider(settings.folder, latency=latency, name=f"fake-{name}") as provider,
            server(
                settings.folder,
                server_config(provider.address, max(concurrencies)),
                name=f"aiproc-{name}",
            ) as aiproc,
        ):
            for concurrency in concurrencies:
                cell_measures, cell = await run_cell(
                    aiproc, provider, latency, concurrency, settings.quick
                )
                measures += cell_measures
                cells.append(cell)
            if latency == 0.05:
                open_measures, open_details = await run_open(aiproc, provider, open_seconds)
                measures += open_measures
    note = (
        "closed loop unless marked; added = aiproc percentile - direct call's, same run; "
        "sqlite store; client, server and fake provider share the machine's cores"
    )
    if open_details and open_details["direct"]["per_second"] < BEHIND * OPEN_RATE:
        note += (
            f"; BUSY MACHINE: the direct calls alone fell behind the offered {OPEN_RATE:g}/s "
            f"({open_details['direct']['per_second']:g}/s), so the latency target's figures "
            "say little in this run"
        )
    return SectionResult(
        "end to end",
        measures,
        {"cells": cells, "open_loop": open_details},
        note=note,
    )
