"""`ResultStream.ack` sends in the background: acks coalesce, closing sends the rest, and a
failed send is raised by the next ack. Against a real in-process server on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from aiproc.client import AiprocClientError, AsyncClient, TaskResult
from aiproc.client.stream import ResultStream
from aiproc.server.app import AiprocServer
from tests.support import ServerFactory, make_config

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."
FAST = {"rate_limit_rps": 10_000.0, "rate_limit_burst": 1000}
_T = TypeVar("_T")


class CountingCall:
    """A StreamResults call that counts the Ack messages written on it."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.acks: list[list[str]] = []

    async def write(self, request: Any) -> None:
        if request.WhichOneof("kind") == "ack":
            self.acks.append(list(request.ack.task_ids))
        await self._call.write(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


@pytest.fixture
async def server(start_server: ServerFactory) -> AiprocServer:
    return await start_server(make_config(processor={"num_workers": 8, **FAST}))


@pytest.fixture
async def client(server: AiprocServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address, client_id="acker") as opened:
        yield opened


def counted_stream(client: AsyncClient) -> tuple[ResultStream, list[CountingCall]]:
    calls: list[CountingCall] = []
    plain = client.stream(all_tasks=True)
    open_call = plain._open_call

    def open_counted() -> Any:
        calls.append(CountingCall(open_call()))
        return calls[-1]

    return ResultStream(open_counted, all_tasks=True), calls


async def eventually(probe: Callable[[], Awaitable[_T]], done: Callable[[_T], bool]) -> _T:
    """Polls `probe` until `done` says yes, failing after ten seconds."""
    async with asyncio.timeout(10):
        while True:
            if done(value := await probe()):
                return value
            await asyncio.sleep(0.01)


async def acking_until_it_fails(stream: ResultStream, task_id: str) -> None:
    """Acks `task_id` again and again until an ack raises (the background send has found
    the call ended), failing after ten seconds."""
    async with asyncio.timeout(10):
        while True:
            await stream.ack([task_id])
            await asyncio.sleep(0.01)


async def results_of(stream: ResultStream, count: int) -> list[TaskResult]:
    """Reads `count` results, acking each as it comes, without waiting between them."""
    got: list[TaskResult] = []
    async with asyncio.timeout(10):
        async for item in stream:
            if isinstance(item, TaskResult):
                got.append(item)
                await stream.ack([item.task_id])
                if len(got) == count:
                    return got
    raise AssertionError("the stream ended early")


async def test_acks_made_while_one_is_written_share_the_next_message(
    client: AsyncClient,
) -> None:
    queued = [await client.queue(f"https://example.com/{n}", TEXT) for n in range(200)]
    # All finished before the stream opens, so it delivers them in one burst.
    await eventually(client.stats, lambda stats: stats.undelivered_results == 200)
    stream, calls = counted_stream(client)
    async with stream:
        await results_of(stream, 200)
    sent = [task_id for message in calls[0].acks for task_id in message]

    assert sorted(sent) == sorted(q.task_id for q in queued)
    assert len(calls[0].acks) < 200  # one message per result would be 200
    assert (await client.stats()).undelivered_results == 0


async def test_closing_sends_the_acks_still_waiting(client: AsyncClient) -> None:
    queued = await client.queue("https://example.com/1", TEXT)
    async with client.stream(task_ids=[queued.task_id]) as stream:
        async for item in stream:
            assert isinstance(item, TaskResult)
            await stream.ack([item.task_id])
            break
        # Leaving the block closes the stream at once, before any write could finish.

    assert (await client.stats()).undelivered_results == 0


async def test_a_failed_send_is_raised_by_the_next_ack(
    client: AsyncClient, server: AiprocServer
) -> None:
    queued = await client.queue("https://example.com/1", TEXT)
    stream = client.stream(task_ids=[queued.task_id])
    async with stream:
        result = await anext(aiter(stream))
        await server.stop()
        with pytest.raises(AiprocClientError):
            await acking_until_it_fails(stream, result.task_id)
        stream.abort()


async def test_acks_after_close_are_refused(client: AsyncClient) -> None:
    stream = client.stream(all_tasks=True)
    async with stream:
        pass

    with pytest.raises(RuntimeError, match="closed"):
        await stream.ack(["0" * 32])
