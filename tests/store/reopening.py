"""A SqliteStore that closes and reopens its file after every change.

Run through the contract suite, it shows that each behaviour survives a
restart: after any change, every answer comes from what the file kept.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from aiproc.server.core.models import Task, TaskResult, TaskState
from aiproc.server.store.sqlite import SqliteStore


class ReopeningStore:
    """Delegates to a SqliteStore, swapping it for a freshly opened one after each change."""

    def __init__(self, path: Path, retention: float, inner: SqliteStore) -> None:
        self._path = path
        self._retention = retention
        self._inner = inner

    @classmethod
    async def open(cls, folder: Path, retention: float) -> ReopeningStore:
        path = folder / "aiproc.db"
        return cls(path, retention, await SqliteStore.open(path, retention))

    @property
    def durable(self) -> bool:
        return True

    async def _reopen(self) -> None:
        await self._inner.close()
        self._inner = await SqliteStore.open(self._path, self._retention)

    async def put(self, task: Task) -> None:
        await self._inner.put(task)
        await self._reopen()

    async def get(self, task_id: str) -> Task | None:
        return await self._inner.get(task_id)

    async def find_idempotent(self, client_id: str, key: str) -> Task | None:
        return await self._inner.find_idempotent(client_id, key)

    async def mark_running(self, task_id: str, started_at: float) -> Task | None:
        running = await self._inner.mark_running(task_id, started_at)
        await self._reopen()
        return running

    async def record_attempt(self, task_id: str) -> None:
        await self._inner.record_attempt(task_id)
        await self._reopen()

    async def finish(
        self, result: TaskResult, finished_at: float, *, wait_durable: bool = True
    ) -> TaskResult | None:
        finished = await self._inner.finish(result, finished_at, wait_durable=wait_durable)
        await self._reopen()
        return finished

    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]:
        return await self._inner.pending_results(client_id, task_ids)

    async def ack(self, client_id: str, task_ids: Collection[str]) -> int:
        removed = await self._inner.ack(client_id, task_ids)
        await self._reopen()
        return removed

    async def live_tasks(self) -> Sequence[Task]:
        return await self._inner.live_tasks()

    async def last_sequence(self) -> int:
        return await self._inner.last_sequence()

    async def requeue(self, task_id: str, *, crashed: bool) -> Task | None:
        requeued = await self._inner.requeue(task_id, crashed=crashed)
        await self._reopen()
        return requeued

    async def list_tasks(
        self, client_id: str | None, state: TaskState | None, limit: int
    ) -> Sequence[Task]:
        return await self._inner.list_tasks(client_id, state, limit)

    async def expire(self, now: float) -> int:
        expired = await self._inner.expire(now)
        await self._reopen()
        return expired

    def undelivered_count(self) -> int:
        return self._inner.undelivered_count()

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"<ReopeningStore {self._inner!r}>"
