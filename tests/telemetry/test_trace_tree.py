"""One task's spans, captured in memory: the tree, the attributes, the caller's context."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aiproc.client import AsyncClient
from aiproc.server.app import AiprocServer
from aiproc.server.config import Config, ProviderConfig, TelemetryConfig
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.telemetry.setup import Telemetry
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.test_server import Stream, queue_request
from tests.support import ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]
KEY = "sk-test-TRACE-SECRET-0123456789"
MARKER = "unique-content-marker-7f3a"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced_config(
    *fakes: FakeOpenAIServer, record_content: bool = False, **processor: object
) -> Config:
    config = make_config(
        processor={"rate_limit_rps": 1000.0, **processor},
        failover={"retry_delay": "10ms"},
        health={"enabled": False},
    )
    providers = tuple(
        ProviderConfig(
            name=f"p{n}",
            kind="openai",
            base_url=fake.base_url,
            api_key_env="TRACE_KEY",
            model="gpt-4o-mini",
            priority=n,
        )
        for n, fake in enumerate(fakes, start=1)
    )
    telemetry = TelemetryConfig(record_content=record_content)
    return replace(config, providers=providers, telemetry=telemetry)


async def start_traced(
    start_server: ServerFactory, config: Config, exporter: InMemorySpanExporter
) -> AiprocServer:
    telemetry = Telemetry.start(config.telemetry, env={}, span_exporter=exporter)
    server: AiprocServer = await start_server(config, env={"TRACE_KEY": KEY}, telemetry=telemetry)
    return server


async def run_one(
    stub: pb_grpc.ProcessorServiceAsyncStub, metadata: Sequence[tuple[str, str]] = ()
) -> task_pb2.TaskResult:
    request = queue_request(content=f"The page says {MARKER}. It has two sentences.")
    queued = await stub.QueueTask(request, timeout=5, metadata=tuple(metadata) or None)
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    (result,) = await stream.results(1)
    stream.close()
    return result


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def everything_exported(spans: Sequence[ReadableSpan]) -> str:
    """All names, attribute values and event attributes, as one searchable text."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
    return "\n".join(parts)


