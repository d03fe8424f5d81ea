"""The server's Tracer: the same spans as the SDK's tracer, for exporters and for the API.

Most tests run one scenario through both tracers and compare what the exporter
receives; ids differ (they are random), everything else must not.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
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
from aiproc.server.telemetry.tracer import RecordedSpan, Sampling, Tracer, valid_span_context

RESOURCE = Resource.create({"service.name": "tracer-test"})
Scenario = Callable[[trace.Tracer], None]


def ours(
    sampling: Sampling, limits: SpanLimits | None = None
) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    scope = InstrumentationScope("aiproc")
    return Tracer(sampling, RESOURCE, scope, SimpleSpanProcessor(exporter), limits), exporter


def sdks(
    sampler: Sampler, limits: SpanLimits | None = None
) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=sampler, resource=RESOURCE, span_limits=limits, shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("aiproc"), exporter


def described(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter reads of a span but its random ids."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind,
        "times": (span.start_time, span.end_time),
        "flags": context.trace_flags,
        "trace_state": dict(context.trace_state),
        "parent": None if span.parent is None else (span.parent.span_id, span.parent.is_remote),
        "attributes": dict(span.attributes or {}),
        "dropped_attributes": span.dropped_attributes,
        "events": [
            (e.name, e.timestamp, dict(e.attributes or {}), e.dropped_attributes)
            for e in span.events
        ],
        "dropped_events": span.dropped_events,
        "links": [
            (link.context.span_id, dict(link.attributes or {}), link.dropped_attributes)
            for link in span.links
        ],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": dict(span.resource.attributes),
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
    }


def both(
    scenario: Scenario, sampler: Sampler, sampling: Sampling, limits: SpanLimits | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The spans `scenario` leaves with our tracer, then with the SDK's."""
    mine, our_spans = ours(sampling, limits)
    theirs, sdk_spans = sdks(sampler, limits)
    scenario(mine)
    scenario(theirs)
    return (
        [described(span) for span in our_spans.get_finished_spans()],
        [described(span) for span in sdk_spans.get_finished_spans()],
    )


def remote_parent(sampled: bool, state: str = "vendor=abc") -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=flags, trace_state=TraceState([("v", state)])
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


PARENT_BASED = (ParentBased(ALWAYS_ON), Sampling(ALWAYS_ON, parent_based=True))


# The same spans as the SDK's


def test_attributes_of_every_kind_are_kept_cleaned_or_dropped_as_the_sdk_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def scenario(tracer: trace.Tracer) -> None:
        span = tracer.start_span(
            "work",
            kind=SpanKind.CLIENT,
            start_time=10,
            attributes={"s": "text", "i": 7, "f": 1.5, "b": True, "list": ["a", "b"]},
        )
        span.set_attribute("later", 3)
        span.set_attribute("tuple", (1, 2))
        span.set_attribute("mixed", [1, "two"])  # not one type: the SDK's cleaning decides
        span.set_attribute("with none", ["a", None])
        span.set_attribute("bytes", b"raw")
        span.set_attribute("object", object())  # type: ignore[arg-type]
        span.set_attribute("", "empty key")
        span.set_attribute("none", None)  # type: ignore[arg-type]
        span.set_attribute("s", "replaced")
        span.set_attributes({"map": 1, "bools": [True, False]})
        span.end(end_time=20)

    with caplog.at_level(logging.WARNING):
        mine, theirs = both(scenario, *PARENT_BASED)

    assert mine == theirs
    assert mine[0]["attributes"]["s"] == "replaced"
    assert mine[0]["attributes"]["list"] == ("a", "b")
    assert mine[0]["dropped_attributes"] == 1  # the empty key


def test_attribute_limits_from_span_limits_evict_the_oldest_and_truncate_strings() -> None:
    limits = SpanLimits(max_span_attributes=3, max_attribute_length=4, max_events=1)

    def scenario(tracer: trace.Tracer) -> None:
        span = tracer.start_span("limited", start_time=1, attributes={"a": "abcdefgh", "b": 2})
        span.set_attribute("c", ["long string", "ok"])
        span.set_attribute("d", 4)  # evicts a
        span.set_attribute("b", 5)  # b becomes the newest
        span.set_attribute("e", "xyzxyz")  # evicts c
        span.add_event("first", {"k": "value"}, timestamp=2)
        span.add_event("second", timestamp=3)  # evicts first
        span.end(end_time=9)

    mine, theirs = both(scenario, *PARENT_BASED, limits=limits)

    assert mine == theirs
    assert mine[0]["attributes"] == {"d": 4, "b": 5, "e": "xyzx"}
    assert (mine[0]["dropped_attributes"], mine[0]["dropped_events"]) == (2, 1)


