"""The bounded priority queue of task ids that workers take from.

Critical > High > Normal > Low. Within a level, tenants (the callers a task
belongs to) take turns: each task gets a virtual start tag, its tenant's
previous tag in that level or the level's virtual time (the tag of the task
taken last), whichever is later, plus one. Taking the lowest tag first is
start-time fair queuing: FIFO within a tenant, and a tenant with 1,000 tasks
waiting delays a newcomer's first task by at most one task per other tenant.
With a single tenant the order is plain FIFO. A waiting worker is woken by
the enqueue itself (one future per waiter), never by polling.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter, deque
from dataclasses import dataclass

from aiproc.server.core.errors import QueueFull
from aiproc.server.core.models import Priority


class QueueClosed(Exception):
    """Raised to waiters when the queue is closed."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    priority: Priority
    tenant: str
    tag: float


class TaskQueue:
    """Holds at most `capacity` task ids; `remove` takes one out wherever it is."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # (-priority, tag, sequence, task_id): the heap pops the highest priority,
        # then the lowest virtual tag; the sequence breaks ties in acceptance order.
        self._heap: list[tuple[int, float, int, str]] = []
        self._live: dict[str, _Waiting] = {}
        self._virtual_time = dict.fromkeys(Priority, 0.0)
        # A tenant's last tag and waiting count per level, dropped when it has none
        # waiting there, so tenants that come and go leave nothing behind.
        self._last_tag: dict[tuple[Priority, str], float] = {}
        self._waiting_in_level: Counter[tuple[Priority, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()
        # Kept as counts, not derived from _live, so another thread (a metrics
        # exporter) can read them while this one changes the queue.
        self._depths = dict.fromkeys(Priority, 0)
        self._waiters: deque[asyncio.Future[tuple[str, Priority, str]]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def depths(self) -> dict[str, int]:
        """Waiting ids per priority name; safe to call from another thread."""
        return {priority.name.lower(): n for priority, n in self._depths.items()}

    def waiting_of(self, tenant: str) -> int:
        """Ids of `tenant` waiting, over all levels."""
        return self._per_tenant[tenant]

    def put(self, task_id: str, priority: Priority, sequence: int, tenant: str) -> None:
        """Enqueues, or hands the id straight to a waiting worker. Raises QueueFull."""
        if self._closed:
            raise QueueClosed
        if self._hand_over(task_id, priority, tenant):
            return
        if len(self._live) >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} tasks waiting)")
        self._push(task_id, priority, sequence, tenant)

    def restore(self, task_id: str, priority: Priority, sequence: int, tenant: str) -> None:
        """Enqueues a task accepted earlier (recovered, requeued), beyond capacity if need be:
        an accepted task is never refused later."""
        if not self._hand_over(task_id, priority, tenant):
            self._push(task_id, priority, sequence, tenant)

    def _hand_over(self, task_id: str, priority: Priority, tenant: str) -> bool:
        """Gives the id to a waiting worker, if one waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result((task_id, priority, tenant))
                return True
        return False

    def _push(
        self, task_id: str, priority: Priority, sequence: int, tenant: str, *, front: bool = False
    ) -> None:
        level = (priority, tenant)
        if front:
            # Every waiting tag of the level is at least its virtual time, and the
            # sequence -1 wins the tie.
            tag = self._virtual_time[priority]
        else:
            tag = max(self._virtual_time[priority], self._last_tag.get(level, 0.0)) + 1.0
            self._last_tag[level] = tag
        self._live[task_id] = _Waiting(priority, tenant, tag)
        self._depths[priority] += 1
        self._waiting_in_level[level] += 1
        self._per_tenant[tenant] += 1
        heapq.heappush(self._heap, (-priority, tag, sequence, task_id))

    def remove(self, task_id: str) -> bool:
        """Takes a waiting id out (its heap entry is skipped later); False if not waiting."""
        waiting = self._live.pop(task_id, None)
        if waiting is None:
            return False
        self._forget(waiting)
        return True

    def _forget(self, waiting: _Waiting) -> None:
        self._depths[waiting.priority] -= 1
        level = (waiting.priority, waiting.tenant)
        self._waiting_in_level[level] -= 1
        if not self._waiting_in_level[level]:
            del self._waiting_in_level[level]
            self._last_tag.pop(level, None)
        self._per_tenant[waiting.tenant] -= 1
        if not self._per_tenant[waiting.tenant]:
            del self._per_tenant[waiting.tenant]

    def get_nowait(self) -> str | None:
        while self._heap:
            _, tag, _, task_id = heapq.heappop(self._heap)
            waiting = self._live.pop(task_id, None)
            if waiting is not None:
                self._virtual_time[waiting.priority] = tag
                self._forget(waiting)
                return task_id
        return None

    async def get(self) -> str:
        """The next id by priority, waiting for one if the queue is empty."""
        if self._closed:
            raise QueueClosed
        task_id = self.get_nowait()
        if task_id is not None:
            return task_id
        waiter: asyncio.Future[tuple[str, Priority, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            handed_id, _, _ = await waiter
        except asyncio.CancelledError:
            # An id handed to a waiter that was cancelled at the same moment
            # goes back to the front of its level rather than being lost.
            if waiter.done() and not waiter.cancelled():
                self._requeue_front(*waiter.result())
            raise
        return handed_id

    def _requeue_front(self, task_id: str, priority: Priority, tenant: str) -> None:
        self._push(task_id, priority, -1, tenant, front=True)

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
