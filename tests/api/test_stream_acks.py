"""StreamResults acks over a real socket: applied behind the reading, never holding it up."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import grpc
import pytest

from aiproc.server.core.errors import StoreError
from aiproc.v1 import processor_service_pb2 as pb
from tests.api.test_server import Connect, Stream, queue_request
from tests.support import ServerFactory


async def read_to_the_end(stream: Stream) -> None:
    async with asyncio.timeout(5):
        while await stream.call.read() is not grpc.aio.EOF:
            pass


async def test_a_subscribe_after_an_ack_is_answered_while_the_ack_is_being_written(
    start_server: ServerFactory, channel_to: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    stub = channel_to(server)
    first = await stub.QueueTask(queue_request("https://e.com/1"), timeout=5)
    second = await stub.QueueTask(queue_request("https://e.com/2"), timeout=5)
    store = server.processor.store
    write_ack = store.ack
    written = asyncio.Event()

    async def held_ack(client_id: str, task_ids: Collection[str]) -> int:
        await written.wait()
        return await write_ack(client_id, task_ids)

    monkeypatch.setattr(store, "ack", held_ack)
    stream = Stream(stub)
    stream.subscribe(first.task_id)
    await stream.results(1)
    stream.ack(first.task_id)
    stream.subscribe(second.task_id)
    (result,) = await stream.results(1, within=5)
    assert result.task_id == second.task_id
    written.set()
    stream.close()
    async with asyncio.timeout(5):
        assert await stream.call.read() is grpc.aio.EOF  # after the ack was applied
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.undelivered_results == 1  # the second result, never acked


async def test_an_ack_the_store_cannot_write_ends_the_call_unavailable(
    start_server: ServerFactory, channel_to: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    stub = channel_to(server)
    queued = await stub.QueueTask(queue_request(), timeout=5)

    async def failing_ack(client_id: str, task_ids: Collection[str]) -> int:
        raise StoreError("the disk is full")

    monkeypatch.setattr(server.processor.store, "ack", failing_ack)
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    await stream.results(1)
    stream.ack(queued.task_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_to_the_end(stream)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the disk is full" in (caught.value.details() or "")
