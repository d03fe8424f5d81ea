"""CurrentSpan: the span is current inside the block, ended after it, and exceptions pass."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from aiproc.server.telemetry.current_span import CurrentSpan


@pytest.fixture
def traced() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_the_span_is_current_in_the_block_and_ended_after_it(
    traced: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    with tracer.start_as_current_span("outer") as outer:
        with CurrentSpan(tracer.start_span("inner")) as inner:
            assert trace.get_current_span() is inner
            child = tracer.start_span("child")
            child.end()
            assert [span.name for span in exporter.get_finished_spans()] == ["child"]
        assert trace.get_current_span() is outer
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["child", "inner", "outer"]
    child_span, inner_span, _ = exporter.get_finished_spans()
    assert child_span.parent is not None
    assert child_span.parent.span_id == inner.get_span_context().span_id
    assert inner_span.parent is not None
    assert inner_span.parent.span_id == outer.get_span_context().span_id


def test_an_exception_ends_the_span_untouched_and_goes_on(
    traced: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = traced
    before = trace.get_current_span()
    with pytest.raises(KeyError), CurrentSpan(tracer.start_span("failing")):
        raise KeyError("boom")
    assert trace.get_current_span() is before
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert not span.events
