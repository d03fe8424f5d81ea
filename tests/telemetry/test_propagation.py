"""The task's stored trace context: written and read as the W3C propagator would."""

from __future__ import annotations

import pytest
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aiproc.server.telemetry.propagation import extract, inject_current

W3C = TraceContextTextMapPropagator()


def span_context_of(found: Context) -> SpanContext:
    return trace.get_current_span(found).get_span_context()


@pytest.mark.parametrize(
    "span_context",
    [
        SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0x03)),
        SpanContext(2**128 - 1, 2**64 - 1, is_remote=False, trace_flags=TraceFlags(0)),
        SpanContext(
            0x1,
            0x2,
            is_remote=False,
            trace_flags=TraceFlags(1),
            trace_state=TraceState([("vendor", "value"), ("other", "x")]),
        ),
    ],
)
def test_the_carrier_is_the_w3c_propagators_and_reads_back_as_the_same_context(
    span_context: SpanContext,
) -> None:
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(span_context)))
    try:
        carrier = inject_current()
        expected: dict[str, str] = {}
        W3C.inject(expected)
    finally:
        context.detach(token)

    assert carrier == expected
    found = span_context_of(extract(carrier))
    assert found == span_context_of(W3C.extract(carrier))
    assert (found.trace_id, found.span_id, found.trace_flags, found.is_remote) == (
        span_context.trace_id,
        span_context.span_id,
        span_context.trace_flags,
        True,
    )
    assert found.trace_state == span_context.trace_state


def test_without_a_valid_span_the_carrier_is_empty_and_reads_as_no_parent() -> None:
    assert inject_current() == {}
    assert not span_context_of(extract({})).is_valid


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0000000000000000000000000000abcd-00000000000000ef-01",
        "00-00000000000000000000000000000000-00000000000000ef-01",  # zero trace id
        "00-0000000000000000000000000000abcd-0000000000000000-01",  # zero span id
        "00-0000000000000000000000000000ABCD-00000000000000ef-01",  # upper case
        "01-0000000000000000000000000000abcd-00000000000000ef-01-future",  # a later version
        "ff-0000000000000000000000000000abcd-00000000000000ef-01",  # forbidden version
        "00-0000_000000000000000000000000abcd-00000000000000ef-01",
        "garbage",
        "",
    ],
)
def test_any_traceparent_reads_as_the_w3c_propagator_reads_it(traceparent: str) -> None:
    carrier = {"traceparent": traceparent}

    found = span_context_of(extract(carrier))

    assert found == span_context_of(W3C.extract(carrier))
