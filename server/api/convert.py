"""Protobuf <-> domain conversion, with validation of everything a caller sends.

Every problem with a request raises InvalidArgument naming the field as the
caller spelled it in the proto (e.g. `task.url`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from aiproc.server.core.errors import InvalidArgument
from aiproc.server.core.events import EventKind, ProviderEvent
from aiproc.server.core.models import (
    ErrorCode,
    Priority,
    ProgressEvent,
    ProgressKind,
    Task,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskState,
)
from aiproc.server.core.stats import LatencySummary, ProcessorStats
from aiproc.v1 import processor_service_pb2 as service_pb
from aiproc.v1 import task_pb2 as task_pb

MAX_URL_LENGTH = 8192
MAX_TEXT_FIELD = 65_536
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 256
MAX_METADATA_VALUE = 4096
MAX_ID_LENGTH = 128
MAX_TASK_RETRIES = 20
_IDEMPOTENCY_MAX = 256
_TASK_ID_RE = re.compile(r"^[0-9a-f]{32}$")

_PRIORITY_FROM_PB = {
    task_pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    task_pb.PRIORITY_LOW: Priority.LOW,
    task_pb.PRIORITY_NORMAL: Priority.NORMAL,
    task_pb.PRIORITY_HIGH: Priority.HIGH,
    task_pb.PRIORITY_CRITICAL: Priority.CRITICAL,
}
_PRIORITY_TO_PB = {
    Priority.LOW: task_pb.PRIORITY_LOW,
    Priority.NORMAL: task_pb.PRIORITY_NORMAL,
    Priority.HIGH: task_pb.PRIORITY_HIGH,
    Priority.CRITICAL: task_pb.PRIORITY_CRITICAL,
}
_STATE_TO_PB = {
    TaskState.QUEUED: task_pb.TASK_STATE_QUEUED,
    TaskState.RUNNING: task_pb.TASK_STATE_RUNNING,
    TaskState.SUCCEEDED: task_pb.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: task_pb.TASK_STATE_FAILED,
    TaskState.CANCELLED: task_pb.TASK_STATE_CANCELLED,
}
_ERROR_TO_PB = {
    ErrorCode.INVALID_REQUEST: task_pb.ERROR_CODE_INVALID_REQUEST,
    ErrorCode.AUTHENTICATION: task_pb.ERROR_CODE_AUTHENTICATION,
    ErrorCode.RATE_LIMITED: task_pb.ERROR_CODE_RATE_LIMITED,
    ErrorCode.TRANSIENT: task_pb.ERROR_CODE_TRANSIENT,
    ErrorCode.TIMEOUT: task_pb.ERROR_CODE_TIMEOUT,
    ErrorCode.ALL_PROVIDERS_FAILED: task_pb.ERROR_CODE_ALL_PROVIDERS_FAILED,
    ErrorCode.CANCELLED: task_pb.ERROR_CODE_CANCELLED,
    ErrorCode.SHUTDOWN: task_pb.ERROR_CODE_SHUTDOWN,
    ErrorCode.INTERNAL: task_pb.ERROR_CODE_INTERNAL,
    ErrorCode.BAD_RESPONSE: task_pb.ERROR_CODE_BAD_RESPONSE,
    ErrorCode.CRASHED: task_pb.ERROR_CODE_CRASHED,
}
_PROGRESS_TO_PB = {
    ProgressKind.QUEUED: service_pb.PROGRESS_KIND_QUEUED,
    ProgressKind.STARTED: service_pb.PROGRESS_KIND_STARTED,
    ProgressKind.RETRYING: service_pb.PROGRESS_KIND_RETRYING,
    ProgressKind.FAILED_OVER: service_pb.PROGRESS_KIND_FAILED_OVER,
}

_BREAKER_TO_PB = {
    "": service_pb.BREAKER_STATE_UNSPECIFIED,
    "closed": service_pb.BREAKER_STATE_CLOSED,
    "open": service_pb.BREAKER_STATE_OPEN,
    "half_open": service_pb.BREAKER_STATE_HALF_OPEN,
}
_HEALTH_TO_PB = {
    "": service_pb.HEALTH_LEVEL_UNSPECIFIED,
    "healthy": service_pb.HEALTH_LEVEL_HEALTHY,
    "degraded": service_pb.HEALTH_LEVEL_DEGRADED,
    "critical": service_pb.HEALTH_LEVEL_CRITICAL,
    "unavailable": service_pb.HEALTH_LEVEL_UNAVAILABLE,
}
_EVENT_TO_PB = {
    EventKind.FAILOVER: service_pb.PROVIDER_EVENT_KIND_FAILOVER,
    EventKind.BREAKER_OPENED: service_pb.PROVIDER_EVENT_KIND_BREAKER_OPENED,
    EventKind.BREAKER_HALF_OPEN: service_pb.PROVIDER_EVENT_KIND_BREAKER_HALF_OPEN,
    EventKind.RECOVERED: service_pb.PROVIDER_EVENT_KIND_RECOVERED,
    EventKind.FAILBACK: service_pb.PROVIDER_EVENT_KIND_FAILBACK,
    EventKind.HEALTH_CHANGED: service_pb.PROVIDER_EVENT_KIND_HEALTH_CHANGED,
    EventKind.PAUSED: service_pb.PROVIDER_EVENT_KIND_PAUSED,
    EventKind.ALL_PROVIDERS_DOWN: service_pb.PROVIDER_EVENT_KIND_ALL_PROVIDERS_DOWN,
}


def _check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters")


def _url(url: str) -> str:
    if not url:
        raise InvalidArgument("task.url", "required")
    _check_text(url, "task.url", MAX_URL_LENGTH)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise InvalidArgument("task.url", "not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("task.url", "must be an absolute http or https URL")
    if any(ch.isspace() for ch in url):
        raise InvalidArgument("task.url", "must not contain whitespace")
    return url


def _timeout(request: task_pb.TaskSpec) -> float | None:
    if not request.HasField("timeout"):
        return None
    duration = request.timeout
    if duration.seconds < 0 or duration.nanos < 0:
        raise InvalidArgument("task.timeout", "must not be negative")
    if duration.nanos >= 1_000_000_000:
        raise InvalidArgument("task.timeout", "nanos must be below 1e9")
    seconds = duration.seconds + duration.nanos / 1e9
    return seconds if seconds > 0 else None


def spec_from_pb(request: service_pb.QueueTaskRequest, max_content_bytes: int) -> TaskSpec:
    """Validates a QueueTaskRequest into a TaskSpec; raises InvalidArgument naming the field."""
    if not request.HasField("task"):
        raise InvalidArgument("task", "required")
    pb = request.task
    content = pb.content  # each read of a string field makes a new str
    if not content or content.isspace():
        raise InvalidArgument("task.content", "required and must not be blank")
    # UTF-8 takes 1 to 4 bytes a character: encode only when the count cannot tell.
    if len(content) * 4 > max_content_bytes:
        size = len(content.encode("utf-8"))
        if size > max_content_bytes:
            raise InvalidArgument(
                "task.content", f"{size} bytes is over the limit of {max_content_bytes} bytes"
            )
    if pb.priority not in _PRIORITY_FROM_PB:
        raise InvalidArgument("task.priority", f"unknown value {pb.priority}")
    _check_text(pb.instructions, "task.instructions", MAX_TEXT_FIELD)
    _check_text(pb.model, "task.model", MAX_ID_LENGTH)
    _check_text(pb.idempotency_key, "task.idempotency_key", _IDEMPOTENCY_MAX)
    if len(pb.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("task.metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in pb.metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise InvalidArgument("task.metadata", f"keys must be 1-{MAX_METADATA_KEY} characters")
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidArgument(
                f"task.metadata[{key}]", f"at most {MAX_METADATA_VALUE} characters"
            )
    max_retries = pb.max_retries if pb.HasField("max_retries") else None
    if max_retries is not None and max_retries > MAX_TASK_RETRIES:
        raise InvalidArgument("task.max_retries", f"at most {MAX_TASK_RETRIES}")
    return TaskSpec(
        max_retries=max_retries,
        url=_url(pb.url),
        content=content,
        priority=_PRIORITY_FROM_PB[pb.priority],
        timeout=_timeout(pb),
        instructions=pb.instructions,
        model=pb.model,
        idempotency_key=pb.idempotency_key,
        metadata=dict(pb.metadata),
    )


def task_id_from_pb(task_id: str, field: str = "task_id") -> str:
    """Checks a task id's shape, so garbage never reaches the store."""
    if not task_id:
        raise InvalidArgument(field, "required")
    if not _TASK_ID_RE.match(task_id):
        raise InvalidArgument(field, "not a task id (32 lowercase hex digits)")
    return task_id


