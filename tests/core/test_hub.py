"""Result fan-out: bounded buffers, resynchronisation from the store, no duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence

from aiproc.server.core.hub import ResultsHub, StreamItem, Subscription
from aiproc.server.core.models import Task, TaskResult, TaskSpec, TaskState
from aiproc.server.store.memory import MemoryStore


async def finish(store: MemoryStore, hub: ResultsHub, n: int, client: str = "c") -> TaskResult:
    task_id = f"{n:032x}"
    await store.put(Task(task_id, client, TaskSpec("https://e.com", "x"), created_at=0.0))
    result = TaskResult(
        task_id=task_id,
        client_id=client,
        url="https://e.com",
        state=TaskState.SUCCEEDED,
        enhanced_content=str(n),
    )
    assert await store.finish(result, finished_at=float(n))
    hub.publish(result)
    return result


async def take(subscription: Subscription, n: int) -> list[StreamItem]:
    items: list[StreamItem] = []
    iterator: AsyncIterator[StreamItem] = aiter(subscription)
    async with asyncio.timeout(5):
        while len(items) < n:
            items.append(await anext(iterator))
    return items


async def test_a_slow_subscriber_gets_every_result_once_after_overflowing() -> None:
    store = MemoryStore(retention=60)
    hub = ResultsHub(store, buffer=4)
    subscription = hub.open("c")
    await subscription.add((), all_tasks=True, include_progress=False)
    for n in range(50):  # nobody reads: the buffer overflows
        await finish(store, hub, n)
    items = await take(subscription, 50)
    ids = [item.task_id for item in items]
    assert sorted(ids) == sorted(f"{n:032x}" for n in range(50))
    assert len(set(ids)) == 50


async def test_subscribing_late_delivers_already_finished_unacked_results() -> None:
    store = MemoryStore(retention=60)
    hub = ResultsHub(store)
    first = await finish(store, hub, 1)
    second = await finish(store, hub, 2)
    await store.ack("c", [first.task_id])
    subscription = hub.open("c")
    await subscription.add([second.task_id], all_tasks=False, include_progress=False)
    items = await take(subscription, 1)
    assert [item.task_id for item in items] == [second.task_id]


async def test_subscribers_only_see_their_own_client_and_ids() -> None:
    store = MemoryStore(retention=60)
    hub = ResultsHub(store)
    mine, others, other_client = hub.open("c"), hub.open("c"), hub.open("d")
    await mine.add([f"{1:032x}"], all_tasks=False, include_progress=False)
    await others.add((), all_tasks=True, include_progress=False)
    await other_client.add((), all_tasks=True, include_progress=False)
    await finish(store, hub, 1)
    await finish(store, hub, 2)
    await finish(store, hub, 3, client="d")
    assert [i.task_id for i in await take(mine, 1)] == [f"{1:032x}"]
    assert [i.task_id for i in await take(others, 2)] == [f"{1:032x}", f"{2:032x}"]
    assert [i.task_id for i in await take(other_client, 1)] == [f"{3:032x}"]


async def test_an_acked_result_still_buffered_is_not_sent_twice() -> None:
    store = MemoryStore(retention=60)
    hub = ResultsHub(store)
    subscription = hub.open("c")
    result = await finish(store, hub, 1)  # finished before the subscription: store only
    await subscription.add((), all_tasks=True, include_progress=False)
    hub.publish(result)  # and a copy in the buffer as well
    first = await take(subscription, 1)
    await store.ack("c", [result.task_id])
    hub.acknowledged("c", [result.task_id])
    later = await finish(store, hub, 2)
    second = await take(subscription, 1)
    assert [i.task_id for i in first + second] == [result.task_id, later.task_id]


async def test_close_ends_iteration_after_the_buffer_drains() -> None:
    store = MemoryStore(retention=60)
    hub = ResultsHub(store)
    subscription = hub.open("c")
    await subscription.add((), all_tasks=True, include_progress=False)
    await finish(store, hub, 1)
    hub.close()
    items = [item async for item in subscription]
    assert [i.task_id for i in items] == [f"{1:032x}"]


class CountingStore(MemoryStore):
    """Counts the ids each resynchronisation asks the store for."""

    def __init__(self) -> None:
        super().__init__(retention=60)
        self.ids_read = 0

    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]:
        self.ids_read += (
            len(self._pending.get(client_id, {})) if task_ids is None else len(task_ids)
        )
        return await super().pending_results(client_id, task_ids)


async def test_subscribing_to_ids_one_at_a_time_reads_each_once() -> None:
    store = CountingStore()
    hub = ResultsHub(store)
    subscription = hub.open("c")
    results = [await finish(store, hub, n) for n in range(200)]  # finished before subscribing
    iterator: AsyncIterator[StreamItem] = aiter(subscription)
    delivered = []
    async with asyncio.timeout(5):
        for result in results:  # as submit-batch does: one Subscribe per task
            await subscription.add([result.task_id], all_tasks=False, include_progress=False)
            delivered.append((await anext(iterator)).task_id)
    assert delivered == [r.task_id for r in results]
    assert store.ids_read == len(results)  # not 1 + 2 + ... + 200
