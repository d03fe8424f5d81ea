"""The worker pool: `num_workers` coroutines taking task ids from the queue, one task each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiproc.server.core.queue import QueueClosed
from aiproc.server.core.work import WorkQueue

log = logging.getLogger(__name__)

TaskHandler = Callable[[str], Coroutine[Any, Any, None]]


class WorkerPool:
    """Runs `handler(task_id)` for each id the queue yields, `size` at a time.

    Each task runs in its own asyncio.Task so that it can be cancelled alone
    (CancelTask) without killing the worker that runs it.
    """

    def __init__(self, queue: WorkQueue, handler: TaskHandler, size: int) -> None:
        self._queue = queue
        self._handler = handler
        self.size = size
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}

    @property
    def active(self) -> int:
        """Workers processing a task now."""
        return len(self._running)

    @property
    def alive(self) -> int:
        """Workers still taking tasks: all of them until the queue closes, if none has died."""
        return sum(not worker.done() for worker in self._workers)

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"aiproc-worker-{n}") for n in range(self.size)
        ]

    def cancel_task(self, task_id: str) -> bool:
        """Cancels the running task with this id; False if none runs."""
        running = self._running.get(task_id)
        if running is None:
            return False
        running.cancel()
        return True

    async def _work(self) -> None:
        while True:
            try:
                task_id = await self._queue.get()
            except QueueClosed:
                return
            job = asyncio.create_task(self._handler(task_id), name=f"aiproc-task-{task_id}")
            self._running[task_id] = job
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                if not job.done():
                    raise  # the worker itself is being stopped
            except Exception:
                # The handler turns every failure into a result; reaching here
                # is a bug, and the worker must survive it.
                log.exception("worker: unexpected error on task %s", task_id)
            finally:
                if job.done():
                    self._running.pop(task_id, None)
                    # Here, not in the handler: a job cancelled before its first
                    # step never runs the handler, and the queue must still know.
                    self._queue.done(task_id)

    def stop_taking(self) -> None:
        """Stops idle workers; workers busy with a task stop after it."""
        self._queue.close()

    async def wait_idle(self, grace: float) -> bool:
        """Waits up to `grace` seconds for running tasks to finish; True if they did."""
        jobs = list(self._running.values())
        if not jobs:
            return True
        _, pending = await asyncio.wait(jobs, timeout=grace)
        return not pending

    async def stop(self) -> None:
        """Cancels whatever still runs and waits for every worker to end."""
        for job in list(self._running.values()):
            job.cancel()
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        jobs = list(self._running.values())
        if jobs:
            await asyncio.wait(jobs)
        self._running.clear()

    def __repr__(self) -> str:
        return f"<WorkerPool {self.active}/{self.size} busy>"