def test_a_span_of_no_attributes_at_all_keeps_none() -> None:
    limits = SpanLimits(max_span_attributes=0)

    def scenario(tracer: trace.Tracer) -> None:
        span = tracer.start_span("bare", start_time=1, attributes={"a": 1})
        span.set_attribute("b", 2)
        span.end(end_time=2)

    mine, theirs = both(scenario, *PARENT_BASED, limits=limits)

    assert mine == theirs
    assert mine[0]["attributes"] == {}
    assert mine[0]["dropped_attributes"] == 2


def test_status_follows_the_sdks_rules_ok_is_final_and_unset_changes_nothing() -> None:
    def scenario(tracer: trace.Tracer) -> None:
        for name, steps in [
            ("error then ok", [Status(StatusCode.ERROR, "bad"), StatusCode.OK]),
            ("ok then error", [StatusCode.OK, Status(StatusCode.ERROR, "late")]),
            ("unset ignored", [Status(StatusCode.ERROR, "bad"), StatusCode.UNSET]),
            ("code and text", [StatusCode.ERROR]),
        ]:
            span = tracer.start_span(name, start_time=1)
            for step in steps:
                span.set_status(step, "text" if step is StatusCode.ERROR else None)
            span.end(end_time=2)

    mine, theirs = both(scenario, *PARENT_BASED)

    assert mine == theirs
    assert [span["status"] for span in mine] == [
        (StatusCode.OK, None),
        (StatusCode.OK, None),
        (StatusCode.ERROR, "bad"),
        (StatusCode.ERROR, "text"),
    ]


def test_events_links_exceptions_and_renames_are_recorded_as_by_the_sdk() -> None:
    linked = SpanContext(0x1, 0x2, is_remote=False, trace_flags=TraceFlags(1))

    def scenario(tracer: trace.Tracer) -> None:
        span = tracer.start_span("first name", start_time=1, links=[Link(linked, {"why": "batch"})])
        span.add_event("progress", {"done": 3}, timestamp=5)
        span.add_link(linked, {"again": True})
        span.add_link(trace.INVALID_SPAN_CONTEXT)  # says nothing: not kept
        try:
            raise ValueError("boom")
        except ValueError as exc:
            span.record_exception(exc, {"extra": 1}, timestamp=6)
        span.update_name("second name")
        span.end(end_time=7)

    mine, theirs = both(scenario, *PARENT_BASED)

    # The stack traces differ by the frames of each tracer's own code.
    for spans in (mine, theirs):
        for event in spans[0]["events"]:
            event[2].pop("exception.stacktrace", None)
    assert mine == theirs
    assert mine[0]["name"] == "second name"
    assert [event[0] for event in mine[0]["events"]] == ["progress", "exception"]
    assert mine[0]["events"][1][2]["exception.type"] == "ValueError"
    assert len(mine[0]["links"]) == 2


def test_an_exception_leaving_the_span_as_a_context_manager_is_recorded_unless_asked_not_to() -> (
    None
):
    def scenario(tracer: trace.Tracer) -> None:
        for name, record in [("recorded", True), ("quiet", False)]:
            with (
                pytest.raises(KeyError),
                tracer.start_span(
                    name, start_time=1, record_exception=record, set_status_on_exception=record
                ),
            ):
                raise KeyError("k")
        with pytest.raises(KeyError), tracer.start_as_current_span("current", start_time=1):
            raise KeyError("k")

    mine, theirs = both(scenario, *PARENT_BASED)

    for spans in (mine, theirs):
        for span in spans:
            span["times"] = span["times"][0]  # ended now: the clock differs
            for event in span["events"]:
                event[2].pop("exception.stacktrace")
            span["events"] = [event[:1] + event[2:] for event in span["events"]]
    assert mine == theirs
    assert [span["status"][0] for span in mine] == [
        StatusCode.ERROR,
        StatusCode.UNSET,
        StatusCode.ERROR,
    ]


