"""Load generators: tasks through aiproc, and the same calls straight to the provider.

Both record each item's latency, so aiproc's added latency is the difference of
the two distributions measured against the same fake provider in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from aiproc.client import AsyncClient, TaskResult

CONTENT = (
    "Widgets are small devices that make everyday work easier. They come in many sizes. "
    "Engineers design widgets for reliability, and users appreciate their simplicity."
)


@dataclass(slots=True)
class Load:
    """What one run did: per-item latencies (seconds) and the span they took."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in seconds (p in 0..100)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


Submit = Callable[[], Awaitable[bool]]
"""One item, end to end; True if it succeeded."""


async def closed_loop(submit: Submit, items: int, concurrency: int) -> Load:
    """`items` items, `concurrency` in flight: each worker starts the next when one ends."""
    load = Load()
    share, extra = divmod(items, concurrency)

    async def worker(count: int) -> None:
        for _ in range(count):
            began = time.perf_counter()
            ok = await submit()
            load.latencies.append(time.perf_counter() - began)
            load.failed += not ok

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(concurrency):
            group.create_task(worker(share + (index < extra)))
    load.seconds = time.perf_counter() - started
    return load


async def open_loop(submit: Submit, rate: float, seconds: float, max_in_flight: int) -> Load:
    """Starts items at `rate` per second for `seconds`, whether or not earlier ones ended
    (beyond `max_in_flight` at once an item waits for a place, as a real caller would)."""
    load = Load()
    places = asyncio.Semaphore(max_in_flight)

    async def one() -> None:
        async with places:
            began = time.perf_counter()
            ok = await submit()
            load.latencies.append(time.perf_counter() - began)
            load.failed += not ok

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for n in range(int(rate * seconds)):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            group.create_task(one())
    load.seconds = time.perf_counter() - started
    return load


class AiprocLoad:
    """Tasks through a running aiproc: QueueTask, then the result on one shared stream."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._waiting: dict[str, asyncio.Future[TaskResult]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, address: str) -> AsyncIterator[AiprocLoad]:
        client_id = f"bench-{uuid.uuid4().hex[:8]}"
        async with AsyncClient(address, client_id=client_id, timeout=120.0) as client:
            load = cls(client)
            async with client.stream(all_tasks=True) as stream:
                receiving = asyncio.create_task(load._receive(stream))
                try:
                    yield load
                finally:
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiving

    def _result_of(self, task_id: str) -> asyncio.Future[TaskResult]:
        # A result may come before QueueTask's answer: whoever is first makes the future.
        future = self._waiting.get(task_id)
        if future is None:
            future = self._waiting[task_id] = asyncio.get_running_loop().create_future()
        return future

    async def _receive(self, stream: Any) -> None:
        async for item in stream:
            if isinstance(item, TaskResult):
                future = self._result_of(item.task_id)
                if not future.done():
                    future.set_result(item)
                # Acked here, so a task's measured latency ends when its result arrives.
                await stream.ack([item.task_id])

    async def one(self) -> bool:
        queued = await self._client.queue("https://example.com/bench", CONTENT)
        result = await self._result_of(queued.task_id)
        del self._waiting[queued.task_id]
        return result.success

    async def closed(self, items: int, concurrency: int) -> Load:
        return await closed_loop(self.one, items, concurrency)

    async def open(self, rate: float, seconds: float, max_in_flight: int) -> Load:
        return await open_loop(self.one, rate, seconds, max_in_flight)


class DirectLoad:
    """The same chat completion, straight to the provider over aiohttp: the baseline."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._body = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": f"Summarise https://example.com/bench:\n{CONTENT}"}
            ],
            "max_tokens": 256,
        }

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, base_url: str, concurrency: int) -> AsyncIterator[DirectLoad]:
        connector = aiohttp.TCPConnector(limit=max(concurrency, 1))
        async with aiohttp.ClientSession(connector=connector) as session:
            yield cls(session, base_url)

    async def one(self) -> bool:
        async with self._session.post(self._url, json=self._body) as response:
            await response.read()
            return response.status == 200

    async def closed(self, items: int, concurrency: int) -> Load:
        return await closed_loop(self.one, items, concurrency)

    async def open(self, rate: float, seconds: float, max_in_flight: int) -> Load:
        return await open_loop(self.one, rate, seconds, max_in_flight)
