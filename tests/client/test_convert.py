"""Proto <-> dataclass converters: full round trips both ways, and unknown enum values."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format

from aiproc.client import _convert as convert
from aiproc.client.models import (
    Counters,
    ErrorCode,
    LatencySummary,
    Priority,
    ProgressEvent,
    ProgressKind,
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
        },
        message,
    )
    result = convert.result_from_proto(message)
    assert result.success
    assert result.error is None
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
    assert convert.task_from_proto(message) == info


def test_task_spec_without_timeout_leaves_it_unset() -> None:
    spec = TaskSpec(url="https://example.com/a", content="x")
    message = convert.spec_to_proto(spec)
    assert not message.HasField("timeout")
    assert message.priority == task_pb2.PRIORITY_NORMAL
    assert convert.spec_from_proto(message) == spec


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
            queued=9, completed=5, failed=2, retried=4, rejected=1, cancelled=1, timed_out=1
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
                state="healthy",
            ),
        ),
        subscribers=2,
        undelivered_results=4,
        started_at=AT,
    )
    message = convert.stats_to_proto(stats)
    assert message.counters.timed_out == 1
    assert message.providers[0].average_latency.nanos == 750_000_000
    assert convert.stats_from_proto(message) == stats
