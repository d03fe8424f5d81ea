"""Server spans for the RPCs, continuing the caller's W3C trace context from the metadata.

Our own instead of opentelemetry-instrumentation-grpc's aio interceptor, whose
server side is known to break on streaming handlers; this is a few lines and
covers unary and streaming methods alike.
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from aiproc.server.telemetry.current_span import CurrentSpan
from aiproc.server.telemetry.propagation import context_from_metadata

SERVICE = "aiproc.v1.ProcessorService"

# Server-side codes that mean the server failed, per the RPC semantic conventions.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def server_span(
    tracer: Tracer, method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> CurrentSpan:
    """A SERVER span named `aiproc.v1.ProcessorService/{method}`, child of the caller's span,
    current in the `with` block it is used in."""
    return CurrentSpan(
        tracer.start_span(
            f"{SERVICE}/{method}",
            context=context_from_metadata(context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        )
    )


def record_status(code: grpc.StatusCode, message: str) -> None:
    """Notes the RPC's final status on the current server span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, message))
