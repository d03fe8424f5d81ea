"""Finished spans to the bytes of an OTLP ExportTraceServiceRequest, written directly.

The SDK's encoder (opentelemetry-exporter-otlp-proto-common) builds a protobuf
object per span, attribute and value before serialising them: about 30 µs a
span, on the exporter thread, holding the GIL that the event loop needs. This
writes the protobuf wire format itself, and keeps the encoding of the
attribute keys, of repeated attribute values and of each resource and scope,
so most of a span is a few joins of cached bytes. The output decodes to the
same message as the SDK encoder's (tests/telemetry/test_span_encoding.py
checks it on real spans), including its grouping by resource and scope and its
handling of attributes it cannot encode.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode

__all__ = ["SpanEncoder"]

log = logging.getLogger(__name__)

# Wire types.
_VARINT = 0
_FIXED64 = 1
_LEN = 2
_FIXED32 = 5

# What SpanFlags sets on every span and link: whether the parent is remote is known.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# Values repeat across spans (model names, hosts, methods); ids and URLs do not,
# so the cache is emptied when it grows past this, instead of growing forever.
_VALUE_CACHE_LIMIT = 4096

_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_fixed64 = struct.Struct("<Q").pack
# A span's start and end times: tag, fixed64, tag, fixed64 (each tag is one byte).
_pack_times = struct.Struct("<BQBQ").pack


def _varint(value: int) -> bytes:
    """An unsigned varint; negative int64 values as their 64-bit two's complement."""
    if 0 <= value < 0x80:
        return bytes((value,))
    if 0 < value < 0x4000:  # most lengths: a span, an attribute value
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    return tag + _varint(len(payload)) + payload


# Tags, by message and field (opentelemetry/proto/**/*.proto).
_REQUEST_RESOURCE_SPANS = _tag(1, _LEN)
_RESOURCE_SPANS_RESOURCE = _tag(1, _LEN)
_RESOURCE_SPANS_SCOPE_SPANS = _tag(2, _LEN)
_RESOURCE_SPANS_SCHEMA_URL = _tag(3, _LEN)
_RESOURCE_ATTRIBUTES = _tag(1, _LEN)
_SCOPE_SPANS_SCOPE = _tag(1, _LEN)
_SCOPE_SPANS_SPANS = _tag(2, _LEN)
_SCOPE_SPANS_SCHEMA_URL = _tag(3, _LEN)
_SCOPE_NAME = _tag(1, _LEN)
_SCOPE_VERSION = _tag(2, _LEN)
_SCOPE_ATTRIBUTES = _tag(3, _LEN)
_SPAN_TRACE_ID = _tag(1, _LEN) + b"\x10"  # ids are always 16 and 8 bytes long
_SPAN_SPAN_ID = _tag(2, _LEN) + b"\x08"
_SPAN_TRACE_STATE = _tag(3, _LEN)
_SPAN_PARENT_SPAN_ID = _tag(4, _LEN) + b"\x08"
_SPAN_NAME = _tag(5, _LEN)
_SPAN_KIND = _tag(6, _VARINT)
_SPAN_START = _tag(7, _FIXED64)
_SPAN_END = _tag(8, _FIXED64)
_SPAN_ATTRIBUTES = _tag(9, _LEN)
_SPAN_DROPPED_ATTRIBUTES = _tag(10, _VARINT)
_SPAN_EVENTS = _tag(11, _LEN)
_SPAN_DROPPED_EVENTS = _tag(12, _VARINT)
_SPAN_LINKS = _tag(13, _LEN)
_SPAN_DROPPED_LINKS = _tag(14, _VARINT)
_SPAN_STATUS = _tag(15, _LEN)
_SPAN_FLAGS = _tag(16, _FIXED32)
_EVENT_TIME = _tag(1, _FIXED64)
_EVENT_NAME = _tag(2, _LEN)
_EVENT_ATTRIBUTES = _tag(3, _LEN)
_EVENT_DROPPED_ATTRIBUTES = _tag(4, _VARINT)
_LINK_TRACE_ID = _tag(1, _LEN) + b"\x10"
_LINK_SPAN_ID = _tag(2, _LEN) + b"\x08"
_LINK_ATTRIBUTES = _tag(4, _LEN)
_LINK_DROPPED_ATTRIBUTES = _tag(5, _VARINT)
_LINK_FLAGS = _tag(6, _FIXED32)
_STATUS_MESSAGE = _tag(2, _LEN)
_STATUS_CODE = _tag(3, _VARINT)
_KEY_VALUE_KEY = _tag(1, _LEN)
_KEY_VALUE_VALUE = _tag(2, _LEN)
_ANY_STRING = _tag(1, _LEN)
_ANY_BOOL = _tag(2, _VARINT)
_ANY_INT = _tag(3, _VARINT)
_ANY_DOUBLE = _tag(4, _FIXED64)
_ANY_ARRAY = _tag(5, _LEN)
_ANY_KVLIST = _tag(6, _LEN)
_ANY_BYTES = _tag(7, _LEN)
_LIST_VALUES = _tag(1, _LEN)  # ArrayValue.values and KeyValueList.values

