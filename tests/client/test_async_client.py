"""`AsyncClient` against a real in-process server on port 0."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from aiproc.client import (
    AsyncClient,
    DeadlineExceeded,
    ErrorCode,
    InvalidArgument,
    NotFound,
    Priority,
    ProgressEvent,
    ProgressKind,
    QueueFull,
    TaskResult,
    TaskState,
    Unavailable,
)
from aiproc.client._retry import RetryPolicy
from aiproc.server.app import AiprocServer
from tests.support import GatedProvider, ServerFactory, make_config

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."
FAST = {"rate_limit_rps": 10_000.0, "rate_limit_burst": 100}

_T = TypeVar("_T")


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., AsyncClient]]:
    """Makes clients to a server; closes them all at the end of the test."""
    made: list[AsyncClient] = []

    def make(server: AiprocServer | str, **kwargs: object) -> AsyncClient:
        target = server if isinstance(server, str) else server.address
        client = AsyncClient(target, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def eventually(probe: Callable[[], Awaitable[_T]], done: Callable[[_T], bool]) -> _T:
    """Polls `probe` until `done` says yes, failing after five seconds."""
    async with asyncio.timeout(5):
        while True:
            if done(value := await probe()):
                return value
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_queue_then_wait_returns_the_enhanced_result_and_acks_it(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    server = await start_server()
    client = clients(server, client_id="alice")
    queued = await client.queue(
        "https://example.com/a", TEXT, priority="high", metadata={"batch": "1"}
    )
    assert queued.state is TaskState.QUEUED
    assert not queued.deduplicated
    result = await client.wait(queued.task_id, timeout=10)
    assert isinstance(result, TaskResult)
    assert result.task_id == queued.task_id
    assert result.success
    assert result.state is TaskState.SUCCEEDED
    assert result.enhanced_content.startswith("> Offline extractive summary")
    assert result.metadata == {"batch": "1"}
    assert result.completed_at is not None
    assert (await client.stats()).undelivered_results == 0  # the ack landed before wait returned
    info = await client.get(queued.task_id)
    assert info.state is TaskState.SUCCEEDED
    assert info.spec.priority is Priority.HIGH
    assert info.result == result


async def test_tasks_belong_to_the_client_id_sent_as_metadata(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    server = await start_server()
    alice, bob = clients(server, client_id="alice"), clients(server, client_id="bob")
    queued = await alice.queue("https://example.com/a", TEXT)
    assert (await alice.get(queued.task_id)).task_id == queued.task_id
    with pytest.raises(NotFound):
        await bob.get(queued.task_id)


async def test_invalid_arguments_name_the_field(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    client = clients(await start_server())
    with pytest.raises(InvalidArgument) as caught:
        await client.queue("not a url", TEXT)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "task.url" in caught.value.message


async def test_a_repeated_idempotency_key_returns_the_first_task(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    client = clients(await start_server())
    first = await client.queue("https://example.com/a", TEXT, idempotency_key="k-1")
    again = await client.queue("https://example.com/a", TEXT, idempotency_key="k-1")
    assert again.task_id == first.task_id
    assert again.deduplicated
    assert not first.deduplicated


async def test_a_full_queue_raises_queue_full(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, "queue_size": 1})
    client = clients(await start_server(config, providers=[provider]))
    await client.queue("https://example.com/running", TEXT)
    await provider.wait_calls(1)
    await client.queue("https://example.com/waiting", TEXT)
    with pytest.raises(QueueFull):
        await client.queue("https://example.com/refused", TEXT)
    provider.gate.set()


async def test_one_stream_takes_later_subscriptions_acks_and_progress(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, **FAST})
    client = clients(await start_server(config, providers=[provider]))
    first = await client.queue("https://example.com/1", TEXT)
    await provider.wait_calls(1)  # the only worker is busy: the others wait
    second = await client.queue("https://example.com/2", TEXT)
    marker = await client.queue("https://example.com/marker", TEXT)
    await client.cancel(marker.task_id)
    received: list[TaskResult | ProgressEvent] = []
    async with client.stream(task_ids=[first.task_id], include_progress=True) as stream:
        await stream.subscribe([second.task_id, marker.task_id])
        async with asyncio.timeout(10):
            async for item in stream:
                received.append(item)
                if isinstance(item, TaskResult):
                    await stream.ack([item.task_id])
                    # The marker's result proves the server took the second
                    # subscription: only now may the second task start.
                    provider.gate.set()
                if sum(isinstance(i, TaskResult) for i in received) == 3:
                    break
    results = [item for item in received if isinstance(item, TaskResult)]
    assert results[0].task_id == marker.task_id
    assert {r.task_id for r in results[1:]} == {first.task_id, second.task_id}
    assert all(r.success for r in results[1:])
    started = [
        e for e in received if isinstance(e, ProgressEvent) and e.kind is ProgressKind.STARTED
    ]
    assert [e.task_id for e in started] == [second.task_id]
    assert (await client.stats()).undelivered_results == 0


async def test_subscribing_to_an_unknown_id_fails_the_stream_with_not_found(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    client = clients(await start_server())

    async def read_stream() -> None:
        async with client.stream(task_ids=["0" * 32]) as stream, asyncio.timeout(5):
            async for _ in stream:
                pass

    with pytest.raises(NotFound) as caught:
        await read_stream()
    assert "0" * 32 in caught.value.message


async def test_wait_has_a_deadline(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    client = clients(await start_server(providers=[provider]))
    queued = await client.queue("https://example.com/slow", TEXT)
    with pytest.raises(DeadlineExceeded):
        await client.wait(queued.task_id, timeout=0.3)
    provider.gate.set()


async def test_cancel_a_queued_task_and_receive_its_cancelled_result(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1})
    client = clients(await start_server(config, providers=[provider]))
    running = await client.queue("https://example.com/running", TEXT)
    await provider.wait_calls(1)
    waiting = await client.queue("https://example.com/waiting", TEXT)
    assert await client.cancel(waiting.task_id) is TaskState.CANCELLED
    result = await client.wait(waiting.task_id, timeout=5)
    assert result.state is TaskState.CANCELLED
    assert not result.success
    assert result.error is not None
    assert result.error.code is ErrorCode.CANCELLED
    provider.gate.set()
    done = await client.wait(running.task_id, timeout=5)
    assert await client.cancel(running.task_id) is done.state is TaskState.SUCCEEDED


async def test_try_recv_result_and_recv_all_results_hand_out_every_result_once(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = clients(server, client_id="poller")
    assert await client.try_recv_result() is None  # starts the subscription; nothing yet
    ids = {(await client.queue(f"https://example.com/{n}", TEXT)).task_id for n in range(12)}
    first = await eventually(client.try_recv_result, lambda r: r is not None)
    assert first is not None
    seen = [first.task_id]

    async def drain() -> int:
        seen.extend(r.task_id for r in await client.recv_all_results())
        return len(seen)

    await eventually(drain, lambda count: count >= len(ids))
    assert sorted(seen) == sorted(ids)
    stats = await eventually(client.stats, lambda s: s.undelivered_results == 0)
    assert stats.counters.completed == len(ids)


async def test_the_receive_buffer_is_bounded_and_loses_nothing(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = clients(server, buffer_size=2)
    ids = {(await client.queue(f"https://example.com/{n}", TEXT)).task_id for n in range(20)}
    await eventually(client.stats, lambda s: s.counters.completed == len(ids))
    await client.start_receiving()
    batches: list[list[TaskResult]] = []

    async def drain() -> int:
        batches.append(await client.recv_all_results())
        return sum(len(batch) for batch in batches)

    await eventually(drain, lambda count: count >= len(ids))
    assert max(len(batch) for batch in batches) <= 2
    assert sorted(r.task_id for batch in batches for r in batch) == sorted(ids)


async def test_an_unreachable_server_raises_unavailable(
    clients: Callable[..., AsyncClient],
) -> None:
    retry = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.01)
    client = clients(f"127.0.0.1:{free_port()}", timeout=5, retry=retry)
    with pytest.raises(Unavailable):
        await client.stats()
    with pytest.raises(Unavailable):
        await client.queue("https://example.com/a", TEXT)


async def test_closed_clients_refuse_to_receive(clients: Callable[..., AsyncClient]) -> None:
    client = clients(f"127.0.0.1:{free_port()}")
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(RuntimeError):
        await client.start_receiving()
