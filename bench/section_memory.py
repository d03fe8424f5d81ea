"""Memory: a fresh server's resident set, and what each queued task adds to it.

`aiproc serve` runs in its own process, in front of a fake provider it never
gets to call: one worker and rate_limit_rps 0.001 keep every task but the
first waiting in the queue. Measured per store: RSS once started and idle;
then tasks are queued as fast as QueueTask takes them (many calls in flight),
pausing at 25%, 50% and 100% of the total to read RSS. The cost of a queued
task is the growth of RSS since a warmed-up baseline, per task, less the bytes
of its content and URL (what the caller handed over); flat means the cost per
task stays the same as the queue grows.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from _load import CONTENT
from _procs import Running, fake_provider, server
from _suite import Measure, SectionResult, Settings, at_most

from aiproc.client import AsyncClient

IDLE_GOAL_MB = 80.0
PER_TASK_GOAL = 2048.0
FLAT_GOAL = 1.25
"""Largest ratio between the per-task cost at two checkpoints that still counts as flat."""
FLAT_JUDGED_FROM = 100_000
"""Fewer queued tasks make too small a growth at 25% to judge flatness by (quick mode)."""
URL = "https://example.com/bench"
TASK_BYTES = len(CONTENT.encode()) + len(URL.encode())
WARMUP = 1000
IN_FLIGHT = 128
STORES = ("memory", "sqlite")
SETTLE = 1.0
"""Seconds to let the server settle before reading its RSS."""

CONFIG = """
[server]
store = "{store}"
shutdown_grace = "100ms"
[processor]
num_workers = 1
max_concurrent_requests = 1
queue_size = {capacity}
rate_limit_rps = 0.001
rate_limit_burst = 1
[health]
enabled = false
[[providers]]
name = "fake"
kind = "openai"
base_url = "{url}"
model = "gpt-4o-mini"
"""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    queued: int
    rss: int
    per_task: float
    """RSS growth since the baseline, per task queued since it, content included."""


async def queue_tasks(client: AsyncClient, count: int) -> None:
    """Queues `count` tasks, IN_FLIGHT QueueTask calls at a time."""
    numbers = iter(range(count))

    async def worker() -> None:
        for _ in numbers:
            await client.queue(URL, CONTENT)

    async with asyncio.TaskGroup() as group:
        for _ in range(IN_FLIGHT):
            group.create_task(worker())


async def settled_rss(srv: Running) -> int:
    await asyncio.sleep(SETTLE)
    return srv.rss_bytes()


async def measure_store(settings: Settings, store: str, url: str, tasks: int) -> dict[str, Any]:
    """Idle RSS of a fresh server on `store`, then RSS as `tasks` tasks are queued (0: none)."""
    config = CONFIG.format(store=store, capacity=WARMUP + tasks + 100, url=url)
    async with server(settings.folder, config, name=f"aiproc-{store}") as srv:
        idle = await settled_rss(srv)
        found: dict[str, Any] = {"store": store, "idle_rss_mb": idle / 1e6}
        if not tasks:
            return found
        client_id = f"bench-{uuid.uuid4().hex[:8]}"
        async with AsyncClient(srv.address, client_id=client_id, timeout=60.0) as client:
            await queue_tasks(client, WARMUP)
            baseline = await settled_rss(srv)
            checkpoints: list[Checkpoint] = []
            rates: list[float] = []
            queued, started = 0, time.perf_counter()
            for share in (0.25, 0.5, 1.0):
                target = round(tasks * share)
                began = time.perf_counter()
                await queue_tasks(client, target - queued)
                rates.append((target - queued) / (time.perf_counter() - began))
                queued = target
                rss = await settled_rss(srv)
                checkpoints.append(Checkpoint(queued, rss, (rss - baseline) / queued))
            seconds = time.perf_counter() - started
            stats = await client.stats()
    costs = [c.per_task - TASK_BYTES for c in checkpoints]
    found.update(
        {
            "warmup_tasks": WARMUP,
            "baseline_rss_mb": baseline / 1e6,
            "queued_tasks": tasks,
            "queued_on_server": stats.queue_size,
            "queue_calls_per_second": rates,
            "seconds_with_pauses": seconds,
            "rss_full_mb": checkpoints[-1].rss / 1e6,
            "task_bytes": TASK_BYTES,
            "checkpoints": [
                {
                    "queued": c.queued,
                    "rss_mb": c.rss / 1e6,
                    "bytes_per_task": c.per_task,
                    "beyond_content": c.per_task - TASK_BYTES,
                    "bytes_per_task_since_previous": (c.rss - previous.rss)
                    / (c.queued - previous.queued),
                }
                for previous, c in itertools.pairwise([Checkpoint(0, baseline, 0.0), *checkpoints])
            ],
            "beyond_content": checkpoints[-1].per_task - TASK_BYTES,
            "flatness": max(costs) / min(costs) if min(costs) > 0 else float("inf"),
        }
    )
    return found


async def run(settings: Settings) -> SectionResult:
    # Tasks to queue per store; quick: 20,000 on the memory store, SQLite idle only.
    plan = {"memory": 20_000, "sqlite": 0} if settings.quick else dict.fromkeys(STORES, 100_000)
    results: dict[str, dict[str, Any]] = {}
    async with fake_provider(settings.folder) as fake:
        for store, tasks in plan.items():
            results[store] = await measure_store(settings, store, fake.address, tasks)
    measures: list[Measure] = []
    for store, found in results.items():
        measures.append(
            at_most(f"idle RSS, {store} store", found["idle_rss_mb"], IDLE_GOAL_MB, "MB")
        )
    for store, found in results.items():
        if "checkpoints" not in found:
            continue
        tasks = found["queued_tasks"]
        measures.append(
            at_most(
                f"bytes per queued task beyond content, {store}, {tasks:,}",
                found["beyond_content"],
                PER_TASK_GOAL,
                "B",
            )
        )
        shown = " / ".join(f"{c['beyond_content']:,.0f}" for c in found["checkpoints"])
        name = f"flatness, {store}: max / min of {shown} B at 25/50/100%"
        if tasks >= FLAT_JUDGED_FROM:
            measures.append(at_most(name, found["flatness"], FLAT_GOAL))
        else:  # a quarter of the quick run's tasks is a few MB: allocator noise
            measures.append(Measure(name, found["flatness"]))
    note = (
        f"one worker and rate_limit_rps 0.001 keep the tasks queued; content + URL "
        f"{TASK_BYTES} B per task, subtracted; baseline after {WARMUP} warm-up tasks; "
        f"QueueTask {IN_FLIGHT} calls in flight"
    )
    return SectionResult("memory", measures, results, note)
