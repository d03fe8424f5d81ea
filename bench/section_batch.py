"""`aiproc submit-batch`, the batch path a user runs, against the harness on the same server.

One `aiproc serve` process (sqlite store, limits out of reach, 64 workers) in
front of an `aiproc fake-provider` answering at once (0 ms, so that what is
measured is the path, not the provider's wait). In the same run, alternately:
the bench harness (AiprocLoad: QueueTask with 64 in flight, results on one
StreamResults call) and `aiproc submit-batch --concurrency 64` of a JSONL file
of as many tasks, timed as a subprocess from start to exit. The issue's target
is that the batch reaches the harness's throughput; it is held to that net of
the command's start-up (importing aiproc and connecting), which is measured
apart by a batch of an empty file and shown too.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from _load import CONTENT, AiprocLoad
from _procs import AIPROC, Running, fake_provider, server
from _suite import Measure, SectionResult, Settings, at_least
from section_e2e import ms, server_config, summary

CONCURRENCY = 64
LATENCY = 0.0
RATIO_GOAL = 0.9
CLIENT_ID = "bench-batch"


def write_tasks(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            task = {"url": f"https://example.com/bench/{index}", "content": CONTENT}
            out.write(json.dumps(task) + "\n")


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (the batch commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def submit_batch(aiproc: Running, source: Path, output: Path) -> tuple[float, float]:
    """Runs `aiproc submit-batch`; its wall seconds and its own CPU seconds."""
    argv = [
        *AIPROC, "submit-batch", "--server", aiproc.address, "--client-id", CLIENT_ID,
        "--concurrency", str(CONCURRENCY), str(source), str(output),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    cpu = children_cpu()
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
    )
    _, errors = await process.communicate()
    seconds = time.perf_counter() - began
    if process.returncode != 0:
        raise RuntimeError(
            f"submit-batch exited with {process.returncode}: {errors.decode()[-2000:]}"
        )
    return seconds, children_cpu() - cpu


def check_output(path: Path, expected: int) -> dict[str, int]:
    """How many results the batch wrote, how many distinct tasks, how many succeeded."""
    task_ids: set[str] = set()
    lines = succeeded = 0
    with path.open(encoding="utf-8") as results:
        for line in results:
            result = json.loads(line)
            lines += 1
            task_ids.add(result["taskId"])
            succeeded += bool(result.get("success"))
    if lines != expected or len(task_ids) != expected or succeeded != expected:
        raise RuntimeError(
            f"submit-batch wrote {lines} results for {len(task_ids)} tasks, "
            f"{succeeded} succeeded; expected {expected}"
        )
    return {"results": lines, "tasks": len(task_ids), "succeeded": succeeded}


async def run(settings: Settings) -> SectionResult:
    items, rounds = (1000, 2) if settings.quick else (4000, 3)
    source, empty = settings.folder / "tasks.jsonl", settings.folder / "empty.jsonl"
    write_tasks(source, items)
    empty.write_text("", encoding="utf-8")
    harness_runs: list[dict[str, Any]] = []
    batch_runs: list[dict[str, Any]] = []
    async with (
        fake_provider(settings.folder, latency=LATENCY) as provider,
        server(settings.folder, server_config(provider.address, CONCURRENCY)) as aiproc,
    ):
        # The command's start-up alone (imports, connecting, the stream): twice, the first
        # also warming the file cache.
        await submit_batch(aiproc, empty, settings.folder / "empty-out.jsonl")
        startup, startup_cpu = await submit_batch(
            aiproc, empty, settings.folder / "empty-out.jsonl"
        )
        async with AiprocLoad.connect(aiproc.address) as harness:
            await harness.closed(4 * CONCURRENCY, CONCURRENCY)
            for round_ in range(rounds):
                cpu = aiproc.cpu_seconds()
                load = await harness.closed(items, CONCURRENCY)
                harness_runs.append(
                    {
                        **summary(load),
                        "server_cpu_ms": round(ms((aiproc.cpu_seconds() - cpu) / items), 3),
                    }
                )
                output = settings.folder / f"results-{round_}.jsonl"
                cpu = aiproc.cpu_seconds()
                seconds, batch_cpu = await submit_batch(aiproc, source, output)
                server_cpu = aiproc.cpu_seconds() - cpu
                net = max(seconds - startup, 1e-9)
                batch_runs.append(
                    {
                        "seconds": round(seconds, 3),
                        "per_second": round(items / seconds, 1),
                        "per_second_net": round(items / net, 1),
                        "server_cpu_ms": round(ms(server_cpu / items), 3),
                        "command_cpu_ms": round(ms((batch_cpu - startup_cpu) / items), 3),
                        **check_output(output, items),
                    }
                )
    harness_rate = statistics.median(run["per_second"] for run in harness_runs)
    batch_net = statistics.median(run["per_second_net"] for run in batch_runs)
    batch_wall = statistics.median(run["per_second"] for run in batch_runs)
    measures = [
        at_least("submit-batch / harness, tasks/s", batch_net / harness_rate, RATIO_GOAL),
        Measure("submit-batch / harness, with start-up", batch_wall / harness_rate),
        Measure("harness tasks/s", harness_rate),
        Measure("submit-batch tasks/s, net of start-up", batch_net),
        Measure("submit-batch start-up", startup, "s"),
        Measure(
            "harness: server CPU",
            statistics.median(run["server_cpu_ms"] for run in harness_runs),
            "ms/task",
        ),
        Measure(
            "submit-batch: server CPU",
            statistics.median(run["server_cpu_ms"] for run in batch_runs),
            "ms/task",
        ),
        Measure(
            "submit-batch command CPU, net of start-up",
            statistics.median(run["command_cpu_ms"] for run in batch_runs),
            "ms/task",
        ),
    ]
    return SectionResult(
        "submit-batch",
        measures,
        {
            "items": items,
            "concurrency": CONCURRENCY,
            "latency_ms": ms(LATENCY),
            "startup_seconds": round(startup, 3),
            "startup_cpu_seconds": round(startup_cpu, 3),
            "harness": harness_runs,
            "batch": batch_runs,
        },
        note=f"{items:,} tasks, {CONCURRENCY} in flight, 0 ms fake provider (the path itself); "
        "medians of alternating rounds; every batch's output checked: one success per task",
    )
