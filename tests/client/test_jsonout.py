"""`to_json`: dataclasses printed as the protobuf JSON mapping of their response messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from google.protobuf import json_format

from aiproc.client import (
    BreakerState,
    Counters,
    EventCount,
    HealthLevel,
    ProviderEvent,
    ProviderEventKind,
    ProviderStats,
    QueuedTask,
    Stats,
    TaskError,
    TaskInfo,
    TaskResult,
    TaskSpec,
    TaskState,
    to_json,
)
from aiproc.client.models import ErrorCode, ProgressEvent, ProgressKind
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import task_pb2


def test_queued_task_prints_a_queue_task_response_with_every_field() -> None:
    text = to_json(QueuedTask("abc", TaskState.QUEUED))
    assert "\n" not in text
    assert json.loads(text) == {
        "taskId": "abc",
        "state": "TASK_STATE_QUEUED",
        "deduplicated": False,
    }
    json_format.Parse(text, pb.QueueTaskResponse())


def test_result_uses_camel_case_names_durations_and_timestamps() -> None:
    result = TaskResult(
        task_id="t1",
        url="https://example.com/a",
        error=TaskError(ErrorCode.TIMEOUT, "slow"),
        state=TaskState.FAILED,
        processing_time=1.5,
        completed_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        metadata={"k": "v"},
    )
    fields = json.loads(to_json(result))
    assert fields["taskId"] == "t1"
    assert fields["success"] is False
    assert fields["error"] == {"code": "ERROR_CODE_TIMEOUT", "message": "slow"}
    assert fields["processingTime"] == "1.500s"
    assert fields["completedAt"] == "2025-01-02T03:04:05Z"
    assert fields["metadata"] == {"k": "v"}
    parsed = json_format.Parse(to_json(result), task_pb2.TaskResult())
    assert parsed.error.code == task_pb2.ERROR_CODE_TIMEOUT


def test_task_info_prints_a_get_task_response() -> None:
    info = TaskInfo(
        task_id="t1",
        state=TaskState.RUNNING,
        spec=TaskSpec(url="https://example.com/a", content="x"),
    )
    fields = json.loads(to_json(info))
    assert fields["task"]["taskId"] == "t1"
    assert fields["task"]["spec"]["url"] == "https://example.com/a"
    assert "result" not in fields["task"]


def test_state_prints_a_cancel_task_response_and_stats_a_stats_response() -> None:
    assert json.loads(to_json(TaskState.CANCELLED)) == {"state": "TASK_STATE_CANCELLED"}
    stats = json.loads(to_json(Stats(queue_capacity=10)))
    assert stats["queueCapacity"] == 10
    assert stats["isRunning"] is True
    assert stats["counters"]["timedOut"] == "0"  # uint64 is a string in the JSON mapping


def test_progress_event_prints_the_stream_message() -> None:
    event = ProgressEvent(task_id="t", kind=ProgressKind.FAILED_OVER, attempt=2)
    fields = json.loads(to_json(event, indent=2))
    assert fields["kind"] == "PROGRESS_KIND_FAILED_OVER"
    assert fields["attempt"] == 2


def test_provider_event_prints_a_watch_events_response() -> None:
    event = ProviderEvent(
        kind=ProviderEventKind.FAILOVER,
        at=datetime(2026, 11, 26, 2, 30, 1, tzinfo=UTC),
        provider="primary",
        to_provider="secondary",
        reason="500 from primary",
        task_id="t1",
    )
    text = to_json(event)
    assert "\n" not in text
    fields = json.loads(text)
    assert fields == {
        "event": {
            "kind": "PROVIDER_EVENT_KIND_FAILOVER",
            "at": "2026-11-26T02:30:01Z",
            "provider": "primary",
            "toProvider": "secondary",
            "reason": "500 from primary",
            "downtime": "0s",
            "health": "HEALTH_LEVEL_UNSPECIFIED",
            "taskId": "t1",
        }
    }
    assert json_format.Parse(text, pb.WatchEventsResponse()).event.task_id == "t1"


def test_stats_print_the_resilience_fields() -> None:
    stats = Stats(
        counters=Counters(failovers=2, rate_limit_waits=5),
        providers=(
            ProviderStats(name="p", breaker_state=BreakerState.OPEN, health=HealthLevel.CRITICAL),
        ),
        event_counts=(EventCount(ProviderEventKind.BREAKER_OPENED, 1),),
    )
    fields = json.loads(to_json(stats))
    assert fields["counters"]["failovers"] == "2"
    assert fields["counters"]["rateLimitWaits"] == "5"
    assert fields["providers"][0]["breakerState"] == "BREAKER_STATE_OPEN"
    assert fields["providers"][0]["health"] == "HEALTH_LEVEL_CRITICAL"
    assert fields["providers"][0]["pausedFor"] == "0s"
    assert fields["eventCounts"] == [{"kind": "PROVIDER_EVENT_KIND_BREAKER_OPENED", "count": "1"}]


def test_a_task_list_prints_a_list_tasks_response() -> None:
    tasks = [
        TaskInfo(
            task_id=f"t{n}",
            state=TaskState.FAILED,
            spec=TaskSpec(url=f"https://example.com/{n}", content="x"),
            result=TaskResult(
                task_id=f"t{n}",
                state=TaskState.FAILED,
                error=TaskError(ErrorCode.CRASHED, "died"),
            ),
        )
        for n in range(2)
    ]
    text = to_json(tasks)
    fields = json.loads(text)
    assert [task["taskId"] for task in fields["tasks"]] == ["t0", "t1"]
    assert fields["tasks"][0]["result"]["error"]["code"] == "ERROR_CODE_CRASHED"
    parsed = json_format.Parse(text, pb.ListTasksResponse())
    assert [task.spec.url for task in parsed.tasks] == [
        "https://example.com/0",
        "https://example.com/1",
    ]
    assert json.loads(to_json([])) == {"tasks": []}


def test_a_requeued_state_prints_what_requeue_task_response_parses() -> None:
    text = to_json(TaskState.QUEUED)
    assert json_format.Parse(text, pb.RequeueTaskResponse()).state == task_pb2.TASK_STATE_QUEUED
