"""The telemetry acceptance test: a real `aiproc serve` exporting OTLP to a real receiver.

The server is configured only the way an operator would: the standard OTEL_*
variables and the [telemetry] section. A task goes through a fake
OpenAI-compatible provider; its trace, the metrics and nothing secret must
reach the receiver, over gRPC and over HTTP/protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from aiproc.client import AsyncClient, TaskResult
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from tests.telemetry.otlp_receiver import OtlpHttpReceiver, OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

SERVE = (sys.executable, "-m", "aiproc.server.cli.main", "serve")
SERVING = re.compile(r"^aiproc: serving on (\S+:\d+)$")
SERVICE = "aiproc-test"
SECRET = "sk-test-SECRET-0123456789"
MODEL = "gpt-4o-mini"
CONFIG = """
log_level = "DEBUG"

[processor]
rate_limit_rps = 1000.0

[health]
enabled = false

[telemetry]
metrics_interval = "200ms"

[[providers]]
name = "primary"
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_KEY"
model = "{model}"
"""
"""No health checks, so the only provider calls are the task's."""

Receiver = OtlpReceiver | OtlpHttpReceiver


@dataclass
class Served:
    """A running `aiproc serve` subprocess."""

    process: asyncio.subprocess.Process
    address: str
    log: Path

    def log_text(self) -> str:
        return read_log(self.log)

    async def terminate(self, within: float = 20.0) -> int:
        """SIGTERM, then the exit code; the receiver keeps serving meanwhile (same loop)."""
        if self.process.returncode is None:
            self.process.terminate()
        try:
            async with asyncio.timeout(within):
                return await self.process.wait()
        except TimeoutError:
            pytest.fail(f"aiproc serve still running {within}s after SIGTERM:\n{self.log_text()}")


def read_log(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


def server_env(receiver: Receiver, protocol: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without AIPROC_* or OTEL_* settings, plus the test's."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIPROC_", "OTEL_"))
    }
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME=SERVICE,
        FAKE_KEY=SECRET,
        **extra,
    )
    return env


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path,
    fake: FakeOpenAIServer,
    receiver: Receiver,
    *,
    protocol: str = "grpc",
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Served]:
    """`aiproc serve --listen 127.0.0.1:0 --config F`, killed at the end if still running."""
    config = tmp_path / "aiproc.toml"
    config.write_text(CONFIG.format(base_url=fake.base_url, model=MODEL), encoding="utf-8")
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *SERVE,
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=server_env(receiver, protocol, extra_env or {}),
        )
    try:
        yield Served(process, await read_address(process, log), log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_address(process: asyncio.subprocess.Process, log: Path, within: float = 20.0) -> str:
    assert process.stdout is not None
    try:
        async with asyncio.timeout(within):
            while line := await process.stdout.readline():
                if match := SERVING.match(line.decode().strip()):
                    return match.group(1)
    except TimeoutError:
        pytest.fail(f"aiproc serve did not announce its address within {within}s:\n{read_log(log)}")
    pytest.fail(f"aiproc serve exited early:\n{read_log(log)}")


async def run_task(address: str, marker: str) -> TaskResult:
    """Queues one task whose content holds `marker` and waits for its result."""
    async with AsyncClient(address, timeout=20.0) as client:
        queued = await client.queue(
            "https://example.com/telemetry",
            f"Widgets are small devices. {marker} They make work easier.",
        )
        result = await client.wait(queued.task_id)
    assert result.success, result.error
    return result


def is_chat_span(span: ReceivedSpan) -> bool:
    return span.name.startswith("chat ") and span.service_name == SERVICE


def is_queue_span(span: ReceivedSpan) -> bool:
    return span.name.endswith("/QueueTask") and span.kind == "SERVER"


def assert_nothing_secret(receiver: Receiver, marker: str, fake: FakeOpenAIServer) -> None:
    """The key and the content went to the provider, and appear nowhere in the exports."""
    (request,) = fake.requests
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert marker.encode() in request.raw
    exported = receiver.raw_bytes()
    assert exported, "nothing was exported"
    assert SECRET.encode() not in exported, "the provider's API key was exported"
    assert marker.encode() not in exported, "the task's content was exported"
    # And not in a form the raw check would miss (it is plain UTF-8 in protobuf).
    assert b"SECRET-0123456789" not in exported


async def test_traces_and_metrics_reach_an_otlp_grpc_receiver(tmp_path: Path) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    async with (
        OtlpReceiver() as receiver,
        FakeOpenAIServer() as fake,
        serve(tmp_path, fake, receiver, extra_env={"OTEL_BSP_SCHEDULE_DELAY": "100"}) as server,
    ):
        result = await run_task(server.address, marker)
        assert re.fullmatch(r"[0-9a-f]{32}", result.trace_id), result.trace_id

        (chat,) = await receiver.wait_for_spans(
            lambda s: is_chat_span(s) and s.trace_id == result.trace_id
        )
        assert chat.kind == "CLIENT"
        queue_spans = await receiver.wait_for_spans(is_queue_span)
        assert result.trace_id in {span.trace_id for span in queue_spans}
        # `process task` ends after the result is published, so it may come in a later batch.
        await receiver.wait_for_spans(
            lambda s: s.name == "process task" and s.trace_id == result.trace_id
        )
        trace = [span for span in receiver.spans if span.trace_id == result.trace_id]
        assert {span.service_name for span in trace} == {SERVICE}
        # One tree: every parent of a span of the trace is a span of the trace.
        ids = {span.span_id for span in trace}
        orphans = [s.name for s in trace if s.parent_span_id and s.parent_span_id not in ids]
        assert not orphans, f"spans whose parent was not exported: {orphans}"

        points = await receiver.wait_for_metric("aiproc.tasks")
        assert {point.resource.get("service.name") for point in points} == {SERVICE}
        # The histograms aiproc aggregates itself travel with the SDK's metrics.
        # Cumulative: every export of it so far says one call.
        *_, duration = await receiver.wait_for_metric("gen_ai.client.operation.duration")
        assert (duration.kind, duration.unit, duration.count) == ("histogram", "s", 1)
        assert duration.resource.get("service.name") == SERVICE

        code = await server.terminate()
        assert code == 0, server.log_text()
        assert_nothing_secret(receiver, marker, fake)


async def test_spans_still_in_the_batch_at_sigterm_are_flushed_on_shutdown(
    tmp_path: Path,
) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    # A schedule delay of 10 minutes: the batch processor exports only when it is shut down.
    slow_batches = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}
    async with (
        OtlpReceiver() as receiver,
        FakeOpenAIServer() as fake,
        serve(tmp_path, fake, receiver, extra_env=slow_batches) as server,
    ):
        result = await run_task(server.address, marker)
        early = [span.name for span in receiver.spans if span.trace_id == result.trace_id]
        assert not early, f"spans exported before shutdown, the flush is not tested: {early}"

        code = await server.terminate()
        assert code == 0, server.log_text()
        # The process has exited, so every export it made has been answered: no wait.
        flushed = [span for span in receiver.spans if span.trace_id == result.trace_id]
        assert any(is_chat_span(span) for span in flushed), [s.name for s in receiver.spans]
        assert any(is_queue_span(span) for span in flushed), [s.name for s in flushed]


