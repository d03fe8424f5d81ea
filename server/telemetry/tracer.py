"""The server's tracer: the SDK's spans and sampling rules, at a fraction of the SDK's cost.

With every task traced, the SDK's `Tracer.start_span` was the largest part of
what tracing costs: about 35 µs a span in place, five spans a task, most of it
in a lock and two bounded containers per span, attribute cleaning through
generic code, and a copy of the span made when it ends. This tracer makes the
same spans for the SDK's processors and exporters — a `RecordedSpan` is a
`ReadableSpan` — and keeps the SDK's rules: the sampler decides (ALWAYS_ON,
ALWAYS_OFF and TraceIdRatioBased by their rule applied here, without a
SamplingResult), ParentBased follows the parent's decision, the trace id's
randomness flag is set as the SDK sets it, limits come from `SpanLimits`
(OTEL_SPAN_*_LIMIT, OTEL_ATTRIBUTE_*), invalid attributes are logged and
dropped, an ended span refuses changes.

What it leaves out: a span is not locked (the server's spans live on its event
loop; a span changed from several threads at once could interleave changes),
and the processor's `on_start` is not called (the SDK's batch and simple
processors, the only ones the server builds, do nothing there).
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import time_ns
from types import TracebackType
from typing import cast

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util import types

__all__ = ["RecordedSpan", "Sampling", "Tracer", "valid_span_context"]

log = logging.getLogger(__name__)

_RANDOM = TraceFlags.RANDOM_TRACE_ID
# A span's flags by their value: the sampled bit (1) and the random trace id's (2).
_FLAGS = tuple(TraceFlags(value) for value in range(4))
_UNSET = Status(StatusCode.UNSET)
# Attribute values stored as they are; anything else goes through the SDK's cleaning.
_PLAIN = frozenset({str, bool, int, float})
# What TraceIdRatioBased decides on: the trace id's 64 low bits.
_RATIO_BITS = TraceIdRatioBased.TRACE_ID_LIMIT


@dataclass(frozen=True, slots=True)
class Sampling:
    """`root` decides for spans without a parent; with `parent_based`, a span with a
    parent is sampled exactly when its parent is (the SDK's ParentBased with its
    default delegates), otherwise `root` decides for every span."""

    root: Sampler
    parent_based: bool


class Tracer(trace.Tracer):
    """Starts `RecordedSpan`s of one resource and instrumentation scope, ended into `processor`."""

    def __init__(
        self,
        sampling: Sampling,
        resource: Resource,
        scope: InstrumentationScope,
        processor: SpanProcessor,
        limits: SpanLimits | None = None,
    ) -> None:
        self._sampling = sampling
        self._resource = resource
        self._scope = scope
        self._processor = processor
        self._limits = limits or SpanLimits()
        self._ratio_bound = _ratio_bound(sampling.root)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and not parent.is_valid:
            parent = None
        sampling = self._sampling
        trace_state: TraceState | None
        if parent is not None and sampling.parent_based:
            recording = sampled = bool(parent.trace_flags & TraceFlags.SAMPLED)
            trace_id = parent.trace_id
            trace_state = parent.trace_state
        else:
            trace_id = parent.trace_id if parent is not None else _random_id(128)
            if self._ratio_bound is not None:
                # The sampler's own rule, without the SamplingResult it builds (about 2 µs):
                # sampled spans keep their attributes, and a parent's trace state goes on.
                recording = sampled = trace_id & _RATIO_BITS < self._ratio_bound
                trace_state = parent.trace_state if parent is not None else None
            else:
                result = sampling.root.should_sample(
                    context, trace_id, name, kind, attributes, links
                )
                recording = result.decision is not Decision.DROP
                sampled = result.decision is Decision.RECORD_AND_SAMPLE
                trace_state = result.trace_state
                attributes = result.attributes
        # The SDK's ids are random; a child keeps what its parent says of its trace id.
        random_trace_id = _RANDOM if parent is None else parent.trace_flags & _RANDOM
        flags = _FLAGS[random_trace_id | sampled]
        span_context = valid_span_context(trace_id, _random_id(64), False, flags, trace_state)
        if not recording:
            return trace.NonRecordingSpan(span_context)
        span = RecordedSpan(
            name,
            span_context,
            parent,
            kind,
            self._resource,
            self._scope,
            self._processor,
            self._limits,
            record_exception,
            set_status_on_exception,
            start_time if start_time is not None else time_ns(),
        )
        if attributes:
            span._set_initial(attributes)
        if links:
            for link in links:
                span.add_link(link.context, link.attributes)
        return span

    # contextlib's manager: the API's signature names its own private kind of one.
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class RecordedSpan(trace.Span, ReadableSpan):
    """A recorded span: changed through the API until it ends, then read by exporters.

    It is its own finished record (the SDK copies each span as it ends): after
    `end`, changes are refused with a warning, as the SDK refuses them.
    """

    # ReadableSpan's fields that every span starts with the same value of: read from
    # the class until a span changes them (fewer stores a span in `__init__`).
    _instrumentation_info = None
    _end_time: int | None = None
    _events: Sequence[Event] = ()
    _links: Sequence[Link] = ()
    _status = _UNSET
    _dropped_attributes = 0

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        resource: Resource,
        scope: InstrumentationScope,
        processor: SpanProcessor,
        limits: SpanLimits,
        record_exception: bool,
        set_status_on_exception: bool,
        start_time: int,
    ) -> None:
        # ReadableSpan's other fields, set here rather than through its __init__ (the
        # properties ReadableSpan gives exporters read them).
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_scope = scope
        self._parent = parent
        self._start_time = start_time
        self._attributes: dict[str, types.AnyValue] = {}
        self._resource = resource
        self._processor = processor
        self._limits = limits
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)  # never None here, unlike a ReadableSpan's

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._ended("set_attribute"):
            return
        kind = type(value)
        max_length = self._limits.max_span_attribute_length
        if type(key) is not str or not key:
            self._set_cleaned(key, value)  # logs and counts the invalid key
        elif kind in _PLAIN and (
            kind is not str or max_length is None or len(cast(str, value)) <= max_length
        ):
            self._store(key, value)
        elif isinstance(value, (list, tuple)) and _plain_items(value, max_length):
            self._store(key, tuple(value))
        else:
            self._set_cleaned(key, value)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def _set_initial(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """The attributes a span starts with; taken as they are when nothing needs cleaning."""
        limits = self._limits
        if limits.max_span_attribute_length is None and (
            limits.max_span_attributes is None or len(attributes) <= limits.max_span_attributes
        ):
            for key, value in attributes.items():
                if type(value) not in _PLAIN or type(key) is not str or not key:
                    break
            else:
                self._attributes = dict(attributes)
                return
        self.set_attributes(attributes)

    def _set_cleaned(self, key: str, value: types.AnyValue) -> None:
        """Stores `value` as the SDK would: cleaned, truncated, or dropped with a warning."""
        cleaned = BoundedAttributes(
            None, {key: value}, max_value_len=self._limits.max_span_attribute_length
        )
        if key in cleaned:
            self._store(key, cleaned[key])
        else:
            self._dropped_attributes += 1

    def _store(self, key: str, value: types.AnyValue) -> None:
        attributes = self._attributes
        if key in attributes:
            del attributes[key]  # a new value counts as the newest, as in the SDK
        limit = self._limits.max_span_attributes
        if limit is not None and len(attributes) >= limit:
            if limit == 0:
                self._dropped_attributes += 1
                return
            log.warning("Span attributes are full: dropping the oldest to make space.")
            del attributes[next(iter(attributes))]
            self._dropped_attributes += 1
        attributes[key] = value

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self._ended("add_event"):
            return
        bounded = BoundedAttributes(
            self._limits.max_event_attributes,
            attributes,
            max_value_len=self._limits.max_attribute_length,
        )
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(self._limits.max_events)
        self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._ended("add_link"):
            return
        # The SDK's rule: a link says something if its context is valid, or if it
        # carries attributes or a trace state.
        if not context or not (context.is_valid or attributes or context.trace_state):
            return
        bounded = BoundedAttributes(
            self._limits.max_link_attributes,
            attributes,
            max_value_len=self._limits.max_attribute_length,
        )
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(self._limits.max_links)
        self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        if not self._ended("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended("set_status"):
            return
        # OK is final, and UNSET never replaces anything (the SDK's rules).
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                log.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, types.AnyValue] = {
            EXCEPTION_TYPE: f"{module}.{qualname}" if module and module != "builtins" else qualname,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            log.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_val is not None and self._end_time is None:
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    def _ended(self, change: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("Tried calling %s on an ended span.", change)
        return True


def _plain_items(values: Sequence[object], max_length: int | None) -> bool:
    """Whether a list or tuple can be stored as a tuple as it is: values of one plain type,
    no string longer than the limit (the SDK's rule for sequences; anything else, None
    items included, goes through its cleaning)."""
    if not values:
        return True
    kind = type(values[0])
    if kind not in _PLAIN:
        return False
    if kind is str and max_length is not None:
        return all(isinstance(value, str) and len(value) <= max_length for value in values)
    return all(type(value) is kind for value in values)


def valid_span_context(
    trace_id: int,
    span_id: int,
    is_remote: bool,
    trace_flags: TraceFlags,
    trace_state: TraceState | None = None,
) -> SpanContext:
    """`SpanContext(trace_id, span_id, is_remote, trace_flags, trace_state)` for ids known to be
    valid (non-zero, in range): the API's constructor, checking them again, costs about
    0.6 µs more (a Python `__new__` called with keywords) and the server builds six a task.

    The tuple is laid out as the API's `__new__` lays it out, `is_valid` last; the tests
    compare the two."""
    state = DEFAULT_TRACE_STATE if trace_state is None else trace_state
    return tuple.__new__(SpanContext, (trace_id, span_id, is_remote, trace_flags, state, True))


def _ratio_bound(sampler: Sampler) -> int | None:
    """For the SDK's samplers that decide on the trace id alone, the bound its 64 low bits
    are sampled under; None for any other sampler (its `should_sample` decides)."""
    if sampler is ALWAYS_ON:
        return _RATIO_BITS + 1
    if sampler is ALWAYS_OFF:
        return 0
    if type(sampler) is TraceIdRatioBased:  # exactly: a subclass may decide otherwise
        return sampler.bound
    return None


def _random_id(bits: int) -> int:
    """A random trace (128 bits) or span (64 bits) id; never the invalid 0."""
    while True:
        value = random.getrandbits(bits)
        if value:
            return value
