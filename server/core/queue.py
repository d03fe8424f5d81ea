"""The bounded priority queue of task ids that workers take from.

Critical > High > Normal > Low. Within a level, tenants (the callers a task
belongs to) take turns: each task gets a virtual start tag, its tenant's
previous tag in that level or the level's virtual time (the highest tag taken
so far), whichever is later, plus one. Taking the lowest tag first is
start-time fair queuing: FIFO within a tenant, and a tenant with 1,000 tasks
waiting delays a newcomer's first task by at most one task per other tenant.
With a single tenant the order is plain FIFO. A waiting worker is woken by
the enqueue itself (one future per waiter), never by polling.

A tenant over its share of the rate limit (resilience/rate_share.py) is held
back: its tasks keep their places but are passed over, and workers take the
next task in the same order from the tenants that may start, so a throttled
tenant neither holds a worker nor delays anyone. Each tenant's tasks wait in
a lane of their own and a heap holds each lane's first task, so passing over
a tenant costs one step whatever its backlog. When only held-back tenants
have tasks, idle workers wait until the first of them may start again (one
timer on the injected clock) or a new task comes, whichever is first.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter, deque
from dataclasses import dataclass
from operator import attrgetter

from aiproc.server.core.errors import QueueFull
from aiproc.server.core.models import Priority
from aiproc.server.resilience.clock import Clock, SystemClock
from aiproc.server.resilience.rate_share import ShareSchedule

_Key = tuple[int, float, int, str]
"""A waiting task's place, (-priority, tag, sequence, task id): the lowest leaves first; the
sequence breaks ties in acceptance order."""


class QueueClosed(Exception):
    """Raised to waiters when the queue is closed."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    priority: Priority
    tenant: str
    key: _Key


