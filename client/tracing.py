"""Client-side tracing: a CLIENT span per call, and the W3C context sent in the metadata.

Uses the application's global OpenTelemetry tracer provider, so a program that
sets one up sees its aiproc calls in its own traces, and aiproc's server spans
continue them. Without a provider the spans are no-ops and only an already
active context (if any) is forwarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

_TRACER_NAME = "aiproc.client"


def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """The call details with the current trace context added to the metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in carrier.items():
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    text = method.decode() if isinstance(method, bytes) else method
    return text.lstrip("/")


class TracingInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Traces unary calls as CLIENT spans and forwards the context on every call."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        name = _method_name(client_call_details)
        span = trace.get_tracer(_TRACER_NAME).start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.method": name.rsplit("/", 1)[-1]},
        )
        if not span.is_recording():
            # No tracing set up: nothing to record, only a caller's context to forward.
            return await continuation(_with_context(client_call_details), request)
        with trace.use_span(span, end_on_exit=True):
            call = await continuation(_with_context(client_call_details), request)
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_context(client_call_details), request)

    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(_with_context(client_call_details), request_iterator)


def interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    return (TracingInterceptor(),)
