"""Fan-out of results and progress events to StreamResults subscribers.

Each subscription has its own bounded buffer. Publishing never waits: when a
subscriber's buffer is full the item is dropped *from the buffer only* and the
subscription is marked to resynchronise, i.e. to read what it missed back from
the store (where every result stays until acknowledged). So a slow subscriber
stalls neither the workers nor other subscribers, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Protocol

from aiproc.server.core.models import ProgressEvent, TaskResult

StreamItem = TaskResult | ProgressEvent

DEFAULT_BUFFER = 512


class PendingResults(Protocol):
    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]: ...


class Subscription:
    """What one stream receives: all of a client's tasks, or only some ids."""

    def __init__(self, hub: ResultsHub, client_id: str, buffer: int) -> None:
        self._hub = hub
        self.client_id = client_id
        self.all_tasks = False
        self.include_progress = False
        self.task_ids: set[str] = set()
        self._buffer: asyncio.Queue[StreamItem | None] = asyncio.Queue(maxsize=buffer)
        # Sent and unacknowledged results: task id -> the sent result's completed_at. A task
        # requeued on another replica (which cannot clear this) finishes again with another
        # completed_at, and that result is new, not a copy.
        self._sent: dict[str, float] = {}
        self._buffered: dict[str, int] = {}  # result ids in the buffer -> copies
        self._ack_deferred: set[str] = set()
        self._resync = False
        """Everything covered must be re-read from the store (a result was dropped)."""
        self._newly_added: set[str] = set()
        """Ids added since the reader last looked: only their results need reading."""
        self._closed = False

    def wants(self, task_id: str, client_id: str) -> bool:
        return client_id == self.client_id and (self.all_tasks or task_id in self.task_ids)

    async def add(
        self, task_ids: Collection[str], *, all_tasks: bool, include_progress: bool
    ) -> None:
        """Widens the subscription; the already finished, unacknowledged results it now
        covers are read from the store on the reader's next step."""
        widened = all_tasks and not self.all_tasks
        self._newly_added.update(t for t in task_ids if t not in self.task_ids)
        self.task_ids.update(task_ids)
        self.all_tasks = self.all_tasks or all_tasks
        self.include_progress = self.include_progress or include_progress
        # Registered first, read second: a result finishing in between arrives
        # twice and the `_sent` check drops the copy. Only what is new is read, so
        # subscribing to ids one at a time stays linear, not quadratic.
        if widened:
            self.resynchronise()
        elif self._newly_added:
            self._wake_reader()

    def resynchronise(self) -> None:
        """Re-reads the pending results from the store on the reader's next step."""
        self._resync = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        if not self._buffer.full():
            self._buffer.put_nowait(None)

    def offer(self, item: StreamItem) -> None:
        """Called by the hub; never blocks."""
        if self._closed:
            return
        if isinstance(item, ProgressEvent) and not self.include_progress:
            return
        try:
            self._buffer.put_nowait(item)
        except asyncio.QueueFull:
            if isinstance(item, TaskResult):
                self._resync = True
            return
        if isinstance(item, TaskResult):
            self._buffered[item.task_id] = self._buffered.get(item.task_id, 0) + 1

    def acknowledged(self, task_ids: Collection[str]) -> None:
        """Forgets acknowledged ids so the sent record stays as small as the unacked backlog.

        An id with a copy still in the buffer stays in the sent record until that
        copy is popped, or the copy would be sent a second time.
        """
        for task_id in task_ids:
            if task_id in self._buffered:
                self._ack_deferred.add(task_id)
            else:
                self._sent.pop(task_id, None)

    def close(self) -> None:
        """Ends iteration once the buffer is drained."""
        self._closed = True
        # A full buffer needs no marker: the reader sees `_closed` once it drains.
        with contextlib.suppress(asyncio.QueueFull):
            self._buffer.put_nowait(None)

    async def _missed(self) -> list[TaskResult]:
        everything = None if self.all_tasks else self.task_ids
        ids = everything if self._resync else self._newly_added
        self._resync = False
        self._newly_added = set()
        results = await self._hub.store.pending_results(self.client_id, ids)
        return [r for r in results if not self._was_sent(r)]

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        while True:
            if self._resync or self._newly_added:
                for result in await self._missed():
                    self._sent[result.task_id] = result.completed_at
                    yield result
            if self._closed and self._buffer.empty():
                return
            item = await self._buffer.get()
            if item is None:
                continue
            if isinstance(item, TaskResult):
                if self._popped(item):
                    continue
                self._sent[item.task_id] = item.completed_at
            yield item

    def _was_sent(self, result: TaskResult) -> bool:
        return self._sent.get(result.task_id) == result.completed_at

    def _popped(self, result: TaskResult) -> bool:
        """Bookkeeping for a result taken from the buffer; True if it was already sent."""
        task_id = result.task_id
        copies = self._buffered.pop(task_id, 1) - 1
        if copies:
            self._buffered[task_id] = copies
        already_sent = self._was_sent(result)
        if not copies and task_id in self._ack_deferred:
            self._ack_deferred.discard(task_id)
            self._sent.pop(task_id, None)
        return already_sent


class ResultsHub:
    """Routes each published item to the subscriptions that want it."""

    def __init__(self, store: PendingResults, buffer: int = DEFAULT_BUFFER) -> None:
        self.store = store
        self._buffer = buffer
        self._subscriptions: set[Subscription] = set()

    def __len__(self) -> int:
        return len(self._subscriptions)

    def open(self, client_id: str) -> Subscription:
        subscription = Subscription(self, client_id, self._buffer)
        self._subscriptions.add(subscription)
        return subscription

    def discard(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscriptions.discard(subscription)

    def publish(self, item: StreamItem) -> None:
        for subscription in self._subscriptions:
            if subscription.wants(item.task_id, item.client_id):
                subscription.offer(item)

    def wants(self, task_id: str, client_id: str) -> bool:
        """Whether any subscription here would receive this task's result."""
        return any(s.wants(task_id, client_id) for s in self._subscriptions)

    def resync(self) -> None:
        """Makes every subscription re-read its pending results from the store, for when
        news of some may have been missed."""
        for subscription in self._subscriptions:
            subscription.resynchronise()

    def acknowledged(self, client_id: str, task_ids: Collection[str]) -> None:
        for subscription in self._subscriptions:
            if subscription.client_id == client_id:
                subscription.acknowledged(task_ids)

    def close(self) -> None:
        """Ends every subscription after it has drained its buffer."""
        for subscription in self._subscriptions:
            subscription.close()

    def __repr__(self) -> str:
        return f"<ResultsHub subscriptions={len(self._subscriptions)}>"
