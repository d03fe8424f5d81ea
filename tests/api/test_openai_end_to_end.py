"""Through the gRPC API to a real fake OpenAI-compatible HTTP server, as a user configures it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from google.protobuf.duration_pb2 import Duration

from aiproc.server.app import AiprocServer
from aiproc.server.config import Config, ProviderConfig
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.test_server import Stream, queue_request
from tests.support import ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]
KEY = "sk-test-not-a-real-key-0123456789"


def openai_config(fake: FakeOpenAIServer, **processor: object) -> Config:
    # No health checks: they would take scripted replies meant for completions.
    config = make_config(
        processor={"rate_limit_rps": 1000.0, **processor}, health={"enabled": False}
    )
    provider = ProviderConfig(
        name="primary",
        kind="openai",
        base_url=fake.base_url,
        api_key_env="FAKE_OPENAI_KEY",
        model="gpt-4o-mini",
    )
    return replace(config, providers=(provider,))


async def run_one(stub: pb_grpc.ProcessorServiceAsyncStub, **fields: object) -> task_pb2.TaskResult:
    queued = await stub.QueueTask(queue_request(**fields), timeout=5)
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    (result,) = await stream.results(1)
    stream.close()
    return result


async def test_a_configured_openai_provider_enhances_content(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        server = await start_server(openai_config(fake), env={"FAKE_OPENAI_KEY": KEY})
        result = await run_one(channel_to(server))
        assert result.success, result.error.message
        assert result.provider == "primary"
        assert result.model == "gpt-4o-mini"
        assert result.usage.input_tokens > 0
        assert result.usage.output_tokens > 0
        (request,) = fake.requests
        assert request.headers["authorization"] == f"Bearer {KEY}"
        body = request.body
        assert body["model"] == "gpt-4o-mini"
        assert body["max_tokens"] == 2048
        assert body["temperature"] == 0.7
        system, user = body["messages"]
        assert system["role"] == "system"
        assert "analyze and enhance" in system["content"].lower()
        assert user["content"].startswith("URL: https://example.com/a\n\nContent:\n")


async def test_5xx_answers_are_retried_with_backoff_until_success(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        fake.fail_next(2, status=503)
        config = openai_config(fake, initial_backoff="10ms")
        server = await start_server(config, env={"FAKE_OPENAI_KEY": KEY})
        stub = channel_to(server)
        result = await run_one(stub)
        assert result.success
        assert result.attempts == 3
        stats = await stub.Stats(pb.StatsRequest(), timeout=5)
        assert stats.counters.retried == 2
        (provider,) = stats.providers
        assert (provider.requests, provider.failures) == (3, 2)


async def test_retry_after_is_honoured(start_server: ServerFactory, channel_to: Connect) -> None:
    async with FakeOpenAIServer() as fake:
        fake.enqueue(FakeReply(status=429, headers={"retry-after-ms": "300"}))
        server = await start_server(openai_config(fake), env={"FAKE_OPENAI_KEY": KEY})
        result = await run_one(channel_to(server))
        assert result.success
        first, second = fake.requests
        assert second.arrived_at - first.arrived_at >= 0.3


async def test_a_rejected_key_fails_at_once_without_leaking_it(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        fake.enqueue(
            FakeReply(
                status=401,
                body={"error": {"message": f"Incorrect API key provided: {KEY}", "type": "auth"}},
            )
        )
        server = await start_server(openai_config(fake), env={"FAKE_OPENAI_KEY": KEY})
        result = await run_one(channel_to(server))
        assert result.state == task_pb2.TASK_STATE_FAILED
        assert result.error.code == task_pb2.ERROR_CODE_AUTHENTICATION
        assert result.attempts == 1
        assert len(fake.requests) == 1
        assert KEY not in result.error.message


async def test_rate_limit_rps_bounds_every_window_of_provider_calls(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    rate = 20.0
    async with FakeOpenAIServer() as fake:
        config = openai_config(fake, rate_limit_rps=rate, num_workers=16)
        server = await start_server(config, env={"FAKE_OPENAI_KEY": KEY})
        stub = channel_to(server)
        ids = [(await stub.QueueTask(queue_request(), timeout=5)).task_id for _ in range(40)]
        stream = Stream(stub)
        stream.subscribe(*ids)
        results = await stream.results(40)
        stream.close()
        assert all(r.success for r in results)
        arrivals = sorted(r.arrived_at for r in fake.requests)
        # burst 1: no window of length w may hold more than rate * w + 1 calls
        # (a small allowance for the gap between leaving the limiter and arriving).
        for window in (0.25, 0.5, 1.0):
            for i, start in enumerate(arrivals):
                inside = sum(1 for t in arrivals[i:] if t < start + window)
                assert inside <= rate * window + 1 + 1, (window, inside)


async def test_unreachable_provider_fails_with_a_transient_error(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        config = openai_config(fake, max_retries=1, initial_backoff="10ms")
    # The fake is closed now: its port refuses connections.
    server = await start_server(config, env={"FAKE_OPENAI_KEY": KEY})
    result = await run_one(channel_to(server))
    assert result.state == task_pb2.TASK_STATE_FAILED
    assert result.error.code == task_pb2.ERROR_CODE_TRANSIENT
    assert result.attempts == 2


async def test_a_provider_that_hangs_times_out_and_counts_as_failing(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        fake.enqueue(FakeReply(hang=True))
        server = await start_server(openai_config(fake), env={"FAKE_OPENAI_KEY": KEY})
        stub = channel_to(server)
        result = await run_one(stub, timeout=Duration(nanos=500_000_000))
        assert result.error.code == task_pb2.ERROR_CODE_TIMEOUT
        assert [a.error.code for a in result.history] == [task_pb2.ERROR_CODE_TIMEOUT]
        stats = await stub.Stats(pb.StatsRequest(), timeout=5)
        (provider,) = stats.providers
        assert (provider.requests, provider.failures) == (1, 1)
