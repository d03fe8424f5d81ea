"""What the bench scripts share: an in-process server, a closed-loop client, the result file.

Each script runs rounds of the same shape: start an aiproc server
(AiprocServer.start) in front of a fake OpenAI-compatible provider, queue N
tasks through the Python client with `concurrency` of them in flight, time
from the first QueueTask to the last result, and stop the server. What differs
between a script's rounds is only the config it passes to `run_round`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _load import AiprocLoad

from aiproc.server.app import AiprocServer
from aiproc.server.config import Config, ProviderConfig, load_config, validate
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.gc_tuning import tune_for_serving
from aiproc.server.telemetry.setup import Telemetry


@dataclass(frozen=True, slots=True)
class Timing:
    """One timed run: `tasks` queued, `failed` of them failed."""

    tasks: int
    failed: int
    seconds: float
    """From the first QueueTask to the last result."""
    cpu_seconds: float
    """CPU time of the whole process (every thread) over those seconds."""
    counted: int | None = None
    """What run_round's `count` grew by over those seconds; None without one."""


@contextlib.contextmanager
def serving_gc() -> Iterator[None]:
    """The garbage-collector settings `aiproc serve` runs with (server/gc_tuning.py), for
    benchmarks whose server runs in their own process: what they measure is then the
    server as deployed, and not, say, collections walking the heap of a library the suite
    imported earlier. The process's own settings come back afterwards."""
    thresholds = gc.get_threshold()
    tune_for_serving()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def bench_config(
    fake: FakeOpenAIServer,
    concurrency: int,
    *,
    server: Mapping[str, object],
    telemetry: Mapping[str, object],
) -> Config:
    """A server that never waits on its own limits: only CPU (and `server`'s store) bounds it.

    `server` and `telemetry` are the [server] and [telemetry] tables; the listen
    address is always 127.0.0.1 on a free port.
    """
    config = load_config(
        env={},
        overrides={
            "server": {**server, "listen": "127.0.0.1:0"},
            "processor": {
                "num_workers": concurrency,
                "queue_size": 10 * concurrency,
                "max_concurrent_requests": concurrency,
                "rate_limit_rps": 1_000_000.0,
                "rate_limit_burst": 1_000_000,
            },
            "health": {"enabled": False},
            "telemetry": dict(telemetry),
        },
    )
    provider = ProviderConfig(
        name="fake",
        kind="openai",
        base_url=fake.base_url,
        model="gpt-4o-mini",
        max_concurrent_requests=concurrency,
    )
    config = replace(config, providers=(provider,))
    validate(config)
    return config


async def drive(address: str, tasks: int, concurrency: int) -> tuple[float, int]:
    """Queues `tasks` tasks, `concurrency` in flight at a time, on one result stream.

    Returns the seconds from the first QueueTask to the last result, and the failures.
    """
    async with AiprocLoad.connect(address) as load:
        done = await load.closed(tasks, concurrency)
    return done.seconds, done.failed


async def run_round(
    config: Config,
    tasks: int,
    concurrency: int,
    *,
    count: Callable[[AiprocServer], int] | None = None,
) -> Timing:
    """Starts a server from `config`, drives `tasks` tasks through it, and stops it.

    `count`, read just before and just after the timed part, is some counter of
    the server's (its store's commits, say); Timing.counted is how much it grew.
    """
    # env={}: the calling shell's OTEL_* variables must not turn telemetry on.
    telemetry = Telemetry.start(config.telemetry, env={})
    server = await AiprocServer.start(config, env={}, telemetry=telemetry)
    counted: int | None = None
    try:
        before = count(server) if count is not None else 0
        cpu_before = time.process_time()
        seconds, failed = await drive(server.address, tasks, concurrency)
        cpu_seconds = time.process_time() - cpu_before
        if count is not None:
            counted = count(server) - before
    finally:
        await server.stop(grace=5.0)
        # Flushes what is still batched; blocking, so off the loop.
        await asyncio.to_thread(telemetry.shutdown)
    return Timing(tasks, failed, seconds, cpu_seconds, counted)


def environment() -> dict[str, Any]:
    """When and where the figures were taken: the first keys of every result file."""
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
    }


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
