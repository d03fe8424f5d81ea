"""Our OTLP span encoding against the SDK's: the same message, decoded, for real SDK spans."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from aiproc.server.telemetry.span_encoding import SpanEncoder
from aiproc.server.telemetry.span_exporter import GrpcSpanExporter
from tests.telemetry.otlp_receiver import OtlpReceiver


def recording(resource: Resource) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def decoded(encoded: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encoded)


def assorted_spans() -> list[ReadableSpan]:
    """Spans using every part of the span message, from two resources and three scopes."""
    provider, exporter = recording(
        Resource.create({"service.name": "encoding-test", "host.cores": 2}, "https://schema/r")
    )
    other_provider, other_exporter = recording(Resource.create({"service.name": "other"}))
    tracer = provider.get_tracer("scope-a", "1.2.3", "https://schema/a", {"scope.attr": "x"})
    unversioned = provider.get_tracer("scope-b")
    remote_parent = SpanContext(
        trace_id=0x0123456789ABCDEF0123456789ABCDEF,
        span_id=0x1122334455667788,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1"), ("other", "o2")]),
    )
    with tracer.start_as_current_span(
        "server",
        context=trace.set_span_in_context(NonRecordingSpan(remote_parent)),
        kind=SpanKind.SERVER,
        attributes={
            "a.str": "text é",
            "a.empty": "",
            "a.true": True,
            "a.false": False,
            "a.int": 7,
            "a.zero": 0,
            "a.negative": -12345678901,
            "a.float": 0.25,
            "a.strs": ["p", "q"],
            "a.ints": (1, -2, 3),
            "a.floats": [1.5, -0.0],
            "a.bools": [True, False],
            "a.empty_list": [],
        },
    ) as server:
        server.add_event("retry", {"attempt": 2, "error.type": "timeout"})
        server.add_event("")
        server.set_status(Status(StatusCode.ERROR, "broke"))
        with unversioned.start_as_current_span(
            "client",
            kind=SpanKind.CLIENT,
            links=[
                Link(remote_parent, {"why": "batch"}),
                Link(server.get_span_context()),
            ],
        ) as client:
            client.set_attribute("http.response.status_code", 200)
            client.set_status(Status(StatusCode.OK))
        for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            tracer.start_span(f"kind {kind.name}", kind=kind).end()
        tracer.start_span("").end()
    other_provider.get_tracer("scope-a").start_span("elsewhere", start_time=1).end(end_time=2)
    # Interleaved, so that grouping by resource and scope has work to do.
    mine, theirs = list(exporter.get_finished_spans()), list(other_exporter.get_finished_spans())
    return [mine[0], theirs[0], *mine[1:]]


def test_the_encoding_decodes_to_the_message_of_the_sdk_encoder() -> None:
    spans = assorted_spans()
    assert decoded(SpanEncoder().encode(spans)) == encode_spans(spans)


def test_an_empty_batch_is_an_empty_request() -> None:
    assert SpanEncoder().encode([]) == b""
    assert encode_spans([]).SerializeToString() == b""


def test_what_the_encoder_remembers_between_batches_encodes_the_same() -> None:
    encoder = SpanEncoder()
    spans = assorted_spans()
    first, second = encoder.encode(spans), encoder.encode(spans)
    assert first == second
    assert decoded(second) == encode_spans(spans)


def test_more_distinct_values_than_the_cache_holds_encode_the_same() -> None:
    provider, exporter = recording(Resource.create({"service.name": "many"}))
    tracer = provider.get_tracer("many")
    for number in range(5000):
        tracer.start_span(f"span {number % 7}", attributes={"id": f"task-{number}", "n": 3}).end()
    spans = list(exporter.get_finished_spans())
    encoder = SpanEncoder()
    for batch in (spans[:2500], spans[2500:]):
        assert decoded(encoder.encode(batch)) == encode_spans(batch)


def test_equal_sequences_of_different_types_are_remembered_apart() -> None:
    provider, exporter = recording(Resource.create({}))
    tracer = provider.get_tracer("sequences")
    # (True,) == (1,) and (1,) == (1.0,): equal keys of a dict, encoded differently.
    for value in ([True], [1], [1.0], [True], ["x", "y"], [1]):
        tracer.start_span("s", attributes={"values": value}).end()
    spans = list(exporter.get_finished_spans())
    encoder = SpanEncoder()
    assert decoded(encoder.encode(spans)) == encode_spans(spans)
    assert decoded(encoder.encode(spans[::-1])) == encode_spans(spans[::-1])


def test_a_sequence_holding_something_unhashable_is_encoded_too() -> None:
    context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    # Not what a tracer's attribute cleaning lets through, but a span an exporter may get.
    span = ReadableSpan("raw", context, attributes={"nested": (["a"], ["b", "c"])})
    assert decoded(SpanEncoder().encode([span])) == encode_spans([span])


def test_an_integer_outside_int64_is_left_out_as_the_sdk_encoder_leaves_it_out() -> None:
    provider, exporter = recording(Resource.create({}))
    provider.get_tracer("big").start_span("big", attributes={"big": 2**64, "ok": 1}).end()
    spans = list(exporter.get_finished_spans())
    request = decoded(SpanEncoder().encode(spans))
    assert request == encode_spans(spans)
    attributes = request.resource_spans[0].scope_spans[0].spans[0].attributes
    assert [kv.key for kv in attributes] == ["ok"]


async def test_the_grpc_exporter_delivers_the_sdk_encoders_message_to_a_receiver() -> None:
    spans = assorted_spans()
    async with OtlpReceiver() as receiver:
        exporter = GrpcSpanExporter(endpoint=receiver.endpoint)
        # The exporter blocks, and the receiver answers on this loop.
        result = await asyncio.to_thread(export_and_shut_down, exporter, spans)
        assert result.name == "SUCCESS"
        assert receiver.trace_requests == [encode_spans(spans)]
        assert len(receiver.spans) == len(spans)


async def test_after_unavailable_the_rebuilt_channel_sends_the_encoders_bytes_too() -> None:
    spans = assorted_spans()
    received: list[bytes] = []

    async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if not received:
            received.append(b"")
            no_delay = RetryInfo()  # the exporter's backoff, set to 0: no wait in the test
            no_delay.retry_delay.nanos = 0
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "down for a moment",
                trailing_metadata=(("google.rpc.retryinfo-bin", no_delay.SerializeToString()),),
            )
        received.append(request)
        return ExportTraceServiceResponse().SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {"Export": grpc.unary_unary_rpc_method_handler(export)},  # raw bytes in and out
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        exporter = GrpcSpanExporter(endpoint=f"http://127.0.0.1:{port}")
        result = await asyncio.to_thread(export_and_shut_down, exporter, spans)
    finally:
        await server.stop(None)

    assert result.name == "SUCCESS"
    assert [decoded(request) for request in received[1:]] == [encode_spans(spans)]


def export_and_shut_down(exporter: GrpcSpanExporter, spans: Sequence[ReadableSpan]) -> object:
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()
