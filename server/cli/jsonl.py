"""Parsing `submit-batch` input: one JSON task per line, each checked on its own."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from aiproc.client import Priority

_FIELDS = frozenset(
    (
        "url",
        "content",
        "priority",
        "timeout",
        "instructions",
        "model",
        "idempotency_key",
        "metadata",
    )
)
_TEXT_FIELDS = ("instructions", "model", "idempotency_key")
_PRIORITIES = {priority.value: priority for priority in Priority}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchItem:
    """One task to queue, from line `line` (1-based) of the input."""

    line: int
    url: str
    content: str
    priority: Priority = Priority.NORMAL
    task_timeout: float | None = None
    """Seconds; None means the server's worker_timeout."""
    instructions: str = ""
    model: str = ""
    idempotency_key: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that is not a valid task, and why."""

    line: int
    reason: str


class _Invalid(ValueError):
    pass


def parse_line(number: int, text: str) -> BatchItem | BadLine | None:
    """The task on one input line; None for a blank line."""
    if not text.strip():
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadLine(number, f"not valid JSON: {exc.msg} (column {exc.colno})")
    try:
        return _item(number, raw)
    except _Invalid as exc:
        return BadLine(number, str(exc))


def read_items(lines: Iterable[str]) -> Iterator[BatchItem | BadLine]:
    """Every task and bad line of the input, in order; blank lines are skipped."""
    for number, text in enumerate(lines, start=1):
        parsed = parse_line(number, text)
        if parsed is not None:
            yield parsed


def count_tasks(lines: Iterable[str]) -> int:
    """How many non-blank lines the input has, i.e. how many results to expect."""
    return sum(1 for text in lines if text.strip())


def _item(number: int, raw: object) -> BatchItem:
    if not isinstance(raw, dict):
        raise _Invalid(f"expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise _Invalid(f"unknown field {unknown[0]!r}")
    texts = {name: _text(raw, name) for name in _TEXT_FIELDS}
    return BatchItem(
        line=number,
        url=_required_text(raw, "url"),
        content=_required_text(raw, "content"),
        priority=_priority(raw.get("priority")),
        task_timeout=_timeout(raw.get("timeout")),
        metadata=_metadata(raw.get("metadata")),
        **texts,
    )


def _required_text(raw: Mapping[str, object], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{name}: required, a non-empty string")
    return value


def _text(raw: Mapping[str, object], name: str) -> str:
    value = raw.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"{name}: expected a string, got {json.dumps(value)}")
    return value


def _priority(value: object) -> Priority:
    if value is None:
        return Priority.NORMAL
    if not isinstance(value, str) or value.lower() not in _PRIORITIES:
        names = ", ".join(_PRIORITIES)
        raise _Invalid(f"priority: expected one of {names}, got {json.dumps(value)}")
    return _PRIORITIES[value.lower()]


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"timeout: expected a number of seconds, got {json.dumps(value)}")
    if not math.isfinite(value) or value < 0:
        raise _Invalid(f"timeout: must be a finite number of seconds >= 0, got {value}")
    return float(value)


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Invalid("metadata: expected an object of string values")
    return dict(value)
