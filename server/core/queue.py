"""The bounded priority queue of task ids that workers take from.

Critical > High > Normal > Low, FIFO within a level. A waiting worker is woken
by the enqueue itself (one future per waiter), never by polling.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque

from aiproc.server.core.errors import QueueFull
from aiproc.server.core.models import Priority


class QueueClosed(Exception):
    """Raised to waiters when the queue is closed."""


class TaskQueue:
    """Holds at most `capacity` task ids; `remove` takes one out wherever it is."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # (-priority, sequence, task_id): the heap pops the highest priority,
        # then the lowest sequence, i.e. FIFO within a level.
        self._heap: list[tuple[int, int, str]] = []
        self._live: dict[str, Priority] = {}
        # Kept as counts, not derived from _live, so another thread (a metrics
        # exporter) can read them while this one changes the queue.
        self._depths = dict.fromkeys(Priority, 0)
        self._waiters: deque[asyncio.Future[tuple[str, Priority]]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def depths(self) -> dict[str, int]:
        """Waiting ids per priority name; safe to call from another thread."""
        return {priority.name.lower(): n for priority, n in self._depths.items()}

    def put(self, task_id: str, priority: Priority, sequence: int) -> None:
        """Enqueues, or hands the id straight to a waiting worker. Raises QueueFull."""
        if self._closed:
            raise QueueClosed
        if self._hand_over(task_id, priority):
            return
        if len(self._live) >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} tasks waiting)")
        self._push(task_id, priority, sequence)

    def restore(self, task_id: str, priority: Priority, sequence: int) -> None:
        """Enqueues a task accepted earlier (recovered, requeued), beyond capacity if need be:
        an accepted task is never refused later."""
        if not self._hand_over(task_id, priority):
            self._push(task_id, priority, sequence)

    def _hand_over(self, task_id: str, priority: Priority) -> bool:
        """Gives the id to a waiting worker, if one waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result((task_id, priority))
                return True
        return False

    def _push(self, task_id: str, priority: Priority, sequence: int) -> None:
        self._live[task_id] = priority
        self._depths[priority] += 1
        heapq.heappush(self._heap, (-priority, sequence, task_id))

    def remove(self, task_id: str) -> bool:
        """Takes a waiting id out (its heap entry is skipped later); False if not waiting."""
        priority = self._live.pop(task_id, None)
        if priority is None:
            return False
        self._depths[priority] -= 1
        return True

    def get_nowait(self) -> str | None:
        while self._heap:
            _, _, task_id = heapq.heappop(self._heap)
            if self.remove(task_id):
                return task_id
        return None

    async def get(self) -> str:
        """The next id by priority, waiting for one if the queue is empty."""
        if self._closed:
            raise QueueClosed
        task_id = self.get_nowait()
        if task_id is not None:
            return task_id
        waiter: asyncio.Future[tuple[str, Priority]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed_id, _ = await waiter
        except asyncio.CancelledError:
            # An id handed to a waiter that was cancelled at the same moment
            # goes back to the front of its level rather than being lost.
            if waiter.done() and not waiter.cancelled():
                self._requeue_front(*waiter.result())
            raise
        return handed_id

    def _requeue_front(self, task_id: str, priority: Priority) -> None:
        self._push(task_id, priority, -1)

    def drain(self) -> list[str]:
        """Removes and returns every waiting id, highest priority first."""
        drained = []
        while (task_id := self.get_nowait()) is not None:
            drained.append(task_id)
        return drained

    def close(self) -> None:
        """Wakes every waiting worker with QueueClosed; later puts and gets fail."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(QueueClosed())

    def __repr__(self) -> str:
        return f"<TaskQueue {len(self._live)}/{self.capacity} waiting, {len(self._waiters)} idle>"