def test_an_ended_span_refuses_changes_and_is_exported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracer, exporter = ours(Sampling(ALWAYS_ON, parent_based=True))
    span = tracer.start_span("done", start_time=1, attributes={"a": 1})
    span.end(end_time=2)

    with caplog.at_level(logging.WARNING):
        span.set_attribute("a", 2)
        span.set_attributes({"b": 3})
        span.add_event("late")
        span.set_status(StatusCode.ERROR)
        span.update_name("renamed")
        span.end(end_time=3)

    (finished,) = exporter.get_finished_spans()
    assert finished is span  # the span is its own record: nothing copied
    assert (finished.name, dict(finished.attributes or {})) == ("done", {"a": 1})
    assert (finished.end_time, finished.status.status_code) == (2, StatusCode.UNSET)
    assert not finished.events
    assert not span.is_recording()
    assert "ended span" in caplog.text


# Sampling and ids


@pytest.mark.parametrize(
    ("sampler", "sampling"),
    [
        PARENT_BASED,
        (ParentBased(ALWAYS_OFF), Sampling(ALWAYS_OFF, parent_based=True)),
        (ParentBased(TraceIdRatioBased(0.5)), Sampling(TraceIdRatioBased(0.5), True)),
        (ALWAYS_ON, Sampling(ALWAYS_ON, parent_based=False)),
        (ALWAYS_OFF, Sampling(ALWAYS_OFF, parent_based=False)),
    ],
)
@pytest.mark.parametrize("parent", [None, True, False])
def test_sampling_decides_as_the_sdks_sampler_with_and_without_a_parent(
    sampler: Sampler, sampling: Sampling, parent: bool | None
) -> None:
    context = None if parent is None else remote_parent(parent)

    def scenario(tracer: trace.Tracer) -> None:
        tracer.start_span("child", context=context, start_time=1).end(end_time=2)

    mine, theirs = both(scenario, sampler, sampling)

    if isinstance(sampling.root, TraceIdRatioBased) and parent is None:
        # A ratio decides by the random trace id: the two runs may differ; the shape may not.
        assert all(span["flags"] == TraceFlags(3) for span in mine + theirs)
    else:
        assert mine == theirs


@pytest.fixture
def seeded() -> Iterator[None]:
    """The random module's state, restored after the test: both tracers draw their ids from it."""
    state = random.getstate()
    yield
    random.setstate(state)


@pytest.mark.parametrize(
    ("sampler", "sampling", "kept"),
    [
        (ParentBased(TraceIdRatioBased(0.5)), Sampling(TraceIdRatioBased(0.5), True), range(1, 48)),
        (TraceIdRatioBased(0.5), Sampling(TraceIdRatioBased(0.5), False), range(1, 48)),
        (TraceIdRatioBased(0.0), Sampling(TraceIdRatioBased(0.0), False), range(0, 1)),
        (ALWAYS_ON, Sampling(ALWAYS_ON, parent_based=False), range(48, 49)),
        (ALWAYS_OFF, Sampling(ALWAYS_OFF, parent_based=False), range(0, 1)),
    ],
)
@pytest.mark.usefixtures("seeded")
def test_a_ratio_decides_on_the_same_trace_ids_as_the_sdks_sampler(
    sampler: Sampler, sampling: Sampling, kept: range
) -> None:
    def scenario(tracer: trace.Tracer) -> None:
        random.seed(7)  # the same ids, and so the same decisions, for both tracers
        for n in range(48):
            # Roots, then children of remote parents of random trace ids with a trace state.
            parent = None
            if n % 2:
                parent_context = SpanContext(
                    random.getrandbits(128) | 1,
                    0xDEF,
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                    trace_state=TraceState([("v", str(n))]),
                )
                parent = trace.set_span_in_context(NonRecordingSpan(parent_context))
            tracer.start_span(f"span {n}", parent, start_time=1, attributes={"n": n}).end(
                end_time=2
            )

    mine, our_exporter = ours(sampling)
    theirs, their_exporter = sdks(sampler)
    scenario(mine)
    scenario(theirs)

    def exported(exporter: InMemorySpanExporter) -> list[tuple[Any, ...]]:
        return [
            (described(span), span.context.trace_id, span.context.span_id)
            for span in exporter.get_finished_spans()
            if span.context is not None
        ]

    assert exported(our_exporter) == exported(their_exporter)
    assert len(exported(our_exporter)) in kept


