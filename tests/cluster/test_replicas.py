"""Two `aiproc serve` processes sharing one Redis: one rate limit, one queue, nothing lost.

Real processes, a real Redis and a fake provider in its own process that
records when each call arrived.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from aiproc.client import AsyncClient
from aiproc.server.core.models import TaskState
from tests.processes import fake_provider_process, provider_arrivals, served
from tests.redis_support import REDIS_URL

RATE = 20.0
TASKS = 400  # 20 s of calls at RATE


def replica_config(path: Path, prefix: str, base_url: str) -> Path:
    path.write_text(
        f"""
[server]
store = "{REDIS_URL}"
redis_prefix = "{prefix}"
lease_ttl = "1s"

[processor]
num_workers = 8
queue_size = 5000
rate_limit_rps = {RATE}
rate_limit_burst = 1

[health]
enabled = false

[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
model = "gpt-4o-mini"
max_concurrent_requests = 16
""",
        encoding="utf-8",
    )
    return path


async def test_two_replicas_share_one_rate_limit_and_a_killed_one_loses_nothing(
    tmp_path: Path, redis_prefix: str
) -> None:
    async with fake_provider_process() as base_url:
        config = replica_config(tmp_path / "aiproc.toml", redis_prefix, base_url)
        async with (
            served(config, tmp_path / "a", tmp_path / "a.log") as (_, address_a),
            served(config, tmp_path / "b", tmp_path / "b.log") as (pid_b, address_b),
            AsyncClient(address_a) as a,
            AsyncClient(address_b) as b,
        ):
            # Half the tasks through each replica; all are streamed from replica a.
            accepted = [
                (await (a if n % 2 else b).queue(f"https://e.com/{n}", f"Page {n}. Text.")).task_id
                for n in range(TASKS)
            ]
            delivered: list[str] = []
            async with a.stream(all_tasks=True) as stream:
                async with asyncio.timeout(120):
                    async for item in stream:
                        delivered.append(item.task_id)  # type: ignore[union-attr]
                        await stream.ack([item.task_id])  # type: ignore[union-attr]
                        if len(delivered) == TASKS // 3:
                            os.kill(pid_b, signal.SIGKILL)  # mid-run, with tasks running there
                        if set(delivered) >= set(accepted):
                            break
            assert len(delivered) == len(set(delivered)), "a result came twice in one stream"
            assert set(delivered) == set(accepted)
            states = {(await a.get(task_id)).state for task_id in accepted}
            assert states == {TaskState.SUCCEEDED.value}
        arrivals = await provider_arrivals(base_url)

    # Every call either replica made, including those run again after the kill.
    assert len(arrivals) >= TASKS
    average = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert RATE * 0.95 <= average <= RATE * 1.02, f"{average:.2f} calls/s with rate {RATE}"
