"""W3C trace context in and out of carriers: gRPC metadata and the stored task.

The context a task was queued in is kept with the task (a small dict of
`traceparent` / `tracestate`), so the worker that runs it, later, continues
the same trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import NonRecordingSpan, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aiproc.server.telemetry.tracer import valid_span_context

# The stored task's carrier is aiproc's own, written and read by aiproc only:
# W3C trace context alone, whatever OTEL_PROPAGATORS says for calls in and out.
# Written and read here directly (a few µs a task less than the propagator's
# general code); anything unusual is left to the W3C propagator itself.
_W3C = TraceContextTextMapPropagator()
_OWN_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def inject_current() -> dict[str, str]:
    """The current trace context as a task's carrier; empty when there is no valid span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    carrier = {
        "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-"
        f"{context.trace_flags:02x}"
    }
    if context.trace_state:
        carrier["tracestate"] = context.trace_state.to_header()
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a task's carrier holds (an empty one when it holds none)."""
    traceparent = carrier.get("traceparent")
    if traceparent is None:
        return Context()
    match = _OWN_TRACEPARENT.fullmatch(traceparent)
    if match is None or "tracestate" in carrier:
        return _W3C.extract(carrier)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return Context()  # invalid ids, as the W3C propagator rules
    parent = valid_span_context(trace_id, span_id, True, TraceFlags(int(match[3], 16)))
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from gRPC invocation metadata (`traceparent`, ...)."""
    # A dict of the metadata as it is, filtered as the propagators read it: cheaper than
    # a filtered copy (about 1.5 µs a call) when the propagators read one or two keys.
    return propagate.extract(dict(metadata or ()), getter=_METADATA)


class _MetadataGetter(Getter[Mapping[str, str | bytes]]):
    """Reads gRPC metadata for the propagators without its binary (`-bin`) entries or its
    `baggage`, bytes values as ASCII text."""

    def get(self, carrier: Mapping[str, str | bytes], key: str) -> list[str] | None:
        value = None if _ignored(key) else carrier.get(key)
        if value is None:
            return None
        return [value.decode("ascii", "replace") if isinstance(value, bytes) else value]

    def keys(self, carrier: Mapping[str, str | bytes]) -> list[str]:
        return [key for key in carrier if not _ignored(key)]


def _ignored(key: str) -> bool:
    # aiproc uses no baggage, and OpenTelemetry's baggage parser logs a warning quoting
    # each malformed member: any caller could fill the server's log with its own text.
    return key.endswith("-bin") or key == "baggage"


_METADATA = _MetadataGetter()
