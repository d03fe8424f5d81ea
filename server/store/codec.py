"""JSON for specs and results, shared by every durable store (SQLite, Redis).

Explicit, field by field, with enums by value, so a stored document does not
change shape when a dataclass gains a field or an enum is renamed, and both
stores read exactly what the other would write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiproc.server.core.models import (
    AttemptRecord,
    ErrorCode,
    Priority,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskState,
    TokenUsage,
)

__all__ = [
    "dumps",
    "error_from_json",
    "error_to_json",
    "result_from_json",
    "result_to_json",
    "spec_from_json",
    "spec_to_json",
]

# One encoder for all: json.dumps with options builds a new one on every call.
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""Compact JSON text of a value built by the *_to_json functions."""


def spec_to_json(spec: TaskSpec) -> dict[str, object]:
    return {
        "url": spec.url,
        "content": spec.content,
        "priority": spec.priority.value,
        "timeout": spec.timeout,
        "instructions": spec.instructions,
        "model": spec.model,
        "idempotency_key": spec.idempotency_key,
        "metadata": dict(spec.metadata),
        "max_retries": spec.max_retries,
    }


def spec_from_json(data: Mapping[str, Any]) -> TaskSpec:
    return TaskSpec(
        url=data["url"],
        content=data["content"],
        priority=Priority(data["priority"]),
        timeout=data["timeout"],
        instructions=data["instructions"],
        model=data["model"],
        idempotency_key=data["idempotency_key"],
        metadata=data["metadata"],
        max_retries=data["max_retries"],
    )


def result_to_json(result: TaskResult) -> dict[str, object]:
    return {
        "task_id": result.task_id,
        "client_id": result.client_id,
        "url": result.url,
        "state": result.state.value,
        "enhanced_content": result.enhanced_content,
        "error": error_to_json(result.error),
        "provider": result.provider,
        "model": result.model,
        "attempts": result.attempts,
        "usage": [result.usage.input_tokens, result.usage.output_tokens],
        "queue_time": result.queue_time,
        "processing_time": result.processing_time,
        "trace_id": result.trace_id,
        "completed_at": result.completed_at,
        "metadata": dict(result.metadata),
        "history": [
            [a.provider, a.started_at, a.duration, error_to_json(a.error)] for a in result.history
        ],
    }


def result_from_json(data: Mapping[str, Any]) -> TaskResult:
    input_tokens, output_tokens = data["usage"]
    return TaskResult(
        task_id=data["task_id"],
        client_id=data["client_id"],
        url=data["url"],
        state=TaskState(data["state"]),
        enhanced_content=data["enhanced_content"],
        error=error_from_json(data["error"]),
        provider=data["provider"],
        model=data["model"],
        attempts=data["attempts"],
        usage=TokenUsage(input_tokens, output_tokens),
        queue_time=data["queue_time"],
        processing_time=data["processing_time"],
        trace_id=data["trace_id"],
        completed_at=data["completed_at"],
        metadata=data["metadata"],
        history=tuple(
            AttemptRecord(provider, started_at, duration, error_from_json(error))
            for provider, started_at, duration, error in data["history"]
        ),
    )


def error_to_json(error: TaskError | None) -> list[str] | None:
    return None if error is None else [error.code.value, error.message]


def error_from_json(data: Sequence[str] | None) -> TaskError | None:
    return None if data is None else TaskError(ErrorCode(data[0]), data[1])
