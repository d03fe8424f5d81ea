"""The task's stored trace context: written and read as the W3C propagator would."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aiproc.server.telemetry.propagation import context_from_metadata, extract, inject_current

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


def _filtered_carrier(metadata: tuple[tuple[str, str | bytes], ...]) -> dict[str, str]:
    """What the caller's metadata says to the propagators: no binary entries, no baggage."""
    return {
        key: value.decode("ascii", "replace") if isinstance(value, bytes) else value
        for key, value in metadata
        if not key.endswith("-bin") and key != "baggage"
    }


TRACEPARENT = "00-0000000000000000000000000000abcd-00000000000000ef-01"


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("user-agent", "grpc-python"), ("aiproc-client-id", "c")),
        (("traceparent", TRACEPARENT), ("tracestate", "vendor=value")),
        (("traceparent", TRACEPARENT.encode()), ("baggage", "user=secret")),
        (("traceparent", "garbage"), ("traceparent", TRACEPARENT)),  # the last one counts
        (("traceparent-bin", b"\x00\x01"), ("baggage", "k=v")),
    ],
)
def test_the_callers_context_is_what_the_propagators_read_of_its_filtered_metadata(
    metadata: tuple[tuple[str, str | bytes], ...],
) -> None:
    found = context_from_metadata(metadata)

    assert _described(found) == _described(propagate.extract(_filtered_carrier(metadata)))
    assert baggage.get_all(found) == {}


def _described(found: Context) -> dict[str, object]:
    """A context's values, spans by their span context (spans compare by identity)."""
    return {
        key: value.get_span_context() if isinstance(value, trace.Span) else value
        for key, value in found.items()
    }


class KeysSeen(TextMapPropagator):
    """A propagator that notes every key the getter lists and what it reads for each."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.seen: dict[str, list[str] | None] = {}

    def extract(
        self, carrier: Any, context: Context | None = None, getter: Getter[Any] = default_getter
    ) -> Context:
        self.listed = getter.keys(carrier)
        for key in [*self.listed, "baggage", "x-bin", "absent"]:
            self.seen[key] = getter.get(carrier, key)
        return context or Context()

    def inject(
        self, carrier: Any, context: Context | None = None, setter: Setter[Any] = default_setter
    ) -> None:
        raise NotImplementedError

    @property
    def fields(self) -> set[str]:
        return set()


def test_a_propagator_listing_the_metadata_sees_only_its_filtered_entries() -> None:
    metadata = (("a", "1"), ("b", b"2"), ("baggage", "k=v"), ("x-bin", b"\xff"))
    mine, reference = KeysSeen(), KeysSeen()
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(mine)
    try:
        context_from_metadata(metadata)
    finally:
        propagate.set_global_textmap(default)

    reference.extract(_filtered_carrier(metadata))
    assert mine.listed == reference.listed == ["a", "b"]
    assert mine.seen == reference.seen
    assert mine.seen == {"a": ["1"], "b": ["2"], "baggage": None, "x-bin": None, "absent": None}
