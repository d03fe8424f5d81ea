"""The providers' HTTP client: one CLIENT span per request when traced, nothing when not."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from aiproc.server.providers.http import create_http_client
from aiproc.server.telemetry.http_spans import safe_url

SECRET = "sk-test-HTTP-SPAN-SECRET-0123456789"

Served = tuple[str, list[dict[str, str]]]


@pytest.fixture
async def http_server() -> AsyncIterator[Served]:
    """A local HTTP server keeping each request's headers; /fail answers 500."""
    seen: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"ok": True}, status=500 if request.path == "/fail" else 200)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", seen
    await runner.cleanup()


@pytest.fixture
def traced() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_a_request_gets_a_client_span_in_the_current_trace_and_sends_its_context(
    http_server: Served, traced: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    base, seen = http_server
    tracer, exporter = traced
    async with create_http_client(max_connections=2, tracer=tracer) as client:
        with tracer.start_as_current_span("call") as parent:
            response = await client.get(f"{base}/v1/models?api-version=2024-10-21")
    assert response.status_code == 200

    (span,) = (s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert span.name == "GET"
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    port = int(base.rpartition(":")[2])
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port,
        "url.full": f"{base}/v1/models?api-version=2024-10-21",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    # The provider sees this span as its parent.
    span_id = format(span.get_span_context().span_id, "016x")
    trace_id = format(parent.get_span_context().trace_id, "032x")
    assert seen[0]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")


async def test_no_header_and_no_credential_in_the_query_reaches_a_span(
    http_server: Served, traced: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    base, _ = http_server
    tracer, exporter = traced
    headers = {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "api-key": SECRET}
    async with create_http_client(max_connections=2, tracer=tracer) as client:
        await client.get(f"{base}/v1/models?key={SECRET}&alt=json", headers=headers)

    (span,) = exporter.get_finished_spans()
    assert SECRET not in span.to_json()
    assert dict(span.attributes or {})["url.full"] == f"{base}/v1/models?key=REDACTED&alt=json"


def test_user_info_and_credential_query_values_are_left_out_of_the_url() -> None:
    url = httpx.URL(f"https://user:{SECRET}@llm.example:8443/v1?api-version=1&sig={SECRET}")
    assert safe_url(url) == "https://llm.example:8443/v1?api-version=1&sig=REDACTED"
    assert safe_url(httpx.URL(f"https://user:{SECRET}@llm.example/v1")) == "https://llm.example/v1"
    assert safe_url(httpx.URL(f"https://llm.example/v1?key={SECRET}")) == (
        "https://llm.example/v1?key=REDACTED"
    )
    assert safe_url(httpx.URL("https://llm.example/v1?")) == "https://llm.example/v1"


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:41234/v1/chat/completions",
        "https://llm.example/v1/models/gemini-1.5:generateContent",
        "https://[::1]:8443/a%20b/c#part",
        "https://xn--bcher-kva.example/v1",
        "https://llm.example/path/with@sign",
    ],
)
def test_a_url_with_nothing_to_redact_is_kept_as_it_is(text: str) -> None:
    url = httpx.URL(text)
    assert safe_url(url) == str(url)


async def test_an_error_status_and_a_failed_connection_mark_the_span_as_an_error(
    http_server: Served, traced: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    base, _ = http_server
    tracer, exporter = traced
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    async with create_http_client(max_connections=2, tracer=tracer) as client:
        assert (await client.get(f"{base}/fail")).status_code == 500
        with pytest.raises(httpx.TransportError):
            await client.get(refused)

    failed, unreachable = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "500"
    assert unreachable.status.status_code is StatusCode.ERROR
    assert "http.response.status_code" not in dict(unreachable.attributes or {})
    assert dict(unreachable.attributes or {})["error.type"]


async def test_without_a_tracer_no_span_and_no_context_are_sent(http_server: Served) -> None:
    base, seen = http_server
    sampled = TraceFlags(TraceFlags.SAMPLED)
    caller = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=sampled))
    async with create_http_client(max_connections=2) as client:
        # A caller's trace is current: a traced client would pass it on.
        with trace.use_span(caller):
            await client.get(f"{base}/v1/models")

    assert "traceparent" not in seen[0]
