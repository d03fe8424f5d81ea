"""A real server against providers that leak keys or answer garbage.

The keys must appear nowhere a caller or an operator's tools could see them:
results, progress, GetTask, ListTasks, Stats, WatchEvents, the server's logs
and its spans. Garbage must end every task in a terminal state with a
classified error, and leave the server working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiproc.server.app import AiprocServer
from aiproc.server.config import ProviderConfig, TelemetryConfig
from aiproc.server.fakes.anthropic_dialect import AnthropicDialect
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import EchoRequest, FakeReply, Garbage
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.fakes.phases import Phase
from aiproc.server.telemetry.setup import Telemetry
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.test_server import Stream, queue_request
from tests.support import ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]

# Shaped like no known key, so only the exact-match redaction can hide them.
KEY_ENV = "Zx9-aiproc-env-secret-41c7d2e8"
KEY_FILE = "Qm4-aiproc-file-secret-0b9f6a13"
KEYS = (KEY_ENV, KEY_FILE)


def leaks(text: str) -> list[str]:
    """The keys, or recognisable pieces of them, that `text` holds."""
    return [piece for key in KEYS for piece in (key, key[:14], key[-12:]) if piece in text]


def error_body(status: int, words: str) -> FakeReply:
    return FakeReply(status=status, body={"error": {"message": words, "type": "oops"}})


@contextlib.asynccontextmanager
async def collect_events(
    stub: pb_grpc.ProcessorServiceAsyncStub, into: list[str]
) -> AsyncIterator[None]:
    call = stub.WatchEvents(pb.WatchEventsRequest(), timeout=60)
    await call.initial_metadata()

    async def read() -> None:
        async for response in call:
            into.append(text_format.MessageToString(response))

    reader = asyncio.create_task(read())
    try:
        yield
    finally:
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_provider_keys_appear_nowhere(
    start_server: ServerFactory,
    channel_to: Connect,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Header capture is asked for: aiproc's HTTP spans record no header whatever it says.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(KEY_FILE + "\n")
    exporter = InMemorySpanExporter()
    async with (
        FakeOpenAIServer() as openai,
        FakeProviderServer(AnthropicDialect(api_key=KEY_FILE)) as anthropic,
    ):
        config = make_config(
            processor={"rate_limit_rps": 1000.0, "max_retries": 1, "initial_backoff": "10ms"},
            failover={"retry_delay": "10ms", "circuit_breaker_enabled": False},
            health={"enabled": False},
        )
        config = replace(
            config,
            providers=(
                ProviderConfig(
                    name="leaky-openai", kind="openai", base_url=openai.base_url,
                    api_key_env="LEAKY_KEY", model="gpt-4o-mini", priority=1,
                ),
                ProviderConfig(
                    name="leaky-anthropic", kind="anthropic", base_url=anthropic.base_url,
                    api_key_file=str(key_file), model="claude-x", priority=2,
                ),
            ),
            telemetry=TelemetryConfig(record_content=True),
        )  # fmt: skip
        telemetry = Telemetry.start(config.telemetry, env={}, span_exporter=exporter)
        server = await start_server(config, env={"LEAKY_KEY": KEY_ENV}, telemetry=telemetry)
        stub = channel_to(server)
        # Every way a vendor has been seen to repeat a key, on both providers.
        openai.enqueue(
            error_body(401, f"Incorrect API key provided: {KEY_ENV}"),
            FakeReply(fault=EchoRequest(403)),
            error_body(500, f"upstream said: key={KEY_ENV}"),
            FakeReply(fault=EchoRequest(500)),
            FakeReply(body={"choices": [], "error": {"message": f"Bearer {KEY_ENV} rejected"}}),
            FakeReply(fault=EchoRequest(200)),
            FakeReply(
                body={"choices": [{"message": {"content": f"echo {KEY_ENV}"}}], "model": KEY_ENV}
            ),
        )
        anthropic.set_phase(Phase(EchoRequest(401), requests=3))
        anthropic.enqueue(error_body(400, f"x-api-key {KEY_FILE} is not allowed"))
        events: list[str] = []
        seen: list[str] = []
        async with collect_events(stub, events):
            stream = Stream(stub)
            stream.subscribe(all_tasks=True, progress=True)
            # One task per openai reply: each task's first call goes to openai.
            ids = [(await stub.QueueTask(queue_request(), timeout=5)).task_id for _ in range(7)]
            results = await stream.results(len(ids), within=30)
            stream.close()
            while (response := await stream.call.read()) is not grpc.aio.EOF:
                seen.append(text_format.MessageToString(response))
            for task_id in ids:
                got = await stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=5)
                seen.append(text_format.MessageToString(got))
            seen.append(text_format.MessageToString(await stub.ListTasks(pb.ListTasksRequest())))
            seen.append(text_format.MessageToString(await stub.Stats(pb.StatsRequest())))
        seen.extend(text_format.MessageToString(r) for r in results)
        # The faults were really played, and their texts really reached the results.
        assert sum(v for k, v in openai.stats().outcomes.items() if k != "200") >= 4
        assert anthropic.stats().outcomes.get("echo", 0) >= 1
        every_result = "\n".join(seen)
        assert "[redacted]" in every_result
        assert "Incorrect API key provided" in every_result
        await server.stop(grace=1.0)
    spans = exporter.get_finished_spans()
    exported = [
        "\n".join(
            [span.name, str(span.status.description)]
            + [f"{k}={v}" for k, v in (span.attributes or {}).items()]
            + [f"{e.name} {e.attributes}" for e in span.events]
        )
        for span in spans
    ]
    # The provider calls' own HTTP spans are among those searched.
    assert any(span.name == "POST" for span in spans)
    logs = "\n".join(caplog.text.splitlines())
    for where, text in [
        ("results and replies", every_result),
        ("events", "\n".join(events)),
        ("logs", logs),
        ("spans", "\n".join(exported)),
    ]:
        assert leaks(text) == [], f"a key leaked into {where}"


async def test_garbage_answers_end_every_task_classified_and_the_server_carries_on(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    async with FakeOpenAIServer() as fake:
        fake.set_phase(Phase(Garbage(seed=11)))
        config = make_config(
            processor={
                "num_workers": 8,
                "rate_limit_rps": 10_000.0,
                "max_retries": 2,
                "initial_backoff": "5ms",
                "max_backoff": "50ms",
                "worker_timeout": "10s",
            },
            failover={"retry_delay": "5ms", "circuit_breaker_enabled": False},
            health={"enabled": False},
        )
        provider = ProviderConfig(
            name="garbage", kind="openai", base_url=fake.base_url, model="gpt-4o-mini"
        )
        server = await start_server(replace(config, providers=(provider,)))
        stub = channel_to(server)
        stream = Stream(stub, deadline=60)
        stream.subscribe(all_tasks=True)
        ids = {(await stub.QueueTask(queue_request(), timeout=5)).task_id for _ in range(150)}
        results = await stream.results(len(ids), within=50)

        assert {r.task_id for r in results} == ids  # each exactly once, none lost
        unclassified = {
            task_pb2.ERROR_CODE_UNSPECIFIED,
            task_pb2.ERROR_CODE_INTERNAL,
            task_pb2.ERROR_CODE_CRASHED,
        }
        for result in results:
            assert result.state == task_pb2.TASK_STATE_FAILED, result
            assert result.error.code not in unclassified, result.error
        kinds = {k for k in fake.stats().outcomes if k.startswith("garbage:")}
        assert len(kinds) >= 8, kinds
        for task_id in ids:
            got = await stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=5)
            assert got.task.state == task_pb2.TASK_STATE_FAILED
        stats = await stub.Stats(pb.StatsRequest(), timeout=5)
        assert stats.counters.failed == len(ids)
        assert server.processor.pool.alive == stats.total_workers == 8

        # The provider heals; the same workers serve the next task.
        fake.set_phases([])
        healthy = await stub.QueueTask(queue_request(), timeout=5)
        (result,) = await stream.results(1, within=30)
        assert result.task_id == healthy.task_id
        assert result.success, result.error
        stream.close()
