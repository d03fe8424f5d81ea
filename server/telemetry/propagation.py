"""W3C trace context in and out of carriers: gRPC metadata and the stored task.

The context a task was queued in is kept with the task (a small dict of
`traceparent` / `tracestate`), so the worker that runs it, later, continues
the same trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# The stored task's carrier is aiproc's own, written and read by aiproc only:
# W3C trace context alone, whatever OTEL_PROPAGATORS says for calls in and out,
# and none of the composite propagator's (and baggage's) work per task.
_TASK_CARRIER = TraceContextTextMapPropagator()


def inject_current() -> dict[str, str]:
    """The current trace context as a task's carrier; empty when there is no valid span."""
    carrier: dict[str, str] = {}
    _TASK_CARRIER.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a task's carrier holds (an empty one when it holds none)."""
    return _TASK_CARRIER.extract(carrier)


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from gRPC invocation metadata (`traceparent`, ...)."""
    carrier = {
        key: value.decode("ascii", "replace") if isinstance(value, bytes) else value
        for key, value in metadata or ()
        # aiproc uses no baggage, and OpenTelemetry's baggage parser logs a warning quoting
        # each malformed member: any caller could fill the server's log with its own text.
        if not key.endswith("-bin") and key != "baggage"
    }
    return propagate.extract(carrier)