def duration_pb(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def timestamp_pb(epoch_seconds: float) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromNanoseconds(round(epoch_seconds * 1e9))
    return timestamp


def state_pb(state: TaskState) -> task_pb.TaskState.ValueType:
    return _STATE_TO_PB[state]


_STATE_FROM_PB = {pb: state for state, pb in _STATE_TO_PB.items()}


def state_from_pb(value: int, field: str) -> TaskState | None:
    """A TaskState from the wire; UNSPECIFIED means None (any state)."""
    if value == task_pb.TASK_STATE_UNSPECIFIED:
        return None
    if value not in _STATE_FROM_PB:
        raise InvalidArgument(field, f"unknown value {value}")
    return _STATE_FROM_PB[value]  # type: ignore[index]


def result_pb(result: TaskResult) -> task_pb.TaskResult:
    pb = task_pb.TaskResult(
        task_id=result.task_id,
        url=result.url,
        success=result.success,
        enhanced_content=result.enhanced_content,
        provider=result.provider,
        model=result.model,
        attempts=result.attempts,
        usage=task_pb.TokenUsage(
            input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens
        ),
        queue_time=duration_pb(result.queue_time),
        processing_time=duration_pb(result.processing_time),
        trace_id=result.trace_id,
        state=_STATE_TO_PB[result.state],
        completed_at=timestamp_pb(result.completed_at),
        metadata=dict(result.metadata),
    )
    if result.error is not None:
        pb.error.CopyFrom(_error_pb(result.error))
    for attempt in result.history:
        record = pb.history.add(
            provider=attempt.provider,
            started_at=timestamp_pb(attempt.started_at),
            duration=duration_pb(attempt.duration),
        )
        if attempt.error is not None:
            record.error.CopyFrom(_error_pb(attempt.error))
    return pb


def _error_pb(error: TaskError) -> task_pb.TaskError:
    return task_pb.TaskError(code=_ERROR_TO_PB[error.code], message=error.message)


def progress_pb(event: ProgressEvent) -> service_pb.ProgressEvent:
    return service_pb.ProgressEvent(
        task_id=event.task_id,
        kind=_PROGRESS_TO_PB[event.kind],
        at=timestamp_pb(event.at),
        attempt=event.attempt,
        provider=event.provider,
        message=event.message,
        backoff=duration_pb(event.backoff),
    )


def spec_pb(spec: TaskSpec) -> task_pb.TaskSpec:
    pb = task_pb.TaskSpec(
        url=spec.url,
        content=spec.content,
        priority=_PRIORITY_TO_PB[spec.priority],
        instructions=spec.instructions,
        model=spec.model,
        idempotency_key=spec.idempotency_key,
        metadata=dict(spec.metadata),
    )
    if spec.timeout is not None:
        pb.timeout.CopyFrom(duration_pb(spec.timeout))
    if spec.max_retries is not None:
        pb.max_retries = spec.max_retries
    return pb


def task_pb_from(task: Task) -> task_pb.Task:
    pb = task_pb.Task(
        task_id=task.task_id,
        state=_STATE_TO_PB[task.state],
        spec=spec_pb(task.spec),
        created_at=timestamp_pb(task.created_at),
        attempts=task.attempts,
    )
    if task.started_at is not None:
        pb.started_at.CopyFrom(timestamp_pb(task.started_at))
    if task.finished_at is not None:
        pb.finished_at.CopyFrom(timestamp_pb(task.finished_at))
    if task.result is not None:
        pb.result.CopyFrom(result_pb(task.result))
    return pb


def _latency_pb(summary: LatencySummary) -> service_pb.LatencySummary:
    return service_pb.LatencySummary(
        samples=summary.samples,
        p50=duration_pb(summary.p50),
        p90=duration_pb(summary.p90),
        p99=duration_pb(summary.p99),
        max=duration_pb(summary.max),
    )


def stats_pb(stats: ProcessorStats) -> service_pb.StatsResponse:
    c = stats.counters
    return service_pb.StatsResponse(
        queue_size=stats.queue_size,
        queue_capacity=stats.queue_capacity,
        queue_depths=[
            service_pb.QueueDepth(priority=_PRIORITY_TO_PB[p], depth=d)
            for p, d in stats.queue_depths.items()
        ],
        active_workers=stats.active_workers,
        total_workers=stats.total_workers,
        is_running=stats.is_running,
        counters=service_pb.Counters(
            queued=c.queued,
            completed=c.completed,
            failed=c.failed,
            retried=c.retried,
            rejected=c.rejected,
            cancelled=c.cancelled,
            timed_out=c.timed_out,
            failovers=c.failovers,
            rate_limit_waits=c.rate_limit_waits,
        ),
        queue_latency=_latency_pb(stats.queue_latency),
        processing_latency=_latency_pb(stats.processing_latency),
        providers=[
            service_pb.ProviderStats(
                name=p.name,
                kind=p.kind,
                model=p.model,
                enabled=p.enabled,
                in_flight=p.in_flight,
                requests=p.requests,
                failures=p.failures,
                average_latency=duration_pb(p.average_latency),
                state=p.state,
                breaker_state=_BREAKER_TO_PB[p.breaker_state],
                health=_HEALTH_TO_PB[p.health],
                paused_for=duration_pb(p.paused_for),
                error_rate=p.error_rate,
                priority=p.priority,
                max_concurrent_requests=p.max_concurrent_requests,
                rate_limited=p.rate_limited,
            )
            for p in stats.providers
        ],
        event_counts=[
            service_pb.EventCount(kind=_EVENT_TO_PB[EventKind(kind)], count=count)
            for kind, count in sorted(stats.event_counts.items())
        ],
        subscribers=stats.subscribers,
        undelivered_results=stats.undelivered_results,
        started_at=timestamp_pb(stats.started_at),
    )


def event_pb(event: ProviderEvent) -> service_pb.ProviderEvent:
    return service_pb.ProviderEvent(
        kind=_EVENT_TO_PB[event.kind],
        at=timestamp_pb(event.at),
        provider=event.provider,
        to_provider=event.to_provider,
        reason=event.reason,
        downtime=duration_pb(event.downtime),
        health=_HEALTH_TO_PB[event.health],
        task_id=event.task_id,
    )