# Whole fields that most spans share, encoded once.
# The API's SpanKind counts from INTERNAL = 0; OTLP's from UNSPECIFIED = 0.
_KIND_FIELDS = {kind: _SPAN_KIND + _varint(kind.value + 1) for kind in SpanKind}
_UNSET_STATUS_FIELD = _field(_SPAN_STATUS, b"")
_LOCAL_PARENT_FLAGS_FIELD = _SPAN_FLAGS + _pack_fixed32(_HAS_IS_REMOTE)
_REMOTE_PARENT_FLAGS_FIELD = _SPAN_FLAGS + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _any_value(value: object) -> bytes:
    """An AnyValue message (without its own tag and length); ValueError for other types.

    The order of the checks is the SDK encoder's: bool before int, str and
    bytes before sequences.
    """
    if value is None:
        return b""
    if isinstance(value, bool):
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(_ANY_STRING, value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} does not fit in an int64")
        return _ANY_INT + _varint(value)
    if isinstance(value, float):
        return _ANY_DOUBLE + _pack_double(value)
    if isinstance(value, bytes):
        return _field(_ANY_BYTES, value)
    if isinstance(value, Sequence):
        return _field(
            _ANY_ARRAY, b"".join([_field(_LIST_VALUES, _any_value(item)) for item in value])
        )
    if isinstance(value, Mapping):
        pairs = b"".join([_field(_LIST_VALUES, _key_value(str(k), v)) for k, v in value.items()])
        return _field(_ANY_KVLIST, pairs)
    raise ValueError(f"invalid type {type(value).__name__} of value {value!r}")


def _key_value(key: str, value: object) -> bytes:
    return _field(_KEY_VALUE_KEY, key.encode()) + _field(_KEY_VALUE_VALUE, _any_value(value))


# The attribute values whose encoding is remembered: hashable, and cheap to hash.
_SCALARS = frozenset({str, int, float, bool, bytes})


class _AttributeEncoder:
    """Encodes attribute maps as repeated KeyValue fields, remembering what repeats."""

    def __init__(self) -> None:
        # (key, type, value): True and 1 are equal keys in a dict, and encode differently.
        self._fields: dict[tuple[object, ...], bytes] = {}

    def encode(self, tag: bytes, attributes: Mapping[str, object] | None) -> bytes:
        """Each attribute as a `tag` field; one that cannot be encoded is logged and left out."""
        if not attributes:
            return b""
        cache = self._fields
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            cache_key: tuple[object, ...] | None = None
            if kind in _SCALARS:
                cache_key = (key, kind, value)
            elif kind is tuple and isinstance(value, tuple):  # (no subclass; mypy narrows)
                # A cleaned sequence (finish reasons, say); its items' types count
                # too, since (True,) == (1,).
                cache_key = (key, kind, value, tuple(map(type, value)))
            try:
                encoded = cache.get(cache_key) if cache_key is not None else None
            except TypeError:  # a tuple holding something unhashable
                cache_key = encoded = None
            if encoded is None:
                try:
                    encoded = _field(tag, _key_value(key, value))
                except ValueError as error:
                    log.error("Failed to encode key %s: %s", key, error)
                    continue
                if cache_key is not None:
                    if len(cache) >= _VALUE_CACHE_LIMIT:
                        cache.clear()
                    cache[cache_key] = encoded
            parts.append(encoded)
        return b"".join(parts)


