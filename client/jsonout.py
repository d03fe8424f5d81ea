"""Client dataclasses printed as the protobuf JSON mapping of the messages they came from.

Field names are lowerCamelCase, enums their proto names, durations strings
like "1.5s", timestamps RFC 3339; fields at their default value are printed
too, so that scripts find every key.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import Message

from aiproc.client._convert import (
    progress_to_proto,
    provider_event_to_proto,
    queued_to_proto,
    result_to_proto,
    state_to_proto,
    stats_to_proto,
    task_to_proto,
    tasks_to_proto,
)
from aiproc.client.models import (
    ProgressEvent,
    ProviderEvent,
    QueuedTask,
    Stats,
    TaskInfo,
    TaskResult,
    TaskState,
)
from aiproc.v1 import processor_service_pb2 as pb

Printable = (
    QueuedTask
    | TaskResult
    | ProgressEvent
    | ProviderEvent
    | TaskInfo
    | list[TaskInfo]
    | Stats
    | TaskState
)


def to_message(obj: Printable) -> Message:
    """The message `obj` stands for: the response of the call that returned it, or for a
    result or progress event, the message as StreamResults carries it, or for a provider
    event, the WatchEventsResponse that carried it.

    A list of tasks (from `list_tasks`) is a ListTasksResponse. A state (from `cancel`
    or `requeue`) is a CancelTaskResponse, whose JSON is that of a RequeueTaskResponse.
    """
    match obj:
        case QueuedTask():
            return queued_to_proto(obj)
        case TaskResult():
            return result_to_proto(obj)
        case ProgressEvent():
            return progress_to_proto(obj)
        case ProviderEvent():
            return pb.WatchEventsResponse(event=provider_event_to_proto(obj))
        case TaskInfo():
            return pb.GetTaskResponse(task=task_to_proto(obj))
        case list():
            return tasks_to_proto(obj)
        case Stats():
            return stats_to_proto(obj)
        case TaskState():
            return pb.CancelTaskResponse(state=state_to_proto(obj))


def to_json(obj: Printable, *, indent: int | None = None) -> str:
    """`obj` in protobuf's JSON mapping, on one line unless `indent` is given."""
    return json_format.MessageToJson(
        to_message(obj), indent=indent, always_print_fields_with_no_presence=True
    )
