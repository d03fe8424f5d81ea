"""A store that lives in the process: fast, and gone when the process is."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import replace

from aiproc.server.core.models import Task, TaskResult, TaskState


class MemoryStore:
    """Tasks by id; undelivered results per client in completion order; idempotency keys.

    A finished task and its result are kept for `retention` seconds after they
    finish (or until acknowledged, for the result), so GetTask still answers.
    """

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._tasks: dict[str, Task] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()  # task_id -> finished_at
        # client -> task_id -> (completion number, result), in completion order
        self._pending: dict[str, dict[str, tuple[int, TaskResult]]] = {}
        self._completions = itertools.count()
        self._idempotency: dict[tuple[str, str], str] = {}

    @property
    def durable(self) -> bool:
        return False

    async def put(self, task: Task) -> None:
        self.record(task)

    def stage(self, task: Task) -> asyncio.Future[None]:
        self.record(task)
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        recorded.set_result(None)
        return recorded

    def record(self, task: Task) -> None:
        """What put and stage do, at once, with nothing to wait for."""
        self._tasks[task.task_id] = task
        if task.spec.idempotency_key:
            self._idempotency[(task.client_id, task.spec.idempotency_key)] = task.task_id

    async def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    async def find_idempotent(self, client_id: str, key: str) -> Task | None:
        task_id = self._idempotency.get((client_id, key))
        return None if task_id is None else self._tasks.get(task_id)

    async def mark_running(self, task_id: str, started_at: float) -> Task | None:
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.QUEUED:
            return None
        task.state = TaskState.RUNNING
        task.started_at = started_at
        return task

    async def record_attempt(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            task.attempts += 1

    async def finish(
        self, result: TaskResult, finished_at: float, *, wait_durable: bool = True
    ) -> TaskResult | None:
        task = self._tasks.get(result.task_id)
        if task is None or task.state.is_terminal:
            return None
        task.state = result.state
        task.finished_at = finished_at
        if task.attempts > result.attempts:  # calls a crash interrupted count too
            result = replace(result, attempts=task.attempts)
        task.result = result
        self._finished[task.task_id] = finished_at
        completion = next(self._completions)
        self._pending.setdefault(task.client_id, {})[task.task_id] = (completion, task.result)
        return task.result

    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]:
        pending = self._pending.get(client_id)
        if not pending:
            return []
        if task_ids is None:
            return [result for _, result in pending.values()]
        if len(task_ids) >= len(pending):
            return [result for task_id, (_, result) in pending.items() if task_id in task_ids]
        # Fewer ids than results: looked up, not scanned for, so that a subscriber adding
        # ids one at a time costs the same however large the client's unacked backlog is.
        found = [pending[task_id] for task_id in set(task_ids) if task_id in pending]
        found.sort(key=lambda entry: entry[0])  # completion order
        return [result for _, result in found]

    async def ack(self, client_id: str, task_ids: Collection[str]) -> int:
        pending = self._pending.get(client_id)
        if not pending:
            return 0
        removed = sum(1 for task_id in task_ids if pending.pop(task_id, None) is not None)
        if not pending:
            del self._pending[client_id]
        return removed

    async def live_tasks(self) -> Sequence[Task]:
        return [t for t in self._tasks.values() if not t.state.is_terminal]

    async def last_sequence(self) -> int:
        return max((task.sequence for task in self._tasks.values()), default=0)

    async def requeue(self, task_id: str, *, crashed: bool) -> Task | None:
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if task.result is not None:
            await self.ack(task.client_id, (task_id,))
        self._finished.pop(task_id, None)
        task.state = TaskState.QUEUED
        task.started_at = None
        task.finished_at = None
        task.result = None
        if crashed:
            task.crashes += 1
        return task

    async def list_tasks(
        self, client_id: str | None, state: TaskState | None, limit: int
    ) -> Sequence[Task]:
        found = []
        for task in sorted(self._tasks.values(), key=lambda t: t.sequence):
            if client_id is not None and task.client_id != client_id:
                continue
            if state is not None and task.state is not state:
                continue
            found.append(task)
            if len(found) >= limit:
                break
        return found

    async def expire(self, now: float) -> int:
        cutoff = now - self.retention
        expired = 0
        while self._finished:
            task_id, finished_at = next(iter(self._finished.items()))
            if finished_at > cutoff:
                break
            del self._finished[task_id]
            task = self._tasks.pop(task_id, None)
            if task is None:
                continue
            expired += 1
            key = task.spec.idempotency_key
            if key and self._idempotency.get((task.client_id, key)) == task_id:
                del self._idempotency[(task.client_id, key)]
            await self.ack(task.client_id, (task_id,))
        return expired

    def undelivered_count(self) -> int:
        return sum(len(results) for results in self._pending.values())

    async def close(self) -> None:
        self._tasks.clear()
        self._pending.clear()

    def __repr__(self) -> str:
        return f"<MemoryStore tasks={len(self._tasks)} undelivered={self.undelivered_count()}>"