@pytest.mark.parametrize(
    ("trace_id", "span_id", "is_remote", "flags", "state"),
    [
        (0x1, 0x2, False, TraceFlags(0), None),
        (2**128 - 1, 2**64 - 1, True, TraceFlags(3), TraceState([("k", "v")])),
    ],
)
def test_a_span_context_of_valid_ids_is_the_apis(
    trace_id: int, span_id: int, is_remote: bool, flags: TraceFlags, state: TraceState | None
) -> None:
    made = valid_span_context(trace_id, span_id, is_remote, flags, state)
    expected = SpanContext(trace_id, span_id, is_remote, flags, state)

    assert type(made) is SpanContext
    assert made == expected
    assert (
        made.trace_id,
        made.span_id,
        made.is_remote,
        made.trace_flags,
        made.trace_state,
        made.is_valid,
    ) == (
        expected.trace_id,
        expected.span_id,
        expected.is_remote,
        expected.trace_flags,
        expected.trace_state,
        expected.is_valid,
    )
    assert made.trace_state is expected.trace_state  # the default one when None


def test_a_child_continues_its_parents_trace_and_flags_and_a_root_starts_a_random_one() -> None:
    tracer, _ = ours(Sampling(ALWAYS_ON, parent_based=True))

    root = tracer.start_span("root")
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    unsampled = tracer.start_span("unsampled", context=remote_parent(sampled=False))
    remote = tracer.start_span("remote", context=remote_parent(sampled=True))

    root_context, child_context = root.get_span_context(), child.get_span_context()
    assert root_context.trace_flags == TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID
    assert child_context.trace_id == root_context.trace_id
    assert child_context.span_id not in (0, root_context.span_id)
    assert isinstance(child, RecordedSpan)
    assert child.parent == root_context
    assert isinstance(unsampled, NonRecordingSpan)
    assert unsampled.get_span_context().trace_id == 0xABC
    assert not unsampled.get_span_context().trace_flags.sampled
    assert remote.get_span_context().trace_state == TraceState([("v", "vendor=abc")])
    # A parent whose id is not random (flag unset) passes that on.
    assert not remote.get_span_context().trace_flags.random_trace_id
    ids = {tracer.start_span("x").get_span_context().trace_id for _ in range(200)}
    assert len(ids) == 200
    assert 0 not in ids


class RecordOnly(Sampler):
    """Records without sampling: the span is live but no processor exports it."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, {"sampler": "record-only"})

    def get_description(self) -> str:
        return "RecordOnly"


def test_a_record_only_sampler_gives_a_live_span_that_is_not_exported() -> None:
    tracer, exporter = ours(Sampling(RecordOnly(), parent_based=False))

    span = tracer.start_span("recorded", attributes={"mine": 1})
    assert span.is_recording()
    assert not span.get_span_context().trace_flags.sampled
    assert isinstance(span, RecordedSpan)
    assert dict(span.attributes or {}) == {"sampler": "record-only"}  # the sampler's attributes
    span.end()
    assert exporter.get_finished_spans() == ()


# Exporters


def test_our_spans_encode_to_the_same_otlp_as_the_sdks() -> None:
    def scenario(tracer: trace.Tracer) -> None:
        parent = tracer.start_span("parent", start_time=1, attributes={"a": "b"})
        span = tracer.start_span(
            "child", trace.set_span_in_context(parent), SpanKind.SERVER, start_time=2
        )
        span.add_event("e", {"n": 1}, timestamp=3)
        span.set_status(StatusCode.ERROR, "failed")
        span.end(end_time=4)
        parent.end(end_time=5)

    mine, mine_exporter = ours(Sampling(ALWAYS_ON, parent_based=True))
    theirs, their_exporter = sdks(ParentBased(ALWAYS_ON))
    scenario(mine)
    scenario(theirs)

    def encoded(spans: Iterator[ReadableSpan]) -> bytes:
        # The same ids on both sides, so that the bytes can be compared whole.
        return SpanEncoder().encode([_with_ids(span, 0x10 + n) for n, span in enumerate(spans)])

    ours_encoded = encoded(iter(mine_exporter.get_finished_spans()))
    assert ours_encoded == encoded(iter(their_exporter.get_finished_spans()))


def _with_ids(span: ReadableSpan, span_id: int) -> ReadableSpan:
    """A copy of a finished span with fixed ids; parents point at the previous fixed id."""
    context = span.get_span_context()
    assert context is not None
    fixed = SpanContext(0x1, span_id, is_remote=False, trace_flags=context.trace_flags)
    parent = (
        None
        if span.parent is None
        else SpanContext(0x1, span_id + 1, is_remote=span.parent.is_remote)
    )
    return ReadableSpan(
        name=span.name,
        context=fixed,
        parent=parent,
        resource=span.resource,
        attributes=span.attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
