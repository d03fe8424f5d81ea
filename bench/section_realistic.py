"""A realistic profile: slow, spread-out provider calls at a steady offered rate.

The fake provider (its own process) answers after a lognormal delay, median
1.5 s and sigma 0.5 (so p99 ~4.8 s), seeded; aiproc (its own process, default
SQLite store) has 500 workers and 500 provider calls in flight at most; the
load generator offers 200 tasks/s open-loop, 500 in flight at most. Measured:
the tasks completed while tasks were being offered, against those a provider of
this latency distribution would have returned by then for the same submissions
(1.0: aiproc kept up with the offered rate), the server's CPU per task and its
resident memory, and end-to-end p50/p99 against the provider's own draws (the
same seeded draws, replayed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
from _load import AiprocLoad, Load, open_loop
from _procs import Running, fake_provider, server
from _suite import Measure, SectionResult, Settings, at_least

from aiproc.client import AsyncClient, LatencySummary

MEDIAN = 1.5
"""Seconds: the provider's median latency."""
SIGMA = 0.5
"""Of the log of the provider's latency."""
SEED = 6
RATE = 200.0
IN_FLIGHT = 500
RATE_GOAL = 0.98
"""Completions while offering, over those the provider's latency alone allows."""
COUNT_FROM = 0.5
"""Seconds into the run from which completions are counted."""

CONFIG = """
[processor]
num_workers = {n}
max_concurrent_requests = {n}
queue_size = 20000
rate_limit_rps = 100000
rate_limit_burst = 1000
[health]
enabled = false
[[providers]]
name = "fake"
kind = "openai"
base_url = "{url}"
model = "gpt-4o-mini"
max_concurrent_requests = {n}
"""


@contextlib.asynccontextmanager
async def spread_provider(settings: Settings) -> AsyncIterator[Running]:
    """`aiproc fake-provider` answering after lognormal delays around MEDIAN."""
    extra = ["--latency-sigma", str(SIGMA), "--seed", str(SEED)]
    async with fake_provider(settings.folder, latency=MEDIAN, extra=extra) as fake:
        yield fake


async def control(session: aiohttp.ClientSession, fake: Running, action: str, body: object) -> int:
    """A call to the fake's control API; answers its request count."""
    url = fake.address.removesuffix("/v1") + f"/_fake/{action}"
    method = session.post(url, json=body) if body is not None else session.get(url)
    async with method as response:
        response.raise_for_status()
        stats = await response.json()
    return int(stats["requests"])


def provider_cdf(seconds: float) -> float:
    """The share of the provider's answers that take at most `seconds`."""
    if seconds <= 0:
        return 0.0
    return 0.5 * (1 + math.erf((math.log(seconds) - math.log(MEDIAN)) / (SIGMA * math.sqrt(2))))


def provider_draws(count: int) -> list[float]:
    """The delays the fake drew for its first `count` requests at MEDIAN (same seed)."""
    draws = random.Random(SEED)
    return sorted(draws.lognormvariate(math.log(MEDIAN), SIGMA) for _ in range(count))


def quantile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(latency: LatencySummary) -> dict[str, float]:
    return {
        "samples": latency.samples,
        "p50_s": latency.p50,
        "p99_s": latency.p99,
        "max_s": latency.max,
    }


async def sample_rss(srv: Running, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], srv.rss_bytes())
        await asyncio.sleep(0.25)