async def test_one_task_forms_one_trace_from_queue_task_to_the_http_call(
    start_server: ServerFactory, channel_to: Connect, exporter: InMemorySpanExporter
) -> None:
    async with FakeOpenAIServer() as fake:
        server = await start_traced(start_server, traced_config(fake), exporter)
        result = await run_one(channel_to(server))
        assert result.success
        await server.stop(grace=1.0)
    spans = exporter.get_finished_spans()
    queue_task = only(spans, "aiproc.v1.ProcessorService/QueueTask")
    wait = only(spans, "queue wait")
    process = only(spans, "process task")
    chat = only(spans, "chat gpt-4o-mini")
    trace_id = queue_task.context.trace_id
    assert result.trace_id == format(trace_id, "032x")
    for span in (wait, process, chat):
        assert span.context.trace_id == trace_id
    assert queue_task.kind is SpanKind.SERVER
    assert parent_of(wait) == queue_task.context.span_id
    assert parent_of(process) == queue_task.context.span_id
    assert parent_of(chat) == process.context.span_id
    assert chat.kind is SpanKind.CLIENT
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.request.max_tokens"] == 2048
    assert attributes["gen_ai.request.temperature"] == 0.7
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert int(attributes["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
    assert int(attributes["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
    assert attributes["server.address"] == "127.0.0.1"
    http = [s for s in spans if parent_of(s) == chat.context.span_id]
    assert len(http) == 1, "the HTTP call should nest under the GenAI span"
    assert http[0].kind is SpanKind.CLIENT
    text = everything_exported(spans)
    assert KEY not in text
    assert MARKER not in text  # no content by default


async def test_a_retried_and_failed_over_task_shows_each_attempt(
    start_server: ServerFactory, channel_to: Connect, exporter: InMemorySpanExporter
) -> None:
    async with FakeOpenAIServer() as primary, FakeOpenAIServer() as secondary:
        primary.fail_next(1, status=500)
        server = await start_traced(start_server, traced_config(primary, secondary), exporter)
        result = await run_one(channel_to(server))
        assert result.success
        assert result.provider == "p2"
        await server.stop(grace=1.0)
    spans = exporter.get_finished_spans()
    process = only(spans, "process task")
    chats = sorted(by_name(spans, "chat gpt-4o-mini"), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["aiproc.provider"] for s in chats] == ["p1", "p2"]
    assert [dict(s.attributes or {})["aiproc.attempt"] for s in chats] == [1, 2]
    assert chats[0].status.status_code is StatusCode.ERROR
    assert dict(chats[0].attributes or {})["error.type"] == "transient"
    assert chats[1].status.status_code is not StatusCode.ERROR
    assert all(parent_of(s) == process.context.span_id for s in chats)
    events = {e.name: dict(e.attributes or {}) for e in process.events}
    assert events["retry"]["aiproc.provider"] == "p1"
    assert events["retry"]["error.type"] == "transient"
    assert events["aiproc.failover"]["aiproc.to_provider"] == "p2"


async def test_a_callers_traceparent_becomes_the_tasks_trace(
    start_server: ServerFactory, channel_to: Connect, exporter: InMemorySpanExporter
) -> None:
    caller_exporter = InMemorySpanExporter()
    caller = TracerProvider()
    caller.add_span_processor(SimpleSpanProcessor(caller_exporter))
    async with FakeOpenAIServer() as fake:
        server = await start_traced(start_server, traced_config(fake), exporter)
        with caller.get_tracer("a-go-service").start_as_current_span("crawl page") as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            result = await run_one(channel_to(server), metadata=list(carrier.items()))
            caller_span = span.get_span_context()
        await server.stop(grace=1.0)
    caller.shutdown()
    assert result.trace_id == format(caller_span.trace_id, "032x")
    spans = exporter.get_finished_spans()
    queue_task = only(spans, "aiproc.v1.ProcessorService/QueueTask")
    assert parent_of(queue_task) == caller_span.span_id
    assert only(spans, "process task").context.trace_id == caller_span.trace_id


async def test_content_is_recorded_only_when_enabled_and_keys_never(
    start_server: ServerFactory, channel_to: Connect, exporter: InMemorySpanExporter
) -> None:
    async with FakeOpenAIServer() as fake:
        config = traced_config(fake, record_content=True)
        server = await start_traced(start_server, config, exporter)
        result = await run_one(channel_to(server))
        assert result.success
        await server.stop(grace=1.0)
    text = everything_exported(exporter.get_finished_spans())
    assert MARKER in text
    assert KEY not in text


async def test_the_python_client_forwards_the_active_trace_context(
    start_server: ServerFactory, exporter: InMemorySpanExporter
) -> None:
    caller = SpanContext(
        trace_id=0x5B8EFFF798038103D269B633813FC60C,
        span_id=0xEEE19B7EC3C1B174,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    async with FakeOpenAIServer() as fake:
        server = await start_traced(start_server, traced_config(fake), exporter)
        token = otel_context.attach(set_span_in_context(NonRecordingSpan(caller)))
        try:
            async with AsyncClient(server.address) as client:
                queued = await client.queue("https://example.com/a", "Some text. More text.")
                result = await client.wait(queued.task_id, timeout=10)
        finally:
            otel_context.detach(token)
        await server.stop(grace=1.0)
    assert result.trace_id == format(caller.trace_id, "032x")
    queue_task = only(exporter.get_finished_spans(), "aiproc.v1.ProcessorService/QueueTask")
    assert parent_of(queue_task) == caller.span_id


async def test_the_python_client_traces_its_calls_with_the_applications_tracer(
    start_server: ServerFactory, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    application = TracerProvider()
    client_spans = InMemorySpanExporter()
    application.add_span_processor(SimpleSpanProcessor(client_spans))
    # As if the application had set its global provider (which a process can do only once).
    monkeypatch.setattr(trace, "get_tracer", lambda name, *args, **kw: application.get_tracer(name))
    async with FakeOpenAIServer() as fake:
        server = await start_traced(start_server, traced_config(fake), exporter)
        async with AsyncClient(server.address) as client:
            await client.queue("https://example.com/a", "Some text. More text.")
        await server.stop(grace=1.0)

    (call,) = client_spans.get_finished_spans()
    assert (call.name, call.kind) == ("aiproc.v1.ProcessorService/QueueTask", SpanKind.CLIENT)
    assert call.attributes is not None
    assert call.attributes["rpc.grpc.status_code"] == 0
    queue_task = only(exporter.get_finished_spans(), "aiproc.v1.ProcessorService/QueueTask")
    assert queue_task.context.trace_id == call.context.trace_id
    assert parent_of(queue_task) == call.context.span_id
