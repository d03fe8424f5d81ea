"""What the client hands back: plain frozen dataclasses, never protobuf messages.

Durations are float seconds, timestamps timezone-aware UTC datetimes (None when
the server left them unset), and enums are `StrEnum`s, so `result.state ==
"succeeded"` and `queue(..., priority="high")` both work.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


class Priority(enum.StrEnum):
    """How urgently a task should run; higher priorities always leave the queue first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


class TaskState(enum.StrEnum):
    """Where a task is in its life; QUEUED and RUNNING are live, the rest terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNSPECIFIED = "unspecified"
    """The server sent no state, or one this client does not know."""

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


class ErrorCode(enum.StrEnum):
    """The machine-readable reason a task did not succeed."""

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
    """Dead letter: the server died while running the task, server.max_crashes times in
    a row; it does not run again unless requeued."""
    UNSPECIFIED = "unspecified"
    """The server sent no code, or one this client does not know."""


class ProgressKind(enum.StrEnum):
    """What kind of step a task took on its way to a result."""

    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    FAILED_OVER = "failed_over"
    UNSPECIFIED = "unspecified"
    """The server sent a kind this client does not know."""


class BreakerState(enum.StrEnum):
    """A provider's circuit breaker: CLOSED lets calls through, OPEN refuses them,
    HALF_OPEN lets a few probes through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    UNSPECIFIED = "unspecified"
    """Not reported (the server's breakers are disabled), or a state this client does not know."""


class HealthLevel(enum.StrEnum):
    """How well a provider is doing, from health checks and recent calls."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    UNAVAILABLE = "unavailable"
    """Several checks in a row failed; the provider gets no traffic until it recovers."""
    UNSPECIFIED = "unspecified"
    """Not known yet, or a level this client does not know."""


class ProviderEventKind(enum.StrEnum):
    """What happened to a provider."""

    FAILOVER = "failover"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_HALF_OPEN = "breaker_half_open"
    RECOVERED = "recovered"
    FAILBACK = "failback"
    HEALTH_CHANGED = "health_changed"
    PAUSED = "paused"
    ALL_PROVIDERS_DOWN = "all_providers_down"
    UNSPECIFIED = "unspecified"
    """The server sent a kind this client does not know."""


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """The answer to `queue`: the task's id and its state right after the call."""

    task_id: str
    state: TaskState
    deduplicated: bool = False
    """True when an earlier task with the same idempotency key was returned instead."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens a provider reported for one task, summed over its attempts."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task did not succeed: a code for programs, a message for people."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One provider call made for a task."""

    provider: str
    started_at: datetime | None = None
    duration: float = 0.0
    """Seconds the call took."""
    error: TaskError | None = None
    """Why the call failed; None when it succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    """The outcome of one task."""

    task_id: str
    url: str = ""
    success: bool = False
    enhanced_content: str = ""
    """The model's answer; empty unless success."""
    error: TaskError | None = None
    """Why the task failed; None when success."""
    provider: str = ""
    model: str = ""
    attempts: int = 0
    usage: TokenUsage = TokenUsage()
    queue_time: float = 0.0
    """Seconds from acceptance to the start of processing."""
    processing_time: float = 0.0
    """Seconds from the start of processing to the result."""
    trace_id: str = ""
    state: TaskState = TaskState.UNSPECIFIED
    completed_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    history: tuple[Attempt, ...] = ()
    """Every provider call made for the task, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressEvent:
    """One step in a task's processing (only on streams opened with include_progress)."""

    task_id: str
    kind: ProgressKind
    at: datetime | None = None
    attempt: int = 0
    """The attempt (1-based) the event refers to; 0 for QUEUED."""
    provider: str = ""
    message: str = ""
    backoff: float | None = None
    """Seconds before the next attempt, for RETRYING; None when the server sent none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """What was asked of a task, as GetTask reports it."""

    url: str
    content: str
    priority: Priority = Priority.NORMAL
    timeout: float | None = None
    """Seconds the task may be processed; None means the server's worker_timeout."""
    instructions: str = ""
    model: str = ""
    idempotency_key: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    max_retries: int | None = None
    """Retries after retryable provider errors; None means the server's processor.max_retries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskInfo:
    """Everything the server knows about one task."""

    task_id: str
    state: TaskState
    spec: TaskSpec
    created_at: datetime | None = None
    started_at: datetime | None = None
    """None while queued."""
    finished_at: datetime | None = None
    """None until terminal."""
    attempts: int = 0
    result: TaskResult | None = None
    """The result, once the task is terminal."""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many tasks wait at one priority."""

    priority: Priority
    depth: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Counters:
    """Totals since the server started."""

    queued: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failovers: int = 0
    """Attempts moved to another provider after a failure."""
    rate_limit_waits: int = 0
    """Provider calls that waited for a rate limit or a provider's Retry-After pause."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySummary:
    """Percentiles, in seconds, of a duration over the most recent `samples` tasks."""

    samples: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderStats:
    """The state of one configured provider."""

    name: str
    kind: str = ""
    model: str = ""
    enabled: bool = True
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    average_latency: float = 0.0
    """Seconds, a moving average over successful calls."""
    state: str = ""
    """Its overall state in a word: "available", "paused", "open", "half_open",
    "unavailable" or "disabled"."""
    breaker_state: BreakerState = BreakerState.UNSPECIFIED
    health: HealthLevel = HealthLevel.UNSPECIFIED
    paused_for: float = 0.0
    """Seconds left of a pause the provider asked for (Retry-After); 0 when not paused."""
    error_rate: float = 0.0
    """Share of recent calls that failed, 0 to 1."""
    priority: int = 0
    """Lower is preferred."""
    max_concurrent_requests: int = 0
    rate_limited: int = 0
    """Answers that were rate limits (HTTP 429 and the like)."""


@dataclass(frozen=True, slots=True)
class EventCount:
    """How many provider events of one kind happened since the server started."""

    kind: ProviderEventKind
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderEvent:
    """Something that happened to a provider, as `watch_events` delivers it."""

    kind: ProviderEventKind
    at: datetime | None = None
    provider: str = ""
    """The provider concerned; for FAILOVER, the one that failed."""
    to_provider: str = ""
    """For FAILOVER: the provider the next attempt goes to."""
    reason: str = ""
    downtime: float = 0.0
    """For RECOVERED: seconds the provider was out."""
    health: HealthLevel = HealthLevel.UNSPECIFIED
    """For HEALTH_CHANGED: the new level."""
    task_id: str = ""
    """For FAILOVER: the task whose attempt moved."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """Queue, worker, counter, latency and provider statistics of the server."""

    queue_size: int = 0
    queue_capacity: int = 0
    queue_depths: tuple[QueueDepth, ...] = ()
    """Per priority, highest first."""
    active_workers: int = 0
    total_workers: int = 0
    is_running: bool = True
    counters: Counters = Counters()
    queue_latency: LatencySummary = LatencySummary()
    processing_latency: LatencySummary = LatencySummary()
    providers: tuple[ProviderStats, ...] = ()
    """In the server's priority order."""
    subscribers: int = 0
    undelivered_results: int = 0
    started_at: datetime | None = None
    event_counts: tuple[EventCount, ...] = ()
    """Provider events since start, by kind."""
