"""Failover: the primary provider's process dies mid-run under steady load.

Two fake providers in their own processes, `primary` (priority 1) and
`secondary` (priority 2), both answering after LATENCY; aiproc (its own
process) with the default [failover], [circuit_breaker] and [health] settings.
Tasks are offered open-loop at RATE per second; halfway through, the primary
is killed with SIGKILL (its connections drop, new ones are refused). Measured:
the share of tasks that still succeed (every one should), how long the
primary's breaker took to open, and the latency of the tasks caught in the
switch (those in flight at the kill or started in the next SWITCH seconds)
against the steady state before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from _load import AiprocLoad, open_loop
from _procs import fake_provider, server
from _suite import Measure, SectionResult, Settings, at_least

from aiproc.client import AsyncClient, ProviderEventKind

RATE = 100.0
LATENCY = 0.1
"""Seconds each provider takes to answer."""
SWITCH = 2.0
"""Seconds after the kill during which a started task counts as caught in the switch."""
SUCCESS_GOAL = 100.0

CONFIG = """
[server]
store = "memory"
[processor]
num_workers = 256
max_concurrent_requests = 256
queue_size = 10000
rate_limit_rps = 100000
rate_limit_burst = 1000
[[providers]]
name = "primary"
kind = "openai"
base_url = "{primary}"
model = "gpt-4o-mini"
priority = 1
max_concurrent_requests = 256
[[providers]]
name = "secondary"
kind = "openai"
base_url = "{secondary}"
model = "gpt-4o-mini"
priority = 2
max_concurrent_requests = 256
"""


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float
    ok: bool

    @property
    def latency(self) -> float:
        return self.end - self.start


def quantile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def watch(address: str, seen: list[tuple[float, ProviderEventKind, str]]) -> None:
    """Notes each provider event with the time it arrived (perf_counter)."""
    async with (
        AsyncClient(address, client_id=f"bench-{uuid.uuid4().hex[:8]}") as client,
        client.watch_events() as events,
    ):
        async for event in events:
            seen.append((time.perf_counter(), event.kind, event.provider))


async def run(settings: Settings) -> SectionResult:
    seconds = 8.0 if settings.quick else 20.0
    spans: list[Span] = []
    seen: list[tuple[float, ProviderEventKind, str]] = []
    killed_at = 0.0
    async with (
        fake_provider(settings.folder, latency=LATENCY, name="primary") as primary,
        fake_provider(settings.folder, latency=LATENCY, name="secondary") as secondary,
    ):
        config = CONFIG.format(primary=primary.address, secondary=secondary.address)
        async with server(settings.folder, config) as srv, AiprocLoad.connect(srv.address) as load:
            await load.closed(200, 16)
            watcher = asyncio.create_task(watch(srv.address, seen))

            async def submit() -> bool:
                began = time.perf_counter()
                ok = await load.one()
                spans.append(Span(began, time.perf_counter(), ok))
                return ok

            async def kill_primary() -> None:
                nonlocal killed_at
                await asyncio.sleep(seconds / 2)
                os.kill(primary.pid, signal.SIGKILL)
                killed_at = time.perf_counter()

            killer = asyncio.create_task(kill_primary())
            try:
                await open_loop(submit, RATE, seconds, 1000)
            finally:
                await killer
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            async with AsyncClient(srv.address) as client:
                stats = await client.stats()

    before = [s.latency for s in spans if s.end < killed_at]
    caught = [s for s in spans if s.end >= killed_at and s.start < killed_at + SWITCH]
    after = [s.latency for s in spans if s.start >= killed_at + SWITCH]
    caught_latency = [s.latency for s in caught]
    ok = sum(s.ok for s in spans)
    success = 100.0 * ok / len(spans)
    opened = [t for t, kind, who in seen if kind == ProviderEventKind.BREAKER_OPENED]
    opened_after = (min(opened) - killed_at) if opened else float("nan")
    steady_p50, steady_p99 = quantile(before, 50), quantile(before, 99)
    caught_p99 = quantile(caught_latency, 99)
    caught_max = max(caught_latency, default=float("nan"))
    kinds: dict[str, int] = {}
    for _, kind, who in seen:
        kinds[f"{kind.value}:{who}"] = kinds.get(f"{kind.value}:{who}", 0) + 1
    details = {
        "offered_per_second": RATE,
        "provider_latency_s": LATENCY,
        "seconds": seconds,
        "tasks": len(spans),
        "succeeded": ok,
        "failed": len(spans) - ok,
        "breaker_opened_after_kill_s": opened_after,
        "before": {"tasks": len(before), "p50_s": steady_p50, "p99_s": steady_p99},
        "caught": {
            "tasks": len(caught),
            "p50_s": quantile(caught_latency, 50),
            "p99_s": caught_p99,
            "max_s": caught_max,
            "slowed_over_steady_p99": sum(1 for v in caught_latency if v > steady_p99),
        },
        "after": {"tasks": len(after), "p50_s": quantile(after, 50), "p99_s": quantile(after, 99)},
        "events": kinds,
        "failovers": stats.counters.failovers,
        "server_failed": stats.counters.failed,
        "providers": {p.name: {"requests": p.requests, "state": p.state} for p in stats.providers},
    }
    measures = [
        at_least("tasks succeeded", success, SUCCESS_GOAL, "%"),
        Measure("breaker open after the kill", opened_after * 1e3, "ms"),
        Measure("p99 latency, steady before", steady_p99 * 1e3, "ms"),
        Measure("p99 latency, caught in the switch", caught_p99 * 1e3, "ms"),
        Measure("max latency, caught in the switch", caught_max * 1e3, "ms"),
        Measure("extra p99 in the switch", (caught_p99 - steady_p99) * 1e3, "ms"),
        Measure("p99 latency, on the secondary", quantile(after, 99) * 1e3, "ms"),
    ]
    note = (
        f"{RATE:g} tasks/s open-loop for {seconds:g} s, {LATENCY * 1e3:g} ms providers, primary "
        f"SIGKILLed at {seconds / 2:g} s; default failover/breaker/health settings "
        f"(retry_delay 500 ms); {len(caught)} tasks caught (in flight at the kill or started "
        f"within {SWITCH:g} s), {stats.counters.failovers} failovers"
    )
    return SectionResult("failover", measures, details, note)