class SpanEncoder:
    """Encodes batches of finished spans; keeps what repeats between batches.

    Not thread-safe: one encoder belongs to one exporter, which the batch
    processor calls from one thread at a time.
    """

    def __init__(self) -> None:
        self._attributes = _AttributeEncoder()
        self._span_fields: dict[str, bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialized ExportTraceServiceRequest for `spans`.

        Spans are grouped by resource, then by instrumentation scope, in order
        of first appearance, as the SDK encoder groups them.
        """
        groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
        by_object: dict[tuple[int, int], list[bytes]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            group = by_object.get((id(resource), id(scope)))
            if group is None:
                # Equal resources and scopes share a group, whichever objects they are.
                group = groups.setdefault(resource, {}).setdefault(scope, [])
                by_object[(id(resource), id(scope))] = group
            group.append(self._span(span))
        return b"".join(
            [
                _field(_REQUEST_RESOURCE_SPANS, self._resource_spans(resource, scopes))
                for resource, scopes in groups.items()
            ]
        )

    def _resource_spans(
        self, resource: Resource, scopes: Mapping[InstrumentationScope | None, list[bytes]]
    ) -> bytes:
        parts = [_field(_RESOURCE_SPANS_RESOURCE, self._resource(resource))]
        for scope, spans in scopes.items():
            scope_spans = [_field(_SCOPE_SPANS_SCOPE, self._scope(scope))]
            scope_spans.extend([_field(_SCOPE_SPANS_SPANS, span) for span in spans])
            if scope is not None and scope.schema_url:
                scope_spans.append(_field(_SCOPE_SPANS_SCHEMA_URL, scope.schema_url.encode()))
            parts.append(_field(_RESOURCE_SPANS_SCOPE_SPANS, b"".join(scope_spans)))
        if resource.schema_url:
            parts.append(_field(_RESOURCE_SPANS_SCHEMA_URL, resource.schema_url.encode()))
        return b"".join(parts)

    def _resource(self, resource: Resource) -> bytes:
        # Kept with the object itself, so that its id cannot be reused by another.
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            cached = (resource, self._attributes.encode(_RESOURCE_ATTRIBUTES, resource.attributes))
            self._resources[id(resource)] = cached
        return cached[1]

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            cached = (scope, _encode_scope(scope, self._attributes.encode))
            self._scopes[id(scope)] = cached
        return cached[1]

    def _span(self, span: ReadableSpan) -> bytes:
        # The fields themselves, not ReadableSpan's properties, which wrap the
        # attributes in a proxy and copy events and links into new tuples: about
        # 1 µs a span, on the thread that shares the GIL with the event loop.
        context = span._context
        assert context is not None  # every span the SDK exports has one
        parent = span._parent
        parts = [
            _SPAN_TRACE_ID,
            context.trace_id.to_bytes(16, "big"),
            _SPAN_SPAN_ID,
            context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            trace_state = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
            parts.append(_field(_SPAN_TRACE_STATE, trace_state.encode()))
        if parent is not None:
            parts += (_SPAN_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
        name = self._span_fields.get(span._name)
        if name is None:
            name = _field(_SPAN_NAME, span._name.encode()) if span._name else b""
            if len(self._span_fields) >= _VALUE_CACHE_LIMIT:
                self._span_fields.clear()
            self._span_fields[span._name] = name
        parts += (name, _KIND_FIELDS[span._kind])
        start, end = span._start_time, span._end_time
        if start and end:
            parts.append(_pack_times(_SPAN_START[0], start, _SPAN_END[0], end))
        elif start:
            parts += (_SPAN_START, _pack_fixed64(start))
        elif end:
            parts += (_SPAN_END, _pack_fixed64(end))
        parts.append(self._attributes.encode(_SPAN_ATTRIBUTES, span._attributes))
        if span.dropped_attributes:
            parts += (_SPAN_DROPPED_ATTRIBUTES, _varint(span.dropped_attributes))
        events, links = span._events, span._links
        for event in events:
            event_parts = [_EVENT_TIME, _pack_fixed64(event.timestamp)]
            if event.name:
                event_parts.append(_field(_EVENT_NAME, event.name.encode()))
            event_parts.append(self._attributes.encode(_EVENT_ATTRIBUTES, event.attributes))
            if event.dropped_attributes:
                event_parts += (_EVENT_DROPPED_ATTRIBUTES, _varint(event.dropped_attributes))
            parts.append(_field(_SPAN_EVENTS, b"".join(event_parts)))
        if type(events) is BoundedList and events.dropped:
            parts += (_SPAN_DROPPED_EVENTS, _varint(events.dropped))
        for link in links:
            parts.append(_field(_SPAN_LINKS, self._link(link)))
        if type(links) is BoundedList and links.dropped:
            parts += (_SPAN_DROPPED_LINKS, _varint(links.dropped))
        status = span._status
        if status.status_code is StatusCode.UNSET and not status.description:
            parts.append(_UNSET_STATUS_FIELD)
        else:
            status_parts = b""
            if status.description:
                status_parts = _field(_STATUS_MESSAGE, status.description.encode())
            if status.status_code.value:
                status_parts += _STATUS_CODE + _varint(status.status_code.value)
            parts.append(_field(_SPAN_STATUS, status_parts))
        remote = parent is not None and parent.is_remote
        parts.append(_REMOTE_PARENT_FLAGS_FIELD if remote else _LOCAL_PARENT_FLAGS_FIELD)
        return b"".join(parts)

    def _link(self, link: Link) -> bytes:
        context = link.context
        parts = [
            _LINK_TRACE_ID,
            context.trace_id.to_bytes(16, "big"),
            _LINK_SPAN_ID,
            context.span_id.to_bytes(8, "big"),
            self._attributes.encode(_LINK_ATTRIBUTES, link.attributes),
        ]
        if link.dropped_attributes:
            parts += (_LINK_DROPPED_ATTRIBUTES, _varint(link.dropped_attributes))
        parts += (_LINK_FLAGS, _pack_fixed32(_flags(context)))
        return b"".join(parts)


def _encode_scope(
    scope: InstrumentationScope | None,
    encode_attributes: Callable[[bytes, Mapping[str, object] | None], bytes],
) -> bytes:
    if scope is None:
        return b""
    parts = [_field(_SCOPE_NAME, scope.name.encode()) if scope.name else b""]
    if scope.version:
        parts.append(_field(_SCOPE_VERSION, scope.version.encode()))
    parts.append(encode_attributes(_SCOPE_ATTRIBUTES, scope.attributes))
    return b"".join(parts)


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE
