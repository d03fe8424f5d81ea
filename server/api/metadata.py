"""The request metadata aiproc reads, and the limits it holds each entry to.

gRPC bounds the metadata as a whole (`server.max_metadata_bytes`); these
limits bound each entry we parse, so a caller learns which one is wrong:
INVALID_ARGUMENT, with a message starting `metadata <key>:`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiproc.server.core.errors import InvalidArgument
from aiproc.server.security.authenticator import CLIENT_ID_HEADER

__all__ = ["CLIENT_ID", "LIMITS", "check"]

CLIENT_ID = CLIENT_ID_HEADER
LIMITS: Mapping[str, int] = {
    CLIENT_ID: 128,
    # W3C trace context: traceparent is 55 characters in version 00 (later versions may
    # append fields); tracers are asked to keep tracestate near 512 characters. (Baggage is
    # not read at all: see telemetry.propagation.)
    "traceparent": 256,
    "tracestate": 1024,
}
"""Longest value accepted for each key aiproc reads, in characters."""
_SINGLE = frozenset({CLIENT_ID})
"""Keys that must not be repeated: two identities in one call would be ambiguous."""


def check(metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
    """Raises InvalidArgument naming the first entry we read that is too long or repeated."""
    seen: set[str] = set()
    for key, value in metadata or ():
        limit = LIMITS.get(key)
        if limit is None:
            continue
        if len(value) > limit:
            raise InvalidArgument(f"metadata {key}", f"at most {limit} characters")
        if key in _SINGLE:
            if key in seen:
                raise InvalidArgument(f"metadata {key}", "given more than once")
            seen.add(key)