class TaskQueue:
    """Holds at most `capacity` task ids; `remove` takes one out wherever it is.

    With a `schedule`, a tenant starts tasks no faster than its share allows; `clock`
    (the system's by default) is the one the schedule's times are on.
    """

    def __init__(
        self, capacity: int, schedule: ShareSchedule | None = None, clock: Clock | None = None
    ) -> None:
        self.capacity = capacity
        self._schedule = schedule
        self._clock = clock or SystemClock()
        self._live: dict[str, _Waiting] = {}
        # Each tenant's waiting keys, a heap whose first entry always still waits (removed
        # entries further in are skipped when they come up), dropped once empty.
        self._lanes: dict[str, list[_Key]] = {}
        # The first key of the lane of every tenant that is not held back, with the tenant:
        # the lowest valid entry is the next task. An entry goes stale when its lane's first
        # changes or its tenant is held back; stale ones are dropped when they come up.
        self._fronts: list[tuple[_Key, str]] = []
        # Tenants over their share, and (a heap) when each may start again.
        self._held: set[str] = set()
        self._held_until: list[tuple[float, str]] = []
        self._virtual_time = dict.fromkeys(Priority, 0.0)
        # A tenant's last tag and waiting count per level, dropped when it has none
        # waiting there, so tenants that come and go leave nothing behind.
        self._last_tag: dict[tuple[Priority, str], float] = {}
        self._waiting_in_level: Counter[tuple[Priority, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()
        # Kept as counts, not derived from _live, so another thread (a metrics
        # exporter) can read them while this one changes the queue.
        self._depths = dict.fromkeys(Priority, 0)
        self._waiters: deque[asyncio.Future[_Waiting]] = deque()
        self._alarm: asyncio.Task[None] | None = None
        self._alarm_at = 0.0
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
        """Enqueues, handing the id straight to a waiting worker if it may start now.
        Raises QueueFull."""
        if self._closed:
            raise QueueClosed
        if len(self._live) >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} tasks waiting)")
        self._push(task_id, priority, sequence, tenant)
        self._serve()

    def restore(self, task_id: str, priority: Priority, sequence: int, tenant: str) -> None:
        """Enqueues a task accepted earlier (recovered, requeued), beyond capacity if need be:
        an accepted task is never refused later."""
        self._push(task_id, priority, sequence, tenant)
        self._serve()

    def _push(self, task_id: str, priority: Priority, sequence: int, tenant: str) -> None:
        level = (priority, tenant)
        tag = max(self._virtual_time[priority], self._last_tag.get(level, 0.0)) + 1.0
        self._last_tag[level] = tag
        self._insert(_Waiting(priority, tenant, (-priority, tag, sequence, task_id)))

    def _insert(self, waiting: _Waiting) -> None:
        self._live[waiting.key[3]] = waiting
        self._depths[waiting.priority] += 1
        self._waiting_in_level[(waiting.priority, waiting.tenant)] += 1
        self._per_tenant[waiting.tenant] += 1
        lane = self._lanes.setdefault(waiting.tenant, [])
        heapq.heappush(lane, waiting.key)
        if lane[0] == waiting.key and waiting.tenant not in self._held:
            heapq.heappush(self._fronts, (waiting.key, waiting.tenant))

    def remove(self, task_id: str) -> bool:
        """Takes a waiting id out (its lane entry is skipped later); False if not waiting."""
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
        self._tidy(waiting.tenant)

    def _tidy(self, tenant: str) -> None:
        """Drops the lane's first entries that no longer wait; a new first goes to the fronts."""
        lane = self._lanes[tenant]
        first = lane[0]
        while lane and not self._still_waits(lane[0]):
            heapq.heappop(lane)
        if not lane:
            del self._lanes[tenant]
        elif lane[0] != first and tenant not in self._held:
            heapq.heappush(self._fronts, (lane[0], tenant))

    def _still_waits(self, key: _Key) -> bool:
        waiting = self._live.get(key[3])
        return waiting is not None and waiting.key == key

    def get_nowait(self) -> str | None:
        """The next id that may start now, or None."""
        taken = self._take(self._clock.monotonic())
        return None if taken is None else taken.key[3]

    def _take(self, now: float) -> _Waiting | None:
        """Takes the first task, in queue order, of a tenant that may start at `now`."""
        self._release(now)
        while self._fronts:
            key, tenant = heapq.heappop(self._fronts)
            lane = self._lanes.get(tenant)
            if lane is None or lane[0] != key or tenant in self._held:
                continue  # stale
            if self._schedule is not None:
                ready_at = self._schedule.ready_at(tenant, now)
                if ready_at > now:
                    self._held.add(tenant)
                    heapq.heappush(self._held_until, (ready_at, tenant))
                    continue
                self._schedule.book(tenant, now)
            waiting = self._live.pop(key[3])
            # The highest tag taken, not the last: a held-back tenant's earlier tags taken
            # late must not pull newcomers ahead of the tasks already waiting.
            self._virtual_time[waiting.priority] = max(self._virtual_time[waiting.priority], key[1])
            self._forget(waiting)
            return waiting
        return None

    def _release(self, now: float) -> None:
        """Tenants whose time has come may start again: their lanes rejoin the fronts."""
        while self._held_until and self._held_until[0][0] <= now:
            _, tenant = heapq.heappop(self._held_until)
            self._held.discard(tenant)
            lane = self._lanes.get(tenant)
            if lane:
                heapq.heappush(self._fronts, (lane[0], tenant))

    async def get(self) -> str:
        """The next id by priority that may start, waiting for one if there is none."""
        if self._closed:
            raise QueueClosed
        taken = self._take(self._clock.monotonic())
        if taken is not None:
            return taken.key[3]
        waiter: asyncio.Future[_Waiting] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            handed = await waiter
        except asyncio.CancelledError:
            # An id handed to a waiter that was cancelled at the same moment goes back to
            # the place it had rather than being lost. The start booked for it stays booked:
            # a lost slot only slows its tenant down.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._insert(waiter.result())
                self._serve()
            raise
        return handed.key[3]

    def _serve(self) -> None:
        """Hands tasks that may start to waiting workers, first come first served."""
        if not self._waiters:
            return
        now = self._clock.monotonic()
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()  # cancelled while waiting
                continue
            taken = self._take(now)
            if taken is None:
                break
            self._waiters.popleft().set_result(taken)
        self._arm()

    def _arm(self) -> None:
        """While workers wait and tenants are held back, sets the timer that serves the
        workers when the first of those tenants may start again."""
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        if self._closed or not self._waiters or not self._held_until:
            return
        at = self._held_until[0][0]
        if self._alarm is not None:
            if self._alarm_at <= at:
                return
            self._alarm.cancel()
        self._alarm_at = at
        self._alarm = asyncio.get_running_loop().create_task(
            self._ring(at), name="aiproc-queue-alarm"
        )

    async def _ring(self, at: float) -> None:
        await self._clock.sleep(at - self._clock.monotonic())
        self._alarm = None
        self._serve()

    def drain(self) -> list[str]:
        """Removes and returns every waiting id (held-back tenants' too), in queue order."""
        drained = [w.key[3] for w in sorted(self._live.values(), key=attrgetter("key"))]
        for task_id in drained:
            self.remove(task_id)
        return drained

    def close(self) -> None:
        """Wakes every waiting worker with QueueClosed; later puts and gets fail."""
        self._closed = True
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(QueueClosed())

    def __repr__(self) -> str:
        return (
            f"<TaskQueue {len(self._live)}/{self.capacity} waiting, {len(self._waiters)} idle,"
            f" {len(self._held)} tenants held back>"
        )
