"""Tasks and results for store tests, with only the fields a test cares about spelled out."""

from __future__ import annotations

from aiproc.server.core.models import Priority, Task, TaskResult, TaskSpec, TaskState


def task(
    task_id: str,
    client_id: str = "alice",
    *,
    sequence: int = 0,
    key: str = "",
    priority: Priority = Priority.NORMAL,
) -> Task:
    """A QUEUED task."""
    spec = TaskSpec(
        url=f"https://example.com/{task_id}",
        content=f"content of {task_id}",
        priority=priority,
        idempotency_key=key,
    )
    return Task(task_id, client_id, spec, created_at=1000.0, sequence=sequence)


def result(of: Task, state: TaskState = TaskState.SUCCEEDED, attempts: int = 1) -> TaskResult:
    """A result of `of` in `state`."""
    return TaskResult(
        task_id=of.task_id,
        client_id=of.client_id,
        url=of.spec.url,
        state=state,
        enhanced_content=f"better {of.task_id}",
        attempts=attempts,
    )
