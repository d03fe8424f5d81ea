"""The queue every replica shares: waiting ids in Redis, claimed under leases.

Each replica runs one dispatcher that claims as many ids as it has idle
workers (highest priority first, FIFO within a level, across all replicas) and
hands them over. A claimed id carries a lease in Redis that this replica renews
while the task runs; if the replica dies, the lease runs out and any replica's
reclaimer puts the task back in the queue (counting a crash), or dead-letters it
after max_crashes. An empty queue is waited on through the `wake` channel, with
a slow poll behind it in case a message is missed.

A tenant over its share of the rate limit is passed over by the claim itself
(lua.CLAIM), so its tasks never reach a worker early and never hold one. When
only such tenants have tasks waiting, the claim says when the first of them
may start, and the dispatcher waits until then (on the injected clock) or a
wake, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from aiproc.server.cluster.store import RedisStore
from aiproc.server.config import QuotasConfig
from aiproc.server.core.errors import StoreError
from aiproc.server.core.models import Priority, Task
from aiproc.server.core.queue import QueueClosed
from aiproc.server.core.work import DeadLetter, OnQueued
from aiproc.server.resilience.clock import Clock, SystemClock
from aiproc.server.resilience.rate_share import RateShares

log = logging.getLogger(__name__)

IDLE_POLL = 1.0
"""Seconds an idle dispatcher waits for a wake message before looking anyway."""
DEPTH_REFRESH = 1.0
"""Seconds between refreshes of the counts Stats and metrics show (waiting, undelivered)."""
ERROR_PAUSE = 1.0
"""Seconds a background loop waits after Redis failed it, before trying again."""


class RedisWorkQueue:
    """This replica's view of the shared queue (see the module docstring)."""

    def __init__(
        self,
        store: RedisStore,
        capacity: int,
        *,
        max_crashes: int,
        lease_ttl: float,
        idempotency_window: float,
        quotas: QuotasConfig | None = None,
        shares: RateShares | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._quotas = quotas or QuotasConfig()
        self._shares = shares
        self._clock = clock or SystemClock()
        self._idempotency_window = idempotency_window
        self._capacity = capacity
        self._max_crashes = max_crashes
        self._lease_ttl = lease_ttl
        self._waiters: deque[asyncio.Future[str]] = deque()
        self._wanted = asyncio.Event()
        """Set while a worker waits for an id."""
        self._woken = asyncio.Event()
        """Set when some replica made a task waiting since the dispatcher last looked, or
        when a tenant it passed over may start by now."""
        self._held: set[str] = set()
        """Ids claimed by this replica and not yet done: their leases are renewed."""
        self._depths = dict.fromkeys(Priority, 0)
        self._loops: list[asyncio.Task[None]] = []
        self._dead_letter: DeadLetter | None = None
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return sum(self._depths.values())

    def depths(self) -> dict[str, int]:
        return {priority.name.lower(): n for priority, n in self._depths.items()}

    async def waiting_of(self, tenant: str) -> int:
        return await self._store.waiting_of(tenant)

    def wake(self) -> None:
        """Called by the bus when a task became waiting somewhere."""
        self._woken.set()

    async def start(self, dead_letter: DeadLetter) -> None:
        # Nothing to rebuild: the queue lives in Redis. Tasks a dead process
        # was running come back when their leases run out (the reclaimer).
        self._dead_letter = dead_letter
        await self._refresh_counts()
        loops: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("dispatch", self._dispatch()),
            ("renew", self._every(self._lease_ttl / 3, self._renew)),
            ("reclaim", self._every(min(self._lease_ttl / 3, 1.0), self._reclaim)),
            ("depths", self._every(DEPTH_REFRESH, self._refresh_counts)),
        ]
        self._loops = [asyncio.create_task(c, name=f"aiproc-queue-{n}") for n, c in loops]

    async def admit(self, task: Task, on_queued: OnQueued | None = None) -> tuple[Task, bool]:
        if self._closed:
            raise QueueClosed
        admitted, created = await self._store.admit(
            task,
            self._capacity,
            not_before=task.created_at - self._idempotency_window,
            tenant_limit=self._quotas.max_queued(task.client_id),
        )
        if created:
            self._depths[admitted.spec.priority] += 1  # until the next refresh says better
            if on_queued is not None:
                on_queued(admitted)
        return admitted, created

    async def get(self) -> str:
        if self._closed:
            raise QueueClosed
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wanted.set()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Claimed for this worker as it was cancelled: back to the queue.
                await self._unclaim(waiter.result())
            raise

    def done(self, task_id: str) -> None:
        self._held.discard(task_id)

    async def withdraw(self, task_id: str) -> bool:
        # Only a check: recording the cancel takes the id out of the queue in
        # the same step, so a replica claiming it meanwhile finds it cancelled.
        return await self._store.is_waiting(task_id)

    async def requeue(self, task_id: str) -> Task | None:
        return await self._store.requeue(task_id, crashed=False)

    async def give_back(self, task_id: str) -> None:
        self._held.discard(task_id)
        await self._store.give_back(task_id)

    async def drain(self) -> list[str]:
        return []  # the queue outlives this replica: other replicas run what waits

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(QueueClosed())
        self._wanted.set()  # lets the dispatcher see it is closed

    async def stop(self) -> None:
        self.close()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []

    def _idle_workers(self) -> int:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()  # cancelled while waiting
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def _dispatch(self) -> None:
        while not self._closed:
            await self._wanted.wait()
            wanted = self._idle_workers()
            if self._closed:
                return
            if not wanted:
                self._wanted.clear()
                continue
            # Cleared before looking, so a task queued while we look wakes us.
            self._woken.clear()
            try:
                claimed = await self._store.claim(wanted, self._lease_ttl, self._shares)
            except (RedisError, StoreError) as exc:
                log.warning("queue: cannot claim tasks from Redis (%s); retrying", exc)
                await asyncio.sleep(ERROR_PAUSE)
                continue
            for task_id in claimed.ids:
                await self._hand_over(task_id)
            if not claimed.ids:
                await self._idle(claimed.held_back_for)

    async def _idle(self, held_back_for: float | None) -> None:
        """Waits for a wake, for `held_back_for` seconds when tenants were passed over, or
        for IDLE_POLL, whichever ends first."""
        alarm = None
        if held_back_for is not None:
            alarm = asyncio.create_task(self._wake_after(held_back_for))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), IDLE_POLL)
        finally:
            if alarm is not None:
                alarm.cancel()

    async def _wake_after(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self._woken.set()

    async def _hand_over(self, task_id: str) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._held.add(task_id)
                waiter.set_result(task_id)
                return
        await self._unclaim(task_id)  # every worker it was claimed for went away

    async def _unclaim(self, task_id: str) -> None:
        self._held.discard(task_id)
        try:
            await self._store.unclaim(task_id)
        except (RedisError, StoreError) as exc:
            # Its lease runs out and a reclaimer queues it again.
            log.warning("queue: cannot give back task %s (%s); its lease will", task_id, exc)

    async def _renew(self) -> None:
        if self._held:
            await self._store.renew(list(self._held), self._lease_ttl)

    async def _reclaim(self) -> None:
        dead = await self._store.reclaim(self._max_crashes, self._lease_ttl)
        for task in dead:
            crashes = task.crashes + 1
            log.warning(
                "task %s was running during %d crashes: dead-lettered", task.task_id, crashes
            )
            if self._dead_letter is None:
                continue
            try:
                await self._dead_letter(task)
            except Exception:
                # Not for the reclaimer to die of (it would reclaim nothing more here):
                # the task stays leased to this replica, so when that lease runs out a
                # reclaimer dead-letters it again.
                log.exception("queue: could not dead-letter task %s; will retry", task.task_id)

    async def _refresh_counts(self) -> None:
        """What Stats and metrics show of the shared state, which other replicas change."""
        self._depths.update(await self._store.waiting())
        await self._store.refresh()

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        """Runs `step` every `seconds`; a Redis failure is logged and the loop goes on."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except (RedisError, StoreError) as exc:
                log.warning("queue: %s failed (%s); will retry", step.__name__, exc)

    def __repr__(self) -> str:
        return (
            f"<RedisWorkQueue {len(self)}/{self._capacity} waiting, "
            f"{len(self._held)} held, {len(self._waiters)} idle>"
        )
