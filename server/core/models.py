"""The domain objects of a task's life: what was asked, where it is, how it ended.

These are plain dataclasses; protobuf types never reach past `aiproc.server.api`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Higher values leave the queue first."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


class TaskState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.RUNNING)


class ErrorCode(enum.Enum):
    """Why a task did not succeed; mirrors `aiproc.v1.ErrorCode`."""

    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    ALL_PROVIDERS_FAILED = "all_providers_failed"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"
    BAD_RESPONSE = "bad_response"
    CRASHED = "crashed"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a caller asked for, already validated by the API layer."""

    url: str
    content: str
    priority: Priority = Priority.NORMAL
    timeout: float | None = None
    """Seconds; None means the server's worker_timeout (which also caps it)."""
    instructions: str = ""
    model: str = ""
    idempotency_key: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    max_retries: int | None = None
    """Replaces processor.max_retries for this task when set."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class TaskError:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One provider call made for a task."""

    provider: str
    started_at: float
    """Wall-clock seconds since the epoch."""
    duration: float
    error: TaskError | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one task, delivered to subscribers until acknowledged."""

    task_id: str
    client_id: str
    url: str
    state: TaskState
    enhanced_content: str = ""
    error: TaskError | None = None
    provider: str = ""
    model: str = ""
    attempts: int = 0
    usage: TokenUsage = TokenUsage()
    queue_time: float = 0.0
    """Seconds from acceptance to the start of processing."""
    processing_time: float = 0.0
    """Seconds from the start of processing to this result."""
    trace_id: str = ""
    completed_at: float = 0.0
    """Wall-clock seconds since the epoch."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    history: tuple[AttemptRecord, ...] = ()

    @property
    def success(self) -> bool:
        return self.state is TaskState.SUCCEEDED


@dataclass(slots=True)
class Task:
    """One task's record. Owned by the store; mutated only through it."""

    task_id: str
    client_id: str
    spec: TaskSpec
    created_at: float
    """Wall-clock seconds since the epoch."""
    state: TaskState = TaskState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: TaskResult | None = None
    sequence: int = 0
    """Acceptance order, for FIFO within a priority level."""
    trace_context: Mapping[str, str] = field(default_factory=dict)
    """The W3C trace context (traceparent, tracestate) the task was queued in."""
    crashes: int = 0
    """Times the process running it died; past server.max_crashes it is dead-lettered."""


class ProgressKind(enum.Enum):
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    FAILED_OVER = "failed_over"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    task_id: str
    client_id: str
    kind: ProgressKind
    at: float
    """Wall-clock seconds since the epoch."""
    attempt: int = 0
    provider: str = ""
    message: str = ""
    backoff: float = 0.0
    """Seconds before the next attempt, for RETRYING."""
