"""Resilience through the gRPC API against real fake provider servers.

These are the scenarios a user relies on: a primary that fails and dies, its
recovery and failback, a storm of 429s, and a rate limit held over a long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import replace

import grpc

from aiproc.server.app import AiprocServer
from aiproc.server.config import Config, ProviderConfig
from aiproc.server.fakes.faults import HttpError
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.server.fakes.phases import Phase
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.test_server import Stream, queue_request
from tests.processes import fake_provider_process, provider_arrivals
from tests.support import ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]


def provider(name: str, fake: FakeOpenAIServer, priority: int, **fields: object) -> ProviderConfig:
    return ProviderConfig(
        name=name, kind="openai", base_url=fake.base_url, priority=priority, **fields
    )  # type: ignore[arg-type]


def with_providers(config: Config, *providers: ProviderConfig) -> Config:
    return replace(config, providers=providers)


async def run_tasks(
    stub: pb_grpc.ProcessorServiceAsyncStub, n: int, within: float = 10.0
) -> list[task_pb2.TaskResult]:
    ids = [(await stub.QueueTask(queue_request(), timeout=5)).task_id for _ in range(n)]
    stream = Stream(stub, deadline=within + 5)
    stream.subscribe(*ids)
    results = await stream.results(n, within)
    stream.ack(*ids)
    stream.close()
    return results


def completions(fake: FakeOpenAIServer) -> list[float]:
    return sorted(r.arrived_at for r in fake.requests if r.path.endswith("/chat/completions"))


class EventLog:
    """Collects WatchEvents in the background."""

    def __init__(self, stub: pb_grpc.ProcessorServiceAsyncStub) -> None:
        self.events: list[pb.ProviderEvent] = []
        self.changed = asyncio.Condition()
        self._call = stub.WatchEvents(pb.WatchEventsRequest())
        self._task = asyncio.create_task(self._read())

    async def watching(self) -> None:
        """Returns once the server is watching (it sends initial metadata then)."""
        await self._call.initial_metadata()

    async def _read(self) -> None:
        async for response in self._call:
            async with self.changed:
                self.events.append(response.event)
                self.changed.notify_all()

    async def wait_for(
        self, kind: int, provider: str, within: float = 10.0, health: int | None = None
    ) -> pb.ProviderEvent:
        """The first event of `kind` about `provider` (with that `health`, if given)."""

        def found() -> pb.ProviderEvent | None:
            matches = (
                e
                for e in self.events
                if e.kind == kind and e.provider == provider and health in (None, e.health)
            )
            return next(matches, None)

        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: found() is not None)
        event = found()
        assert event is not None
        return event

    async def close(self) -> None:
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._task


async def test_primary_failing_then_dead_loses_no_task_and_traffic_fails_back(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as primary, FakeOpenAIServer() as secondary:
        config = with_providers(
            make_config(
                processor={"rate_limit_rps": 1000.0, "num_workers": 8},
                failover={"retry_delay": "10ms", "failback_delay": "1s"},
                circuit_breaker={"preset": "strict", "recovery_timeout": "500ms"},
                health={"enabled": False},
            ),
            provider("primary", primary, 1),
            provider("secondary", secondary, 2),
        )
        server = await start_server(config)
        stub = channel_to(server)
        log = EventLog(stub)
        await log.watching()
        try:
            # Phase 1: the primary answers 500s.
            primary.set_phase(Phase(fault=HttpError(500)))
            results = await run_tasks(stub, 30)
            assert all(r.success for r in results), [r.error.message for r in results]
            await log.wait_for(pb.PROVIDER_EVENT_KIND_BREAKER_OPENED, "primary")
            # Phase 2: the primary refuses connections.
            await primary.aclose()
            results = await run_tasks(stub, 30)
            assert all(r.success for r in results), [r.error.message for r in results]
            assert {r.provider for r in results} == {"secondary"}
            # Phase 3: the primary comes back healthy on the same port.
            primary.set_phases(())  # normal answers from now on
            await primary.start()
            recovered_at = None
            deadline = time.monotonic() + 20
            while recovered_at is None:
                assert time.monotonic() < deadline, "primary never recovered"
                results = await run_tasks(stub, 4)
                assert all(r.success for r in results)
                if any(e.kind == pb.PROVIDER_EVENT_KIND_RECOVERED for e in log.events):
                    recovered_at = time.monotonic()
            # The secondary keeps the traffic through the failback delay (1 s),
            # then it returns to the primary.
            recovered = next(e for e in log.events if e.kind == pb.PROVIDER_EVENT_KIND_RECOVERED)
            while True:
                assert time.monotonic() < deadline, "traffic never returned to the primary"
                back = [r for r in await run_tasks(stub, 2) if r.provider == "primary"]
                if back:
                    break
            first_call = back[0].history[-1].started_at.ToNanoseconds() / 1e9
            assert first_call >= recovered.at.ToNanoseconds() / 1e9 + 1.0
            assert any(e.kind == pb.PROVIDER_EVENT_KIND_FAILBACK for e in log.events)
            results = await run_tasks(stub, 10)
            assert {r.provider for r in results} == {"primary"}
            stats = await stub.Stats(pb.StatsRequest(), timeout=5)
            assert stats.counters.failovers > 0
            assert stats.counters.failed == 0
        finally:
            await log.close()


async def test_a_429_storm_fails_no_task_and_no_request_comes_before_retry_after(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        config = with_providers(
            make_config(processor={"rate_limit_rps": 1000.0}, health={"enabled": False}),
            provider("only", fake, 1, max_concurrent_requests=1),
        )
        fake.enqueue(*(FakeReply(status=429, headers={"retry-after-ms": "250"}) for _ in range(6)))
        server = await start_server(config)
        stub = channel_to(server)
        results = await run_tasks(stub, 8)
        assert all(r.success for r in results), [r.error.message for r in results]
        arrivals = completions(fake)
        assert len(arrivals) == 6 + 8
        # One call at a time: each of the first six got a 429 asking for 250 ms.
        for limited, following in itertools.pairwise(arrivals[:7]):
            assert following - limited >= 0.25
        stats = await stub.Stats(pb.StatsRequest(), timeout=5)
        assert stats.counters.retried == 0  # rate limits did not spend retries
        assert stats.providers[0].rate_limited == 6


async def test_rate_limit_rps_holds_over_a_30_second_run(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    rate, burst, seconds = 20.0, 1, 30
    async with fake_provider_process() as base_url:
        config = with_providers(
            make_config(
                processor={
                    "rate_limit_rps": rate,
                    "rate_limit_burst": burst,
                    "num_workers": 32,
                    "queue_size": 2000,
                },
                health={"enabled": False},
            ),
            ProviderConfig(
                name="only", kind="openai", base_url=base_url, max_concurrent_requests=32
            ),
        )
        server = await start_server(config)
        stub = channel_to(server)
        total = int(rate * seconds) + 1
        results = await run_tasks(stub, total, within=seconds * 2)
        assert all(r.success for r in results)
        arrivals = await provider_arrivals(base_url)
    assert len(arrivals) == total
    average = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    # Above the rate is the limiter's failure; a little below it, a machine too busy
    # to keep up for a moment (what the limiter achieves is measured by bench/).
    assert rate * 0.95 <= average <= rate * 1.01, f"{average:.2f} calls/s"
    # The limiter admits at most rate x w + burst calls in any window of w
    # seconds (tests/resilience prove that exactly); at the provider's socket
    # (another process) a call may arrive up to 250 ms later than it left the
    # limiter on a busy shared machine, which lets rate x 0.25 more calls into a
    # window. Without the limiter the whole run would arrive in about a second.
    jitter_allowance = rate * 0.25
    for window in (1.0, 5.0):
        limit = rate * window + burst + jitter_allowance
        for i, start in enumerate(arrivals):
            inside = sum(1 for t in arrivals[i : i + int(limit) + 2] if t < start + window)
            assert inside <= limit, f"{inside} calls in {window:g} s from {start:.3f}"


async def test_health_checks_use_the_model_list_and_steer_traffic_away(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as primary, FakeOpenAIServer() as secondary:
        config = with_providers(
            make_config(
                processor={"rate_limit_rps": 1000.0},
                health={"check_interval": "50ms", "timeout": "1s"},
                failover={"health_check_threshold": 3},
            ),
            provider("primary", primary, 1),
            provider("secondary", secondary, 2),
        )
        primary.set_phase(Phase(fault=HttpError(503)))  # every request, checks included
        server = await start_server(config)
        stub = channel_to(server)
        log = EventLog(stub)
        await log.watching()
        try:
            unavailable = pb.HEALTH_LEVEL_UNAVAILABLE
            await log.wait_for(pb.PROVIDER_EVENT_KIND_HEALTH_CHANGED, "primary", health=unavailable)
            results = await run_tasks(stub, 10)
            assert {r.provider for r in results} == {"secondary"}
            assert all(len(r.history) == 1 for r in results)  # primary not even tried
            assert completions(primary) == []  # checks never made a paid completion
            assert {r.path for r in primary.requests} == {"/v1/models"}
            stats = await stub.Stats(pb.StatsRequest(), timeout=5)
            by_name = {p.name: p for p in stats.providers}
            assert by_name["primary"].health == pb.HEALTH_LEVEL_UNAVAILABLE
            assert by_name["primary"].state == "unavailable"
            # Checks that pass again bring it back (success_threshold = 2).
            primary.set_phases(())
            healthy = pb.HEALTH_LEVEL_HEALTHY
            await log.wait_for(pb.PROVIDER_EVENT_KIND_HEALTH_CHANGED, "primary", health=healthy)
            results = await run_tasks(stub, 4)
            assert {r.provider for r in results} == {"primary"}
        finally:
            await log.close()
