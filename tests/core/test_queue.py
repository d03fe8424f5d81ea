from __future__ import annotations

import asyncio
import itertools

import pytest

from aiproc.server.core.errors import QueueFull
from aiproc.server.core.models import Priority
from aiproc.server.core.queue import QueueClosed, TaskQueue


def test_highest_priority_leaves_first_and_fifo_within_a_level() -> None:
    queue = TaskQueue(capacity=10)
    order = [
        ("low-1", Priority.LOW),
        ("normal-1", Priority.NORMAL),
        ("critical-1", Priority.CRITICAL),
        ("high-1", Priority.HIGH),
        ("normal-2", Priority.NORMAL),
        ("critical-2", Priority.CRITICAL),
        ("low-2", Priority.LOW),
        ("high-2", Priority.HIGH),
    ]
    for sequence, (task_id, priority) in enumerate(order):
        queue.put(task_id, priority, sequence, "t")
    assert queue.drain() == [
        "critical-1",
        "critical-2",
        "high-1",
        "high-2",
        "normal-1",
        "normal-2",
        "low-1",
        "low-2",
    ]


def test_full_queue_refuses_and_counts_only_live_entries() -> None:
    queue = TaskQueue(capacity=2)
    queue.put("a", Priority.NORMAL, 1, "t")
    queue.put("b", Priority.NORMAL, 2, "t")
    with pytest.raises(QueueFull):
        queue.put("c", Priority.NORMAL, 3, "t")
    assert queue.remove("a")
    queue.put("c", Priority.NORMAL, 3, "t")
    assert len(queue) == 2
    assert queue.drain() == ["b", "c"]


def test_removed_entries_are_skipped_and_depth_is_per_priority() -> None:
    queue = TaskQueue(capacity=5)
    queue.put("a", Priority.HIGH, 1, "t")
    queue.put("b", Priority.LOW, 2, "t")
    queue.put("c", Priority.HIGH, 3, "t")
    assert queue.depths()["high"] == 2
    assert queue.remove("a")
    assert not queue.remove("a")
    assert queue.depths()["high"] == 1
    assert queue.get_nowait() == "c"
    assert queue.get_nowait() == "b"
    assert queue.get_nowait() is None


async def test_put_hands_the_id_to_a_waiting_worker_without_polling() -> None:
    queue = TaskQueue(capacity=5)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # let the waiter register (one loop turn, not a timed wait)
    queue.put("x", Priority.NORMAL, 1, "t")
    # The waiter's future is resolved by put itself: it is done after one turn.
    await asyncio.sleep(0)
    assert waiter.done()
    assert waiter.result() == "x"
    assert len(queue) == 0


async def test_a_waiter_cancelled_as_it_is_handed_an_id_gives_it_back() -> None:
    queue = TaskQueue(capacity=5)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put("x", Priority.HIGH, 1, "t")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert "x" in queue
    assert queue.get_nowait() == "x"


async def test_close_wakes_waiters_with_queue_closed() -> None:
    queue = TaskQueue(capacity=5)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.close()
    with pytest.raises(QueueClosed):
        await waiter
    with pytest.raises(QueueClosed):
        queue.put("y", Priority.NORMAL, 1, "t")


_sequence = itertools.count(100)


def put_all(queue: TaskQueue, *tasks: str) -> None:
    """Puts ids named TENANT-N at normal priority, in this order."""
    for task_id in tasks:
        queue.put(task_id, Priority.NORMAL, next(_sequence), task_id.partition("-")[0])


def test_tenants_take_turns_within_a_level_and_each_keeps_its_own_order() -> None:
    queue = TaskQueue(capacity=20)
    put_all(queue, "a-1", "a-2", "a-3", "a-4", "a-5", "b-1", "b-2", "c-1")
    assert queue.drain() == ["a-1", "b-1", "c-1", "a-2", "b-2", "a-3", "a-4", "a-5"]


def test_a_newcomer_waits_for_at_most_one_task_of_a_tenant_with_a_backlog() -> None:
    queue = TaskQueue(capacity=20)
    put_all(queue, *(f"a-{n}" for n in range(1, 11)))
    assert [queue.get_nowait() for _ in range(3)] == ["a-1", "a-2", "a-3"]
    put_all(queue, "b-1", "b-2")
    assert [queue.get_nowait() for _ in range(4)] == ["a-4", "b-1", "a-5", "b-2"]


def test_priority_still_comes_before_fairness() -> None:
    queue = TaskQueue(capacity=20)
    put_all(queue, "a-1", "a-2")
    queue.put("b-urgent", Priority.CRITICAL, 200, "b")
    queue.put("a-urgent", Priority.CRITICAL, 201, "a")
    assert queue.drain() == ["b-urgent", "a-urgent", "a-1", "a-2"]


def test_a_tenant_with_nothing_left_waiting_starts_afresh() -> None:
    queue = TaskQueue(capacity=20)
    put_all(queue, "a-1", "a-2", "a-3")
    for task_id in ("a-1", "a-2", "a-3"):
        assert queue.remove(task_id)
    assert queue.waiting_of("a") == 0
    # Had a's removed tags been remembered, a-4 would queue behind b-2.
    put_all(queue, "b-1", "b-2", "a-4")
    assert queue.drain() == ["b-1", "a-4", "b-2"]


def test_waiting_counts_per_tenant_follow_puts_gets_and_removes() -> None:
    queue = TaskQueue(capacity=20)
    put_all(queue, "a-1", "a-2", "b-1")
    assert (queue.waiting_of("a"), queue.waiting_of("b"), queue.waiting_of("c")) == (2, 1, 0)
    assert queue.get_nowait() == "a-1"
    assert queue.remove("b-1")
    assert (queue.waiting_of("a"), queue.waiting_of("b")) == (1, 0)