async def test_http_protobuf_export_reaches_an_otlp_http_receiver(tmp_path: Path) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    async with (
        OtlpHttpReceiver() as receiver,
        FakeOpenAIServer() as fake,
        serve(
            tmp_path,
            fake,
            receiver,
            protocol="http/protobuf",
            extra_env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
        ) as server,
    ):
        result = await run_task(server.address, marker)
        await receiver.wait_for_spans(lambda s: is_chat_span(s) and s.trace_id == result.trace_id)
        await receiver.wait_for_spans(lambda s: is_queue_span(s) and s.trace_id == result.trace_id)
        await receiver.wait_for_metric("aiproc.tasks")
        code = await server.terminate()
        assert code == 0, server.log_text()
        assert set(receiver.content_types) == {"application/x-protobuf"}
        assert_nothing_secret(receiver, marker, fake)


# The receiver itself, against the SDK's own exporters: if these fail, the tests above
# cannot be trusted.


@pytest.mark.parametrize("transport", ["grpc", "http/protobuf"])
async def test_the_receiver_flattens_what_the_sdk_exporter_sends(transport: str) -> None:
    receiver: Receiver = OtlpReceiver() if transport == "grpc" else OtlpHttpReceiver()
    async with receiver:
        exporter: SpanExporter = (
            GrpcSpanExporter(endpoint=receiver.endpoint, insecure=True)
            if transport == "grpc"
            else HttpSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("receiver-test-scope")
        # The exporters are synchronous and the receiver answers on this loop: spans end
        # (and so are exported) in a thread.
        parent = tracer.start_span("parent", kind=SpanKind.SERVER)
        parent_context = parent.get_span_context()
        child = tracer.start_span(
            "child",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={"a.str": "x", "a.int": 3, "a.list": ["p", "q"]},
            links=[Link(parent_context, {"why": "test"})],
        )
        child.add_event("happened", {"n": 1})
        child.set_status(Status(StatusCode.ERROR, "broke"))
        await asyncio.to_thread(child.end)
        await asyncio.to_thread(parent.end)
        await asyncio.to_thread(provider.shutdown)

        spans = await receiver.wait_for_spans(count=2)
        by_name = {span.name: span for span in spans}
        parent_span, child_span = by_name["parent"], by_name["child"]
        assert parent_span.trace_id == format(parent_context.trace_id, "032x")
        assert parent_span.parent_span_id == ""
        assert parent_span.kind == "SERVER"
        assert child_span.parent_span_id == parent_span.span_id
        assert child_span.kind == "CLIENT"
        assert child_span.attributes == {"a.str": "x", "a.int": 3, "a.list": ["p", "q"]}
        assert [(e.name, e.attributes) for e in child_span.events] == [("happened", {"n": 1})]
        assert [(k.span_id, k.attributes) for k in child_span.links] == [
            (parent_span.span_id, {"why": "test"})
        ]
        assert (child_span.status_code, child_span.status_message) == ("ERROR", "broke")
        assert child_span.service_name == "receiver-test"
        assert child_span.scope == "receiver-test-scope"
        assert b"receiver-test-scope" in receiver.raw_bytes()


async def test_waiting_for_spans_that_never_come_times_out_naming_what_came() -> None:
    async with OtlpReceiver() as receiver:
        with pytest.raises(TimeoutError, match="received 0 spans"):
            await receiver.wait_for_spans(lambda span: span.name == "never", timeout=0.05)
        with pytest.raises(TimeoutError, match=r"no data point of 'aiproc\.tasks'"):
            await receiver.wait_for_metric("aiproc.tasks", timeout=0.05)
