"""The Python client of aiproc: queue content, receive LLM-enhanced results.

    async with AsyncClient("127.0.0.1:50051") as client:   # token=..., ca=... when secured
        queued = await client.queue("https://example.com/a", text)
        result = await client.wait(queued.task_id, timeout=60)

        async with client.watch_events() as events:   # failovers, breakers, health
            async for event in events:
                print(event.kind, event.provider, event.reason)

`Client` offers the same calls, blocking. Every call returns frozen
dataclasses from `aiproc.client.models` and raises `AiprocClientError`
subclasses from `aiproc.client.errors`.
"""

from aiproc.client.async_client import AsyncClient
from aiproc.client.errors import (
    AiprocClientError,
    AuthenticationError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDeniedError,
    QueueFull,
    Unavailable,
)
from aiproc.client.events import EventStream
from aiproc.client.jsonout import to_json
from aiproc.client.models import (
    Attempt,
    BreakerState,
    Counters,
    ErrorCode,
    EventCount,
    HealthLevel,
    LatencySummary,
    Priority,
    ProgressEvent,
    ProgressKind,
    ProviderEvent,
    ProviderEventKind,
    ProviderStats,
    QueueDepth,
    QueuedTask,
    Stats,
    TaskError,
    TaskInfo,
    TaskResult,
    TaskSpec,
    TaskState,
    TokenUsage,
)
from aiproc.client.stream import ResultStream
from aiproc.client.sync_client import BlockingEventStream, Client

__all__ = [
    "AiprocClientError",
    "AsyncClient",
    "Attempt",
    "AuthenticationError",
    "BlockingEventStream",
    "BreakerState",
    "Client",
    "Counters",
    "DeadlineExceeded",
    "ErrorCode",
    "EventCount",
    "EventStream",
    "FailedPrecondition",
    "HealthLevel",
    "InvalidArgument",
    "LatencySummary",
    "NotFound",
    "PermissionDeniedError",
    "Priority",
    "ProgressEvent",
    "ProgressKind",
    "ProviderEvent",
    "ProviderEventKind",
    "ProviderStats",
    "QueueDepth",
    "QueueFull",
    "QueuedTask",
    "ResultStream",
    "Stats",
    "TaskError",
    "TaskInfo",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "TokenUsage",
    "Unavailable",
    "to_json",
]
