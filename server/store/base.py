"""The store interface: the source of truth for tasks and undelivered results.

The in-process queue is only an index over the store. Implementations: memory
(here); durable ones implement the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Protocol

from aiproc.server.core.models import Task, TaskResult, TaskState


class TaskStore(Protocol):
    @property
    def durable(self) -> bool:
        """Whether tasks outlive the process (then a shutdown leaves queued tasks queued)."""
        ...

    async def put(self, task: Task) -> None:
        """Records a newly accepted task (state QUEUED)."""
        ...

    async def get(self, task_id: str) -> Task | None:
        """The task, or None if unknown or expired."""
        ...

    async def find_idempotent(self, client_id: str, key: str) -> Task | None:
        """The task this client queued with this idempotency key, if still known."""
        ...

    async def mark_running(self, task_id: str, started_at: float) -> Task | None:
        """QUEUED -> RUNNING; returns None (and changes nothing) if the task is not QUEUED."""
        ...

    async def record_attempt(self, task_id: str) -> None:
        """Counts one provider call against the task."""
        ...

    async def finish(
        self, result: TaskResult, finished_at: float, *, wait_durable: bool = True
    ) -> TaskResult | None:
        """Moves a live task to the result's terminal state and keeps the result.

        Returns the result as kept (its attempts count every call recorded against the
        task), or None (and changes nothing) if the task was unknown or already terminal.

        With `wait_durable=False` a store may return before the change outlives the
        process (SQLite commits it with its next change): a crash in that moment leaves
        the task unfinished, so it runs again and its result is delivered again, which
        at-least-once allows. For a result that is only published, never for one a caller
        is told of (a cancel).
        """
        ...

    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]:
        """Unacknowledged results of this client (only `task_ids`, if given), oldest first."""
        ...

    async def ack(self, client_id: str, task_ids: Collection[str]) -> int:
        """Forgets these results of this client; returns how many were pending."""
        ...

    async def live_tasks(self) -> Sequence[Task]:
        """Every QUEUED or RUNNING task, for rebuilding the queue at start-up."""
        ...

    async def last_sequence(self) -> int:
        """The highest acceptance sequence of any stored task (0 when none), so numbering
        continues after a restart."""
        ...

    async def requeue(self, task_id: str, *, crashed: bool) -> Task | None:
        """Puts a RUNNING task (found so at start-up: its process died) or a finished one back
        to QUEUED, clearing its result; `crashed` counts one more crash against it.
        Returns the task, or None if unknown."""
        ...

    async def list_tasks(
        self, client_id: str | None, state: TaskState | None, limit: int
    ) -> Sequence[Task]:
        """Tasks (of one client, or all; in one state, or any), oldest first, at most `limit`."""
        ...

    async def expire(self, now: float) -> int:
        """Drops results and finished tasks older than the retention; returns how many tasks."""
        ...

    def undelivered_count(self) -> int:
        """Results kept until acknowledged."""
        ...

    async def close(self) -> None: ...


class LocalTaskStore(TaskStore, Protocol):
    """A store that only this process writes (memory, SQLite), so a change can be made at
    once and made durable afterwards."""

    def stage(self, task: Task) -> asyncio.Future[None]:
        """Records a newly accepted task (state QUEUED) before returning: every read sees it.

        Returns the future of its becoming durable (done at once for a store that keeps
        nothing past the process), which raises StoreError if it cannot be; until then
        `finish` holds back a result of the task. Raises StoreError, having recorded
        nothing, if the store accepts no more changes.
        """
        ...
