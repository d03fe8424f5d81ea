"""Protobuf <-> dataclass converters, so that protobuf types stop at the client's edge.

Both directions exist so that a dataclass can be printed in protobuf's JSON
mapping (`aiproc.client.jsonout`) exactly as the server sent it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

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
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import task_pb2

_K = TypeVar("_K")
_V = TypeVar("_V")

_PRIORITY_TO_PB = {
    Priority.LOW: task_pb2.PRIORITY_LOW,
    Priority.NORMAL: task_pb2.PRIORITY_NORMAL,
    Priority.HIGH: task_pb2.PRIORITY_HIGH,
    Priority.CRITICAL: task_pb2.PRIORITY_CRITICAL,
}
_STATE_TO_PB = {
    TaskState.UNSPECIFIED: task_pb2.TASK_STATE_UNSPECIFIED,
    TaskState.QUEUED: task_pb2.TASK_STATE_QUEUED,
    TaskState.RUNNING: task_pb2.TASK_STATE_RUNNING,
    TaskState.SUCCEEDED: task_pb2.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: task_pb2.TASK_STATE_FAILED,
    TaskState.CANCELLED: task_pb2.TASK_STATE_CANCELLED,
}
_ERROR_TO_PB = {
    ErrorCode.UNSPECIFIED: task_pb2.ERROR_CODE_UNSPECIFIED,
    ErrorCode.INVALID_REQUEST: task_pb2.ERROR_CODE_INVALID_REQUEST,
    ErrorCode.AUTHENTICATION: task_pb2.ERROR_CODE_AUTHENTICATION,
    ErrorCode.RATE_LIMITED: task_pb2.ERROR_CODE_RATE_LIMITED,
    ErrorCode.TRANSIENT: task_pb2.ERROR_CODE_TRANSIENT,
    ErrorCode.TIMEOUT: task_pb2.ERROR_CODE_TIMEOUT,
    ErrorCode.ALL_PROVIDERS_FAILED: task_pb2.ERROR_CODE_ALL_PROVIDERS_FAILED,
    ErrorCode.CANCELLED: task_pb2.ERROR_CODE_CANCELLED,
    ErrorCode.SHUTDOWN: task_pb2.ERROR_CODE_SHUTDOWN,
    ErrorCode.INTERNAL: task_pb2.ERROR_CODE_INTERNAL,
    ErrorCode.BAD_RESPONSE: task_pb2.ERROR_CODE_BAD_RESPONSE,
    ErrorCode.CRASHED: task_pb2.ERROR_CODE_CRASHED,
}
_PROGRESS_TO_PB = {
    ProgressKind.UNSPECIFIED: pb.PROGRESS_KIND_UNSPECIFIED,
    ProgressKind.QUEUED: pb.PROGRESS_KIND_QUEUED,
    ProgressKind.STARTED: pb.PROGRESS_KIND_STARTED,
    ProgressKind.RETRYING: pb.PROGRESS_KIND_RETRYING,
    ProgressKind.FAILED_OVER: pb.PROGRESS_KIND_FAILED_OVER,
}
_BREAKER_TO_PB = {
    BreakerState.UNSPECIFIED: pb.BREAKER_STATE_UNSPECIFIED,
    BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN,
}
_HEALTH_TO_PB = {
    HealthLevel.UNSPECIFIED: pb.HEALTH_LEVEL_UNSPECIFIED,
    HealthLevel.HEALTHY: pb.HEALTH_LEVEL_HEALTHY,
    HealthLevel.DEGRADED: pb.HEALTH_LEVEL_DEGRADED,
    HealthLevel.CRITICAL: pb.HEALTH_LEVEL_CRITICAL,
    HealthLevel.UNAVAILABLE: pb.HEALTH_LEVEL_UNAVAILABLE,
}
_EVENT_TO_PB = {
    ProviderEventKind.UNSPECIFIED: pb.PROVIDER_EVENT_KIND_UNSPECIFIED,
    ProviderEventKind.FAILOVER: pb.PROVIDER_EVENT_KIND_FAILOVER,
    ProviderEventKind.BREAKER_OPENED: pb.PROVIDER_EVENT_KIND_BREAKER_OPENED,
    ProviderEventKind.BREAKER_HALF_OPEN: pb.PROVIDER_EVENT_KIND_BREAKER_HALF_OPEN,
    ProviderEventKind.RECOVERED: pb.PROVIDER_EVENT_KIND_RECOVERED,
    ProviderEventKind.FAILBACK: pb.PROVIDER_EVENT_KIND_FAILBACK,
    ProviderEventKind.HEALTH_CHANGED: pb.PROVIDER_EVENT_KIND_HEALTH_CHANGED,
    ProviderEventKind.PAUSED: pb.PROVIDER_EVENT_KIND_PAUSED,
    ProviderEventKind.ALL_PROVIDERS_DOWN: pb.PROVIDER_EVENT_KIND_ALL_PROVIDERS_DOWN,
}


def _invert(table: Mapping[_K, _V]) -> dict[_V, _K]:
    return {value: key for key, value in table.items()}


# Values a newer server may add map to UNSPECIFIED rather than failing the call;
# an unset priority means NORMAL by contract.
_PRIORITY_FROM_PB = _invert(_PRIORITY_TO_PB)
_STATE_FROM_PB = _invert(_STATE_TO_PB)
_ERROR_FROM_PB = _invert(_ERROR_TO_PB)
_PROGRESS_FROM_PB = _invert(_PROGRESS_TO_PB)
_BREAKER_FROM_PB = _invert(_BREAKER_TO_PB)
_HEALTH_FROM_PB = _invert(_HEALTH_TO_PB)
_EVENT_FROM_PB = _invert(_EVENT_TO_PB)


def priority_to_proto(priority: Priority) -> task_pb2.Priority.ValueType:
    return _PRIORITY_TO_PB[priority]


def priority_from_proto(value: task_pb2.Priority.ValueType) -> Priority:
    return _PRIORITY_FROM_PB.get(value, Priority.NORMAL)


def state_to_proto(state: TaskState) -> task_pb2.TaskState.ValueType:
    return _STATE_TO_PB[state]


def state_from_proto(value: task_pb2.TaskState.ValueType) -> TaskState:
    return _STATE_FROM_PB.get(value, TaskState.UNSPECIFIED)


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _datetime(timestamp: timestamp_pb2.Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def _error_from_proto(message: task_pb2.TaskError) -> TaskError:
    return TaskError(
        code=_ERROR_FROM_PB.get(message.code, ErrorCode.UNSPECIFIED), message=message.message
    )


def _error_to_proto(error: TaskError) -> task_pb2.TaskError:
    return task_pb2.TaskError(code=_ERROR_TO_PB[error.code], message=error.message)


def spec_to_proto(spec: TaskSpec) -> task_pb2.TaskSpec:
    message = task_pb2.TaskSpec(
        url=spec.url,
        content=spec.content,
        priority=priority_to_proto(spec.priority),
        instructions=spec.instructions,
        model=spec.model,
        idempotency_key=spec.idempotency_key,
        metadata=dict(spec.metadata),
    )
    if spec.timeout is not None:
        message.timeout.CopyFrom(_duration(spec.timeout))
    if spec.max_retries is not None:
        message.max_retries = spec.max_retries
    return message


def spec_from_proto(message: task_pb2.TaskSpec) -> TaskSpec:
    return TaskSpec(
        url=message.url,
        content=message.content,
        priority=priority_from_proto(message.priority),
        timeout=_seconds(message.timeout) if message.HasField("timeout") else None,
        instructions=message.instructions,
        model=message.model,
        idempotency_key=message.idempotency_key,
        metadata=dict(message.metadata),
        max_retries=message.max_retries if message.HasField("max_retries") else None,
    )


def queued_from_proto(message: pb.QueueTaskResponse) -> QueuedTask:
    return QueuedTask(
        task_id=message.task_id,
        state=state_from_proto(message.state),
        deduplicated=message.deduplicated,
    )


def queued_to_proto(queued: QueuedTask) -> pb.QueueTaskResponse:
    return pb.QueueTaskResponse(
        task_id=queued.task_id,
        state=state_to_proto(queued.state),
        deduplicated=queued.deduplicated,
    )


def _attempt_from_proto(message: task_pb2.Attempt) -> Attempt:
    return Attempt(
        provider=message.provider,
        started_at=_datetime(message.started_at) if message.HasField("started_at") else None,
        duration=_seconds(message.duration),
        error=_error_from_proto(message.error) if message.HasField("error") else None,
    )


def _attempt_to_proto(attempt: Attempt) -> task_pb2.Attempt:
    message = task_pb2.Attempt(provider=attempt.provider, duration=_duration(attempt.duration))
    if attempt.started_at is not None:
        message.started_at.CopyFrom(_timestamp(attempt.started_at))
    if attempt.error is not None:
        message.error.CopyFrom(_error_to_proto(attempt.error))
    return message


def result_from_proto(message: task_pb2.TaskResult) -> TaskResult:
    return TaskResult(
        task_id=message.task_id,
        url=message.url,
        success=message.success,
        enhanced_content=message.enhanced_content,
        error=_error_from_proto(message.error) if message.HasField("error") else None,
        provider=message.provider,
        model=message.model,
        attempts=message.attempts,
        usage=TokenUsage(message.usage.input_tokens, message.usage.output_tokens),
        queue_time=_seconds(message.queue_time),
        processing_time=_seconds(message.processing_time),
        trace_id=message.trace_id,
        state=state_from_proto(message.state),
        completed_at=_datetime(message.completed_at) if message.HasField("completed_at") else None,
        metadata=dict(message.metadata),
        history=tuple(_attempt_from_proto(attempt) for attempt in message.history),
    )


def result_to_proto(result: TaskResult) -> task_pb2.TaskResult:
    message = task_pb2.TaskResult(
        task_id=result.task_id,
        url=result.url,
        success=result.success,
        enhanced_content=result.enhanced_content,
        provider=result.provider,
        model=result.model,
        attempts=result.attempts,
        usage=task_pb2.TokenUsage(
            input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens
        ),
        queue_time=_duration(result.queue_time),
        processing_time=_duration(result.processing_time),
        trace_id=result.trace_id,
        state=state_to_proto(result.state),
        metadata=dict(result.metadata),
        history=[_attempt_to_proto(attempt) for attempt in result.history],
    )
    if result.error is not None:
        message.error.CopyFrom(_error_to_proto(result.error))
    if result.completed_at is not None:
        message.completed_at.CopyFrom(_timestamp(result.completed_at))
    return message


def progress_from_proto(message: pb.ProgressEvent) -> ProgressEvent:
    return ProgressEvent(
        task_id=message.task_id,
        kind=_PROGRESS_FROM_PB.get(message.kind, ProgressKind.UNSPECIFIED),
        at=_datetime(message.at) if message.HasField("at") else None,
        attempt=message.attempt,
        provider=message.provider,
        message=message.message,
        backoff=_seconds(message.backoff) if message.HasField("backoff") else None,
    )


def progress_to_proto(event: ProgressEvent) -> pb.ProgressEvent:
    message = pb.ProgressEvent(
        task_id=event.task_id,
        kind=_PROGRESS_TO_PB[event.kind],
        attempt=event.attempt,
        provider=event.provider,
        message=event.message,
    )
    if event.at is not None:
        message.at.CopyFrom(_timestamp(event.at))
    if event.backoff is not None:
        message.backoff.CopyFrom(_duration(event.backoff))
    return message


def task_from_proto(message: task_pb2.Task) -> TaskInfo:
    return TaskInfo(
        task_id=message.task_id,
        state=state_from_proto(message.state),
        spec=spec_from_proto(message.spec),
        created_at=_datetime(message.created_at) if message.HasField("created_at") else None,
        started_at=_datetime(message.started_at) if message.HasField("started_at") else None,
        finished_at=_datetime(message.finished_at) if message.HasField("finished_at") else None,
        attempts=message.attempts,
        result=result_from_proto(message.result) if message.HasField("result") else None,
    )


def task_to_proto(info: TaskInfo) -> task_pb2.Task:
    message = task_pb2.Task(
        task_id=info.task_id,
        state=state_to_proto(info.state),
        spec=spec_to_proto(info.spec),
        attempts=info.attempts,
    )
    if info.created_at is not None:
        message.created_at.CopyFrom(_timestamp(info.created_at))
    if info.started_at is not None:
        message.started_at.CopyFrom(_timestamp(info.started_at))
    if info.finished_at is not None:
        message.finished_at.CopyFrom(_timestamp(info.finished_at))
    if info.result is not None:
        message.result.CopyFrom(result_to_proto(info.result))
    return message


def tasks_from_proto(message: pb.ListTasksResponse) -> list[TaskInfo]:
    return [task_from_proto(task) for task in message.tasks]


def tasks_to_proto(tasks: Sequence[TaskInfo]) -> pb.ListTasksResponse:
    return pb.ListTasksResponse(tasks=[task_to_proto(info) for info in tasks])


def _latency_from_proto(message: pb.LatencySummary) -> LatencySummary:
    return LatencySummary(
        samples=message.samples,
        p50=_seconds(message.p50),
        p90=_seconds(message.p90),
        p99=_seconds(message.p99),
        max=_seconds(message.max),
    )


def _latency_to_proto(summary: LatencySummary) -> pb.LatencySummary:
    return pb.LatencySummary(
        samples=summary.samples,
        p50=_duration(summary.p50),
        p90=_duration(summary.p90),
        p99=_duration(summary.p99),
        max=_duration(summary.max),
    )


def _provider_from_proto(message: pb.ProviderStats) -> ProviderStats:
    return ProviderStats(
        name=message.name,
        kind=message.kind,
        model=message.model,
        enabled=message.enabled,
        in_flight=message.in_flight,
        requests=message.requests,
        failures=message.failures,
        average_latency=_seconds(message.average_latency),
        state=message.state,
        breaker_state=_BREAKER_FROM_PB.get(message.breaker_state, BreakerState.UNSPECIFIED),
        health=_HEALTH_FROM_PB.get(message.health, HealthLevel.UNSPECIFIED),
        paused_for=_seconds(message.paused_for),
        error_rate=message.error_rate,
        priority=message.priority,
        max_concurrent_requests=message.max_concurrent_requests,
        rate_limited=message.rate_limited,
    )


def _provider_to_proto(provider: ProviderStats) -> pb.ProviderStats:
    return pb.ProviderStats(
        name=provider.name,
        kind=provider.kind,
        model=provider.model,
        enabled=provider.enabled,
        in_flight=provider.in_flight,
        requests=provider.requests,
        failures=provider.failures,
        average_latency=_duration(provider.average_latency),
        state=provider.state,
        breaker_state=_BREAKER_TO_PB[provider.breaker_state],
        health=_HEALTH_TO_PB[provider.health],
        paused_for=_duration(provider.paused_for),
        error_rate=provider.error_rate,
        priority=provider.priority,
        max_concurrent_requests=provider.max_concurrent_requests,
        rate_limited=provider.rate_limited,
    )


def stats_from_proto(message: pb.StatsResponse) -> Stats:
    counters = message.counters
    return Stats(
        queue_size=message.queue_size,
        queue_capacity=message.queue_capacity,
        queue_depths=tuple(
            QueueDepth(priority_from_proto(depth.priority), depth.depth)
            for depth in message.queue_depths
        ),
        active_workers=message.active_workers,
        total_workers=message.total_workers,
        is_running=message.is_running,
        counters=Counters(
            queued=counters.queued,
            completed=counters.completed,
            failed=counters.failed,
            retried=counters.retried,
            rejected=counters.rejected,
            cancelled=counters.cancelled,
            timed_out=counters.timed_out,
            failovers=counters.failovers,
            rate_limit_waits=counters.rate_limit_waits,
        ),
        queue_latency=_latency_from_proto(message.queue_latency),
        processing_latency=_latency_from_proto(message.processing_latency),
        providers=tuple(_provider_from_proto(provider) for provider in message.providers),
        subscribers=message.subscribers,
        undelivered_results=message.undelivered_results,
        started_at=_datetime(message.started_at) if message.HasField("started_at") else None,
        event_counts=tuple(
            EventCount(_EVENT_FROM_PB.get(item.kind, ProviderEventKind.UNSPECIFIED), item.count)
            for item in message.event_counts
        ),
    )


def stats_to_proto(stats: Stats) -> pb.StatsResponse:
    counters = stats.counters
    message = pb.StatsResponse(
        queue_size=stats.queue_size,
        queue_capacity=stats.queue_capacity,
        queue_depths=[
            pb.QueueDepth(priority=priority_to_proto(depth.priority), depth=depth.depth)
            for depth in stats.queue_depths
        ],
        active_workers=stats.active_workers,
        total_workers=stats.total_workers,
        is_running=stats.is_running,
        counters=pb.Counters(
            queued=counters.queued,
            completed=counters.completed,
            failed=counters.failed,
            retried=counters.retried,
            rejected=counters.rejected,
            cancelled=counters.cancelled,
            timed_out=counters.timed_out,
            failovers=counters.failovers,
            rate_limit_waits=counters.rate_limit_waits,
        ),
        queue_latency=_latency_to_proto(stats.queue_latency),
        processing_latency=_latency_to_proto(stats.processing_latency),
        providers=[_provider_to_proto(provider) for provider in stats.providers],
        subscribers=stats.subscribers,
        undelivered_results=stats.undelivered_results,
        event_counts=[
            pb.EventCount(kind=_EVENT_TO_PB[item.kind], count=item.count)
            for item in stats.event_counts
        ],
    )
    if stats.started_at is not None:
        message.started_at.CopyFrom(_timestamp(stats.started_at))
    return message


def provider_event_from_proto(message: pb.ProviderEvent) -> ProviderEvent:
    return ProviderEvent(
        kind=_EVENT_FROM_PB.get(message.kind, ProviderEventKind.UNSPECIFIED),
        at=_datetime(message.at) if message.HasField("at") else None,
        provider=message.provider,
        to_provider=message.to_provider,
        reason=message.reason,
        downtime=_seconds(message.downtime),
        health=_HEALTH_FROM_PB.get(message.health, HealthLevel.UNSPECIFIED),
        task_id=message.task_id,
    )


def provider_event_to_proto(event: ProviderEvent) -> pb.ProviderEvent:
    message = pb.ProviderEvent(
        kind=_EVENT_TO_PB[event.kind],
        provider=event.provider,
        to_provider=event.to_provider,
        reason=event.reason,
        downtime=_duration(event.downtime),
        health=_HEALTH_TO_PB[event.health],
        task_id=event.task_id,
    )
    if event.at is not None:
        message.at.CopyFrom(_timestamp(event.at))
    return message