async def run(settings: Settings) -> SectionResult:
    seconds = 8.0 if settings.quick else 30.0
    spans: list[tuple[float, float]] = []
    async with (
        spread_provider(settings) as fake,
        server(settings.folder, CONFIG.format(n=IN_FLIGHT, url=fake.address)) as srv,
        AiprocLoad.connect(srv.address) as load,
        aiohttp.ClientSession() as session,
    ):
        # Warm up with answers at once (a zero latency draws nothing), then the profile.
        await control(session, fake, "latency", {"seconds": 0})
        await load.closed(200, 32)
        before = await control(session, fake, "latency", {"seconds": MEDIAN})
        idle_rss = srv.rss_bytes()

        async def submit() -> bool:
            began = time.perf_counter()
            ok = await load.one()
            spans.append((began, time.perf_counter()))
            return ok

        peak = [idle_rss]
        sampler = asyncio.create_task(sample_rss(srv, peak))
        cpu_before = srv.cpu_seconds()
        others_before = fake.cpu_seconds(), time.process_time()
        began = time.perf_counter()
        try:
            result: Load = await open_loop(submit, RATE, seconds, IN_FLIGHT)
        finally:
            sampler.cancel()
        cpu = srv.cpu_seconds() - cpu_before
        wall = time.perf_counter() - began
        fake_cpu = fake.cpu_seconds() - others_before[0]
        load_cpu = time.process_time() - others_before[1]
        end_rss = srv.rss_bytes()
        calls = await control(session, fake, "stats", None) - before
        async with AsyncClient(srv.address) as client:
            stats = await client.stats()

    starts = sorted(start for start, _ in spans)
    first, last = starts[0], starts[-1]
    offered = (len(starts) - 1) / (last - first)
    # Completions in [since, last): those seen, and those the provider's
    # latency alone would have allowed for the same submissions.
    since = first + COUNT_FROM
    counted = sum(1 for _, end in spans if since <= end < last)
    ideal = sum(provider_cdf(last - start) - provider_cdf(since - start) for start in starts)
    window = last - since
    # The rate once the pipeline is full: from the provider's p99 on (~4.8 s),
    # or half the run when that is shorter.
    full = first + min(MEDIAN * math.exp(SIGMA * 2.326), seconds / 2)
    steady = sum(1 for _, end in spans if full <= end < last) / (last - full)
    ordered = sorted(result.latencies)
    provider = provider_draws(calls)
    p50, p99 = quantile(ordered, 50), quantile(ordered, 99)
    provider_p50, provider_p99 = quantile(provider, 50), quantile(provider, 99)
    per_task_ms = cpu / max(result.done, 1) * 1e3
    details = {
        "offered_per_second": RATE,
        "generated_per_second": offered,
        "steady_per_second": steady,
        "steady_from": full - first,
        "completed_per_second": counted / window,
        "ideal_per_second": ideal / window,
        "seconds": seconds,
        "counted_from": COUNT_FROM,
        "tasks": result.done,
        "failed": result.failed,
        "provider_calls": calls,
        "server_cpu_seconds": cpu,
        "server_cpu_ms_per_task": per_task_ms,
        # Shares of one core over the run, for judging how busy the machine was.
        "server_cpu_share": cpu / wall,
        "fake_provider_cpu_share": fake_cpu / wall,
        "load_generator_cpu_share": load_cpu / wall,
        "server_rss_before_run_mb": idle_rss / 1e6,
        "server_rss_peak_mb": peak[0] / 1e6,
        "server_rss_end_mb": end_rss / 1e6,
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "latency_max_s": ordered[-1] if ordered else float("nan"),
        "provider_max_s": provider[-1] if provider else float("nan"),
        "provider_p50_s": provider_p50,
        "provider_p99_s": provider_p99,
        "provider_mean_s": statistics.fmean(provider) if provider else float("nan"),
        "store": "sqlite",
        # As the server saw them, over its most recent tasks: time queued, and
        # processing time (the provider call included).
        "server_queue_time": summary(stats.queue_latency),
        "server_processing_time": summary(stats.processing_latency),
    }
    measures = [
        at_least("completed / ideal while offering", counted / ideal, RATE_GOAL),
        Measure(f"tasks/s once full ({RATE:g} offered)", steady),
        Measure("tasks failed", result.failed),
        Measure("server CPU per task", per_task_ms, "ms"),
        Measure("server RSS, peak", peak[0] / 1e6, "MB"),
        Measure("p50 latency", p50 * 1e3, "ms"),
        Measure("p50 over the provider's", (p50 - provider_p50) * 1e3, "ms"),
        Measure("p99 latency", p99 * 1e3, "ms"),
        Measure("p99 over the provider's", (p99 - provider_p99) * 1e3, "ms"),
    ]
    note = (
        f"{RATE:g} tasks/s offered open-loop for {seconds:g} s, {IN_FLIGHT} in flight at most; "
        f"provider lognormal, median {MEDIAN:g} s, sigma {SIGMA:g} (its p50 "
        f"{provider_p50 * 1e3:.0f} ms, p99 {provider_p99 * 1e3:.0f} ms); SQLite store; "
        f"'ideal': the completions that latency alone allows while tasks are offered"
    )
    return SectionResult("realistic profile", measures, details, note)
