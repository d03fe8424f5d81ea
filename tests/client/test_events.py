"""Provider events, attempt history and per-task retries against a real in-process server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aiproc.client import (
    AsyncClient,
    BreakerState,
    ErrorCode,
    EventCount,
    EventStream,
    InvalidArgument,
    ProviderEvent,
    ProviderEventKind,
)
from aiproc.server.app import AiprocServer
from tests.client.failover import FAILOVER_CONFIG, FailingProvider, SteadyProvider, WatchSpy
from tests.support import ServerFactory

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."
WITHIN = 10.0
"""Seconds any one awaited outcome may take before the test fails."""


@pytest.fixture
async def failover_server(start_server: ServerFactory) -> AiprocServer:
    """A server whose first provider always fails, so every task fails over to the second."""
    server: AiprocServer = await start_server(
        FAILOVER_CONFIG, providers=[FailingProvider("primary"), SteadyProvider("secondary")]
    )
    return server


@pytest.fixture
async def client(failover_server: AiprocServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(failover_server.address, client_id="watcher") as opened:
        yield opened


async def until_watching(spy: WatchSpy) -> None:
    assert await asyncio.to_thread(spy.started.wait, WITHIN), "the server never started watching"


async def first_of_kind(events: EventStream, kind: ProviderEventKind) -> ProviderEvent:
    """The first event of `kind` on the stream; others (e.g. health changes) are skipped."""
    async with asyncio.timeout(WITHIN):
        async for event in events:
            if event.kind is kind:
                return event
    pytest.fail(f"the event stream ended before a {kind} event")


async def test_a_failover_is_streamed_and_the_result_lists_both_attempts(
    failover_server: AiprocServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WatchSpy(failover_server, monkeypatch)
    async with client.watch_events() as events:
        await until_watching(spy)
        queued = await client.queue("https://example.com/a", TEXT)
        event = await first_of_kind(events, ProviderEventKind.FAILOVER)
    assert event.provider == "primary"
    assert event.to_provider == "secondary"
    assert event.task_id == queued.task_id
    assert "500 from primary" in event.reason
    assert event.at is not None

    result = await client.wait(queued.task_id, timeout=WITHIN)
    assert result.success
    assert result.provider == "secondary"
    assert [attempt.provider for attempt in result.history] == ["primary", "secondary"]
    failed, succeeded = result.history
    assert failed.error is not None
    assert failed.error.code is ErrorCode.TRANSIENT
    assert "500 from primary" in failed.error.message
    assert succeeded.error is None
    assert failed.started_at is not None
    assert succeeded.started_at is not None
    assert failed.started_at <= succeeded.started_at
    assert (await client.get(queued.task_id)).result == result


async def test_stats_count_failovers_events_and_provider_failures(
    failover_server: AiprocServer, client: AsyncClient
) -> None:
    queued = await client.queue("https://example.com/a", TEXT)
    await client.wait(queued.task_id, timeout=WITHIN)
    stats = await client.stats()
    assert stats.counters.failovers == 1
    assert EventCount(ProviderEventKind.FAILOVER, 1) in stats.event_counts
    primary, secondary = stats.providers
    assert (primary.name, primary.failures, primary.error_rate) == ("primary", 1, 1.0)
    assert (secondary.name, secondary.failures, secondary.error_rate) == ("secondary", 0, 0.0)
    assert primary.breaker_state is BreakerState.CLOSED  # one failure opens no breaker
    assert primary.max_concurrent_requests == 10
    assert primary.paused_for == 0.0


async def test_leaving_the_block_ends_the_watch_on_the_server(
    failover_server: AiprocServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WatchSpy(failover_server, monkeypatch)
    async with client.watch_events() as events:
        await until_watching(spy)
    assert await asyncio.to_thread(spy.stopped.wait, WITHIN), "the server kept watching"
    assert [event async for event in events] == []  # a closed stream yields nothing more


async def test_the_stream_ends_when_the_server_stops(
    failover_server: AiprocServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = WatchSpy(failover_server, monkeypatch)
    async with client.watch_events() as events:
        await until_watching(spy)
        await failover_server.stop(grace=1.0)
        async with asyncio.timeout(WITHIN):
            remaining = [event async for event in events]
    assert all(isinstance(event, ProviderEvent) for event in remaining)


async def test_an_event_stream_must_be_entered_once(client: AsyncClient) -> None:
    events = client.watch_events()
    with pytest.raises(RuntimeError, match="async with"):
        await anext(events)
    async with events:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        await events.__aenter__()


async def test_max_retries_reaches_the_task_spec(client: AsyncClient) -> None:
    budgeted = await client.queue("https://example.com/a", TEXT, max_retries=0)
    default = await client.queue("https://example.com/b", TEXT)
    assert (await client.get(budgeted.task_id)).spec.max_retries == 0
    assert (await client.get(default.task_id)).spec.max_retries is None
    with pytest.raises(InvalidArgument, match=r"task\.max_retries"):
        await client.queue("https://example.com/c", TEXT, max_retries=21)
    with pytest.raises(ValueError, match="max_retries"):
        await client.queue("https://example.com/d", TEXT, max_retries=-1)
