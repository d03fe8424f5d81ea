"""Where workers get their tasks: the seam between one process's queue and a shared one.

`LocalWorkQueue` keeps the waiting ids in this process (a `TaskQueue` over the
store), for the memory and SQLite stores. `aiproc.server.cluster.work_queue`
keeps them in Redis, shared by every replica. The processor sees only this
protocol, so it runs the same way over either.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from aiproc.server.config import QuotasConfig
from aiproc.server.core.errors import QueueFull, StoreError, TenantQueueFull
from aiproc.server.core.models import Task, TaskState
from aiproc.server.core.queue import TaskQueue
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.rate_share import RateShares, ShareSchedule
from aiproc.server.store.base import LocalTaskStore

log = logging.getLogger(__name__)

DeadLetter = Callable[[Task], Awaitable[None]]
"""Records a task that was running during too many crashes as failed (code CRASHED)."""

OnQueued = Callable[[Task], None]
"""Told of a newly queued task as soon as it is queued (to publish its QUEUED event first)."""


class WorkQueue(Protocol):
    @property
    def capacity(self) -> int:
        """The most tasks that may wait; QueueTask is refused beyond it."""
        ...

    def __len__(self) -> int:
        """Tasks waiting now (for a shared queue: as of its last refresh, within a second)."""
        ...

    def depths(self) -> dict[str, int]:
        """Waiting tasks per priority name; safe to call from another thread."""
        ...

    async def waiting_of(self, tenant: str) -> int:
        """Tasks of `tenant` waiting now."""
        ...

    async def start(self, dead_letter: DeadLetter) -> None:
        """Makes every accepted, unfinished task runnable again (after a crash, or on another
        replica's death); a task that crashed too often goes to `dead_letter` instead."""
        ...

    async def admit(self, task: Task, on_queued: OnQueued | None = None) -> tuple[Task, bool]:
        """Stores a new task and queues it, as one step; returns it with its sequence, and
        whether it is new (False: an earlier task with its idempotency key, returned instead).

        `on_queued` is called with a new task as soon as it is queued, which may be before
        the store has made it durable: with the local queue, before any worker can start
        it; with the shared one, when the store has it (another replica may be quicker).
        Raises QueueFull at capacity, QueueClosed once closed."""
        ...

    async def get(self) -> str:
        """The next task id to run, waiting for one; raises QueueClosed once closed."""
        ...

    def done(self, task_id: str) -> None:
        """The worker has finished with a task `get` returned (whatever its outcome)."""
        ...

    async def withdraw(self, task_id: str) -> bool:
        """Whether the task was waiting, for a cancel; no worker runs it once the caller has
        recorded its terminal state."""
        ...

    async def requeue(self, task_id: str) -> Task | None:
        """Queues a finished task again, forgetting its result; None if unknown."""
        ...

    async def give_back(self, task_id: str) -> None:
        """A running task that this process stops running (shutdown) waits again."""
        ...

    async def drain(self) -> list[str]:
        """Takes every waiting id out, for a store that cannot keep them past the process."""
        ...

    def close(self) -> None:
        """Stops handing out tasks: waiting and later `get`s raise QueueClosed."""
        ...

    async def stop(self) -> None:
        """Ends background work; called after the workers have stopped."""
        ...


class LocalWorkQueue:
    """Waiting ids in this process, over a store that only this process uses.

    With `shares`, each tenant starts tasks no faster than its share of the rate limit,
    timed on `clock` (see core/queue.py).
    """

    def __init__(
        self,
        store: LocalTaskStore,
        capacity: int,
        max_crashes: int,
        quotas: QuotasConfig | None = None,
        *,
        shares: RateShares | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        schedule = None if shares is None else ShareSchedule(shares)
        self._queue = TaskQueue(capacity, schedule, clock)
        self._max_crashes = max_crashes
        self._quotas = quotas or QuotasConfig()
        self._sequence = itertools.count(1)

    @property
    def capacity(self) -> int:
        return self._queue.capacity

    def __len__(self) -> int:
        return len(self._queue)

    def depths(self) -> dict[str, int]:
        return self._queue.depths()

    async def waiting_of(self, tenant: str) -> int:
        return self._queue.waiting_of(tenant)

    async def start(self, dead_letter: DeadLetter) -> None:
        """Rebuilds the queue from the store's live tasks, in acceptance order.

        A task found RUNNING was running when the previous process died: it
        runs again (at-least-once), unless that has happened max_crashes times.
        """
        live = sorted(await self._store.live_tasks(), key=lambda t: t.sequence)
        self._sequence = itertools.count(await self._store.last_sequence() + 1)
        for task in live:
            if task.state is TaskState.RUNNING:
                if task.crashes + 1 >= self._max_crashes:
                    await dead_letter(task)
                    continue
                requeued = await self._store.requeue(task.task_id, crashed=True)
                if requeued is None:
                    continue
                task = requeued
            self._queue.restore(task.task_id, task.spec.priority, task.sequence, task.client_id)
        if live:
            log.info("recovered %d unfinished tasks from the store", len(live))

    async def admit(self, task: Task, on_queued: OnQueued | None = None) -> tuple[Task, bool]:
        if len(self._queue) >= self._queue.capacity:
            raise QueueFull(f"queue is full ({self._queue.capacity} tasks waiting); retry later")
        tenant = task.client_id
        limit = self._quotas.max_queued(tenant)
        if limit and self._queue.waiting_of(tenant) >= limit:
            raise TenantQueueFull(tenant, limit)
        task = replace(task, sequence=next(self._sequence))
        # Queued and stored in one step, so that no stored task is one nobody will run. A
        # worker may start it while the store commits it, which takes a commit's round trip
        # off every task's latency: the store holds back its result until that commit.
        self._queue.put(task.task_id, task.spec.priority, task.sequence, tenant)
        try:
            committed = self._store.stage(task)
        except BaseException:
            self._queue.remove(task.task_id)
            raise
        if on_queued is not None:
            on_queued(task)
        try:
            # Shielded: a caller gone meanwhile leaves the task accepted, its commit going on.
            await asyncio.shield(committed)
        except StoreError:
            self._queue.remove(task.task_id)  # not accepted: no worker starts it from now on
            raise
        return task, True

    async def get(self) -> str:
        return await self._queue.get()

    def done(self, task_id: str) -> None:
        pass  # nothing is held for a running task in this process

    async def withdraw(self, task_id: str) -> bool:
        return self._queue.remove(task_id)

    async def requeue(self, task_id: str) -> Task | None:
        requeued = await self._store.requeue(task_id, crashed=False)
        if requeued is not None:
            self._queue.restore(
                task_id, requeued.spec.priority, requeued.sequence, requeued.client_id
            )
        return requeued

    async def give_back(self, task_id: str) -> None:
        # Queued in the store only: this process is stopping, and the next
        # start rebuilds the queue from the store.
        await self._store.requeue(task_id, crashed=False)

    async def drain(self) -> list[str]:
        return self._queue.drain()

    def close(self) -> None:
        self._queue.close()

    async def stop(self) -> None:
        pass

    def __repr__(self) -> str:
        return repr(self._queue)
