"""Proto <-> dataclass converters: full round trips both ways, and unknown enum values."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format

from aiproc.client import _convert as convert
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

AT = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)

RESULT = TaskResult(
    task_id="t1",
    url="https://example.com/a",
    success=False,
    enhanced_content="",
    error=TaskError(ErrorCode.TIMEOUT, "took too long"),
    provider="primary",
    model="gpt-x",
    attempts=3,
    usage=TokenUsage(120, 45),
    queue_time=0.25,
    processing_time=12.5,
    trace_id="0af7651916cd43dd8448eb211c80319c",
    state=TaskState.FAILED,
    completed_at=AT,
    metadata={"source": "crawler", "batch": "7"},
    history=(
        Attempt(
            provider="primary",
            started_at=AT,
            duration=0.5,
            error=TaskError(ErrorCode.TRANSIENT, "HTTP 503"),
        ),
        Attempt(provider="backup", started_at=AT, duration=12.0),
    ),
)


def test_result_round_trips_through_proto() -> None:
    assert convert.result_from_proto(convert.result_to_proto(RESULT)) == RESULT


def test_result_from_a_full_proto_and_back_is_identical() -> None:
    message = task_pb2.TaskResult()
    json_format.ParseDict(
        {
            "taskId": "t2",
            "url": "https://example.com/b",
            "success": True,
            "enhancedContent": "better text",
            "provider": "offline",
            "model": "m",
            "attempts": 1,
            "usage": {"inputTokens": 10, "outputTokens": 20},
            "queueTime": "0.001s",
            "processingTime": "1.500s",
            "traceId": "abc",
            "state": "TASK_STATE_SUCCEEDED",
            "completedAt": "2025-03-04T05:06:07.123456Z",
            "metadata": {"k": "v"},
            "history": [
                {
                    "provider": "primary",
                    "startedAt": "2025-03-04T05:06:05Z",
                    "duration": "0.250s",
                    "error": {"code": "ERROR_CODE_TRANSIENT", "message": "connection refused"},
                },
                {"provider": "offline", "startedAt": "2025-03-04T05:06:06Z", "duration": "1s"},
            ],
        },
        message,
    )
    result = convert.result_from_proto(message)
    assert result.success
    assert result.error is None
    assert result.history == (
        Attempt(
            provider="primary",
            started_at=datetime(2025, 3, 4, 5, 6, 5, tzinfo=UTC),
            duration=0.25,
            error=TaskError(ErrorCode.TRANSIENT, "connection refused"),
        ),
        Attempt(
            provider="offline", started_at=datetime(2025, 3, 4, 5, 6, 6, tzinfo=UTC), duration=1.0
        ),
    )
    assert result.state is TaskState.SUCCEEDED
    assert result.processing_time == 1.5
    assert result.completed_at == AT
    assert result.usage == TokenUsage(10, 20)
    assert convert.result_to_proto(result) == message


def test_unset_timestamps_and_errors_stay_unset() -> None:
    result = convert.result_from_proto(task_pb2.TaskResult(task_id="t", success=True))
    assert result.completed_at is None
    assert result.error is None
    message = convert.result_to_proto(result)
    assert not message.HasField("completed_at")
    assert not message.HasField("error")
    attempt = convert.result_from_proto(
        task_pb2.TaskResult(history=[task_pb2.Attempt(provider="p")])
    ).history[0]
    assert attempt == Attempt(provider="p")
    record = convert.result_to_proto(TaskResult(task_id="t", history=(attempt,))).history[0]
    assert not record.HasField("started_at")
    assert not record.HasField("error")


def test_unknown_enum_values_map_to_unspecified_and_priority_zero_to_normal() -> None:
    result = convert.result_from_proto(
        task_pb2.TaskResult(
            task_id="t",
            state=99,  # type: ignore[arg-type]
            error=task_pb2.TaskError(code=77, message="new"),  # type: ignore[arg-type]
        )
    )
    assert result.state is TaskState.UNSPECIFIED
    assert result.error == TaskError(ErrorCode.UNSPECIFIED, "new")
    assert convert.priority_from_proto(task_pb2.PRIORITY_UNSPECIFIED) is Priority.NORMAL
    event = convert.progress_from_proto(pb.ProgressEvent(task_id="t", kind=42))  # type: ignore[arg-type]
    assert event.kind is ProgressKind.UNSPECIFIED
    provider_event = convert.provider_event_from_proto(
        pb.ProviderEvent(kind=42, health=42)  # type: ignore[arg-type]
    )
    assert provider_event.kind is ProviderEventKind.UNSPECIFIED
    assert provider_event.health is HealthLevel.UNSPECIFIED
    stats = convert.stats_from_proto(
        pb.StatsResponse(
            providers=[pb.ProviderStats(name="p", breaker_state=42, health=42)],  # type: ignore[arg-type]
            event_counts=[pb.EventCount(kind=42, count=1)],  # type: ignore[arg-type]
        )
    )
    assert stats.providers[0].breaker_state is BreakerState.UNSPECIFIED
    assert stats.providers[0].health is HealthLevel.UNSPECIFIED
    assert stats.event_counts == (EventCount(ProviderEventKind.UNSPECIFIED, 1),)


def test_every_enum_member_round_trips() -> None:
    for state in TaskState:
        assert convert.state_from_proto(convert.state_to_proto(state)) is state
    for priority in Priority:
        assert convert.priority_from_proto(convert.priority_to_proto(priority)) is priority
    for code in ErrorCode:
        result = TaskResult(task_id="t", error=TaskError(code, "m"))
        assert convert.result_from_proto(convert.result_to_proto(result)) == result
    for kind in ProgressKind:
        event = ProgressEvent(task_id="t", kind=kind)
        assert convert.progress_from_proto(convert.progress_to_proto(event)) == event
    for event_kind in ProviderEventKind:
        count = Stats(event_counts=(EventCount(event_kind, 2),))
        assert convert.stats_from_proto(convert.stats_to_proto(count)) == count
    for level in HealthLevel:
        changed = ProviderEvent(kind=ProviderEventKind.HEALTH_CHANGED, health=level)
        assert (
            convert.provider_event_from_proto(convert.provider_event_to_proto(changed)) == changed
        )
    for breaker in BreakerState:
        provider = Stats(providers=(ProviderStats(name="p", breaker_state=breaker),))
        assert convert.stats_from_proto(convert.stats_to_proto(provider)) == provider


def test_queued_task_round_trips() -> None:
    queued = QueuedTask("t1", TaskState.RUNNING, deduplicated=True)
    message = convert.queued_to_proto(queued)
    assert message == pb.QueueTaskResponse(
        task_id="t1", state=task_pb2.TASK_STATE_RUNNING, deduplicated=True
    )
    assert convert.queued_from_proto(message) == queued


def test_progress_event_keeps_backoff_presence() -> None:
    retrying = ProgressEvent(
        task_id="t",
        kind=ProgressKind.RETRYING,
        at=AT,
        attempt=2,
        provider="primary",
        message="HTTP 503",
        backoff=0.2,
    )
    assert convert.progress_from_proto(convert.progress_to_proto(retrying)) == retrying
    started = ProgressEvent(task_id="t", kind=ProgressKind.STARTED, attempt=1)
    assert not convert.progress_to_proto(started).HasField("backoff")
    assert convert.progress_from_proto(convert.progress_to_proto(started)).backoff is None


def test_task_info_round_trips_with_spec_and_result() -> None:
    info = TaskInfo(
        task_id="t1",
        state=TaskState.FAILED,
        spec=TaskSpec(
            url="https://example.com/a",
            content="text",
            priority=Priority.CRITICAL,
            timeout=30.0,
            instructions="be brief",
            model="m",
            idempotency_key="k",
            metadata={"a": "b"},
            max_retries=5,
        ),
        created_at=AT,
        started_at=AT,
        finished_at=None,
        attempts=3,
        result=RESULT,
    )
    message = convert.task_to_proto(info)
    assert not message.HasField("finished_at")
    assert message.spec.timeout.seconds == 30
    assert message.spec.max_retries == 5
    assert len(message.result.history) == 2
    assert convert.task_from_proto(message) == info


def test_task_spec_without_timeout_leaves_it_unset() -> None:
    spec = TaskSpec(url="https://example.com/a", content="x")
    message = convert.spec_to_proto(spec)
    assert not message.HasField("timeout")
    assert not message.HasField("max_retries")
    assert message.priority == task_pb2.PRIORITY_NORMAL
    assert convert.spec_from_proto(message) == spec


def test_a_max_retries_of_zero_is_kept_apart_from_unset() -> None:
    spec = TaskSpec(url="https://example.com/a", content="x", max_retries=0)
    message = convert.spec_to_proto(spec)
    assert message.HasField("max_retries")
    assert convert.spec_from_proto(message).max_retries == 0


def test_stats_round_trip() -> None:
    latency = LatencySummary(samples=10, p50=0.5, p90=0.9, p99=0.99, max=1.25)
    stats = Stats(
        queue_size=3,
        queue_capacity=1000,
        queue_depths=(QueueDepth(Priority.CRITICAL, 0), QueueDepth(Priority.LOW, 3)),
        active_workers=2,
        total_workers=4,
        is_running=False,
        counters=Counters(
            queued=9,
            completed=5,
            failed=2,
            retried=4,
            rejected=1,
            cancelled=1,
            timed_out=1,
            failovers=3,
            rate_limit_waits=6,
        ),
        queue_latency=latency,
        processing_latency=LatencySummary(samples=1, p50=2.0, p90=2.0, p99=2.0, max=2.0),
        providers=(
            ProviderStats(
                name="primary",
                kind="openai",
                model="gpt",
                enabled=True,
                in_flight=1,
                requests=7,
                failures=2,
                average_latency=0.75,
                state="paused",
                breaker_state=BreakerState.HALF_OPEN,
                health=HealthLevel.DEGRADED,
                paused_for=1.5,
                error_rate=0.25,
                priority=2,
                max_concurrent_requests=8,
                rate_limited=3,
            ),
        ),
        subscribers=2,
        undelivered_results=4,
        started_at=AT,
        event_counts=(
            EventCount(ProviderEventKind.FAILOVER, 3),
            EventCount(ProviderEventKind.PAUSED, 1),
        ),
    )
    message = convert.stats_to_proto(stats)
    assert message.counters.timed_out == 1
    assert message.counters.failovers == 3
    assert message.providers[0].average_latency.nanos == 750_000_000
    assert message.providers[0].breaker_state == pb.BREAKER_STATE_HALF_OPEN
    assert message.providers[0].paused_for.seconds == 1
    assert message.event_counts[0] == pb.EventCount(kind=pb.PROVIDER_EVENT_KIND_FAILOVER, count=3)
    assert convert.stats_from_proto(message) == stats


def test_provider_event_round_trips_both_ways() -> None:
    event = ProviderEvent(
        kind=ProviderEventKind.RECOVERED,
        at=AT,
        provider="primary",
        to_provider="backup",
        reason="breaker closed",
        downtime=42.5,
        health=HealthLevel.HEALTHY,
        task_id="t1",
    )
    message = convert.provider_event_to_proto(event)
    assert message.kind == pb.PROVIDER_EVENT_KIND_RECOVERED
    assert message.downtime.seconds == 42
    assert convert.provider_event_from_proto(message) == event
    parsed = pb.ProviderEvent()
    json_format.ParseDict(
        {
            "kind": "PROVIDER_EVENT_KIND_FAILOVER",
            "at": "2025-03-04T05:06:07.123456Z",
            "provider": "primary",
            "toProvider": "backup",
            "reason": "HTTP 500",
            "taskId": "t2",
        },
        parsed,
    )
    failover = convert.provider_event_from_proto(parsed)
    assert failover == ProviderEvent(
        kind=ProviderEventKind.FAILOVER,
        at=AT,
        provider="primary",
        to_provider="backup",
        reason="HTTP 500",
        task_id="t2",
    )
    assert not convert.provider_event_to_proto(ProviderEvent(kind=failover.kind)).HasField("at")


def test_a_dead_lettered_task_converts_with_code_crashed() -> None:
    message = task_pb2.Task(
        task_id="t1",
        state=task_pb2.TASK_STATE_FAILED,
        result=task_pb2.TaskResult(
            task_id="t1",
            state=task_pb2.TASK_STATE_FAILED,
            error=task_pb2.TaskError(code=task_pb2.ERROR_CODE_CRASHED, message="died 3 times"),
        ),
    )
    info = convert.task_from_proto(message)
    assert info.result is not None
    assert info.result.error == TaskError(ErrorCode.CRASHED, "died 3 times")
    assert info.result.error.code == "crashed"
    back = convert.task_to_proto(info)
    assert back.result.error.code == task_pb2.ERROR_CODE_CRASHED
    assert json_format.MessageToDict(back)["result"]["error"]["code"] == "ERROR_CODE_CRASHED"


def test_a_task_list_round_trips_in_order() -> None:
    tasks = [
        TaskInfo(task_id="a", state=TaskState.QUEUED, spec=TaskSpec(url="u", content="c")),
        TaskInfo(
            task_id="b",
            state=TaskState.FAILED,
            spec=TaskSpec(url="v", content="d", priority=Priority.HIGH),
            created_at=AT,
            attempts=2,
            result=RESULT,
        ),
    ]
    message = convert.tasks_to_proto(tasks)
    assert [task.task_id for task in message.tasks] == ["a", "b"]
    assert convert.tasks_from_proto(message) == tasks
    assert convert.tasks_from_proto(pb.ListTasksResponse()) == []
