from __future__ import annotations

import asyncio

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
        queue.put(task_id, priority, sequence)
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
    queue.put("a", Priority.NORMAL, 1)
    queue.put("b", Priority.NORMAL, 2)
    with pytest.raises(QueueFull):
        queue.put("c", Priority.NORMAL, 3)
    assert queue.remove("a")
    queue.put("c", Priority.NORMAL, 3)
    assert len(queue) == 2
    assert queue.drain() == ["b", "c"]


def test_removed_entries_are_skipped_and_depth_is_per_priority() -> None:
    queue = TaskQueue(capacity=5)
    queue.put("a", Priority.HIGH, 1)
    queue.put("b", Priority.LOW, 2)
    queue.put("c", Priority.HIGH, 3)
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
    queue.put("x", Priority.NORMAL, 1)
    # The waiter's future is resolved by put itself: it is done after one turn.
    await asyncio.sleep(0)
    assert waiter.done()
    assert waiter.result() == "x"
    assert len(queue) == 0


async def test_a_waiter_cancelled_as_it_is_handed_an_id_gives_it_back() -> None:
    queue = TaskQueue(capacity=5)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put("x", Priority.HIGH, 1)
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
        queue.put("y", Priority.NORMAL, 1)
