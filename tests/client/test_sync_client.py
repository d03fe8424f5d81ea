"""The blocking `Client`, against a real server running on an event loop in another thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from aiproc.client import (
    AsyncClient,
    Client,
    InvalidArgument,
    NotFound,
    ProviderEventKind,
    TaskResult,
    TaskState,
)
from aiproc.server.app import AiprocServer
from aiproc.server.config import Config
from aiproc.server.providers.base import Provider
from tests.client.failover import FAILOVER_CONFIG, FailingProvider, SteadyProvider, WatchSpy
from tests.support import make_config

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."


@contextlib.contextmanager
def server_in_thread(
    config: Config, providers: Sequence[Provider] | None = None
) -> Iterator[AiprocServer]:
    """A server on its own loop and thread, so blocking calls from the test cannot stall it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    starting = AiprocServer.start(config, providers=providers)
    server = asyncio.run_coroutine_threadsafe(starting, loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.fixture
def server_address() -> Iterator[str]:
    config = make_config(processor={"rate_limit_rps": 10_000.0, "rate_limit_burst": 100})
    with server_in_thread(config) as server:
        yield server.address


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


def test_the_sync_client_watches_events_and_sends_max_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    providers: list[Provider] = [FailingProvider("primary"), SteadyProvider("secondary")]
    with (
        server_in_thread(FAILOVER_CONFIG, providers) as server,
        Client(server.address) as client,
    ):
        spy = WatchSpy(server, monkeypatch)
        with client.watch_events(timeout=10) as events:
            assert spy.started.wait(10), "the server never started watching"
            queued = client.queue("https://example.com/a", TEXT, max_retries=1)
            event = next(e for e in events if e.kind is ProviderEventKind.FAILOVER)
        assert spy.stopped.wait(10), "the server kept watching after the block"
        assert (event.provider, event.to_provider, event.task_id) == (
            "primary",
            "secondary",
            queued.task_id,
        )
        info = client.get(queued.task_id)
        assert info.spec.max_retries == 1
        result = client.wait(queued.task_id, timeout=10)
        assert [attempt.provider for attempt in result.history] == ["primary", "secondary"]
        assert client.stats().counters.failovers == 1
