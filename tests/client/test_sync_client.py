"""The blocking `Client`, against a real server running on an event loop in another thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from aiproc.client import AsyncClient, Client, InvalidArgument, NotFound, TaskResult, TaskState
from aiproc.server.app import AiprocServer
from tests.support import make_config

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."


@pytest.fixture
def server_address() -> Iterator[str]:
    """A server on its own loop and thread, so blocking calls from the test cannot stall it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = make_config(processor={"rate_limit_rps": 10_000.0, "rate_limit_burst": 100})
    server = asyncio.run_coroutine_threadsafe(AiprocServer.start(config), loop).result(10)
    try:
        yield server.address
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_the_sync_client_queues_waits_reads_and_cancels(server_address: str) -> None:
    with Client(server_address, client_id="sync") as client:
        queued = client.queue("https://example.com/a", TEXT, metadata={"k": "v"})
        result = client.wait(queued.task_id, timeout=10)
        assert result.success
        assert result.metadata == {"k": "v"}
        assert client.get(queued.task_id).state is TaskState.SUCCEEDED
        assert client.cancel(queued.task_id) is TaskState.SUCCEEDED
        assert client.stats().counters.completed == 1
        with pytest.raises(InvalidArgument):
            client.queue("ftp://example.com/a", TEXT)
        with pytest.raises(NotFound):
            client.get("f" * 32)


def test_the_sync_client_polls_results(server_address: str) -> None:
    with Client(server_address, client_id="sync-poller") as client:
        client.start_receiving()
        ids = {client.queue(f"https://example.com/{n}", TEXT).task_id for n in range(5)}
        received: list[TaskResult] = []
        deadline = time.monotonic() + 5
        while len(received) < len(ids) and time.monotonic() < deadline:
            if (result := client.try_recv_result()) is not None:
                received.append(result)
            received.extend(client.recv_all_results())
            time.sleep(0.01)  # a polling interval under the deadline, not a wait for an event
        assert sorted(r.task_id for r in received) == sorted(ids)


def test_a_closed_sync_client_refuses_calls(server_address: str) -> None:
    client = Client(server_address)
    client.close()
    client.close()
    with pytest.raises(RuntimeError):
        client.stats()


def test_an_async_client_built_before_its_loop_runs_works_in_it(server_address: str) -> None:
    client = AsyncClient(server_address)  # no running loop yet: the channel opens on first use

    async def use() -> int:
        async with client:
            return (await client.stats()).total_workers

    assert asyncio.run(use()) == 4
