from __future__ import annotations

import asyncio
import itertools

import pytest

from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.server.core.errors import QueueFull
from aiproc.server.core.models import Priority
from aiproc.server.core.queue import QueueClosed, TaskQueue
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.rate_share import RateShares, ShareSchedule


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


# -- A tenant's share of the rate limit --------------------------------------------------------

PATIENCE = 5.0
"""Seconds a test waits for what needs only a few turns of the event loop."""


def throttled_queue(clock: FakeClock, capacity: int = 200) -> TaskQueue:
    """A queue where tenant a may start 0.25 of 8 tasks a second (2/s, burst max(1, 0.25 * 8)
    = 2) and every other tenant is uncapped."""
    quotas = QuotasConfig(tenants=(TenantQuota("a", rate_share=0.25),))
    return TaskQueue(capacity, ShareSchedule(RateShares(quotas, rate=8.0, burst=8)), clock)


def take_all_eligible(queue: TaskQueue) -> list[str]:
    """What idle workers would take now: every id that may start at this instant."""
    taken = []
    while (task_id := queue.get_nowait()) is not None:
        taken.append(task_id)
    return taken


async def turns(n: int = 10) -> None:
    """Lets the event loop run `n` rounds (no time passes on any clock)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_throttled_tenants_backlog_does_not_hold_back_another_tenant() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, *(f"a-{n}" for n in range(1, 101)))
    put_all(queue, *(f"b-{n}" for n in range(1, 11)))

    taken = take_all_eligible(queue)

    # Without advancing the clock: all of b's tasks, in order, and a's burst only.
    assert [t for t in taken if t.startswith("b")] == [f"b-{n}" for n in range(1, 11)]
    assert [t for t in taken if t.startswith("a")] == ["a-1", "a-2"]
    assert queue.waiting_of("a") == 98
    assert queue.waiting_of("b") == 0


def test_a_throttled_tenant_starts_within_its_share_over_a_window() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, *(f"a-{n}" for n in range(1, 101)))
    put_all(queue, *(f"b-{n}" for n in range(1, 11)))
    starts: list[float] = []
    taken: list[str] = []
    for _ in range(200):  # 20 simulated seconds, looking every 100 ms
        for task_id in take_all_eligible(queue):
            taken.append(task_id)
            if task_id.startswith("a"):
                starts.append(clock.monotonic())
        clock.advance(0.1)

    rate, burst = 2.0, 2
    for window in (0.5, 1.0, 5.0, 20.0):
        for i, first in enumerate(starts):
            assert sum(1 for s in starts[i:] if s < first + window) <= rate * window + burst
    assert len(starts) >= rate * 20.0  # it gets its share, in its own order
    assert [t for t in taken if t.startswith("a")] == [f"a-{n}" for n in range(1, len(starts) + 1)]


def test_a_held_back_tenants_urgent_tasks_do_not_block_others_lower_ones() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    for n in range(1, 5):
        queue.put(f"a-{n}", Priority.CRITICAL, n, "a")
    queue.put("b-1", Priority.LOW, 10, "b")

    assert take_all_eligible(queue) == ["a-1", "a-2", "b-1"]
    clock.advance(0.5)
    assert take_all_eligible(queue) == ["a-3"]


def test_a_held_back_tenant_taken_late_does_not_let_a_newcomer_jump_the_others() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, "a-1", "a-2", "a-3", *(f"b-{n}" for n in range(1, 11)))
    assert [queue.get_nowait() for _ in range(6)] == ["a-1", "b-1", "a-2", "b-2", "b-3", "b-4"]
    clock.advance(0.5)
    assert queue.get_nowait() == "a-3"  # a's place came long ago; it is taken only now

    put_all(queue, "c-1", "c-2")

    # The newcomer takes turns with b from where b has got to, not from where a was.
    assert [queue.get_nowait() for _ in range(4)] == ["b-5", "c-1", "b-6", "c-2"]


def test_tasks_of_a_held_back_tenant_can_be_removed_and_the_rest_keep_their_order() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, "a-1", "a-2", "a-3", "a-4", "a-5")
    assert take_all_eligible(queue) == ["a-1", "a-2"]

    assert queue.remove("a-3")
    assert queue.remove("a-5")
    clock.advance(0.5)

    assert take_all_eligible(queue) == ["a-4"]
    assert queue.waiting_of("a") == 0
    assert len(queue) == 0


def test_drain_takes_held_back_tenants_tasks_too() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, "a-1", "a-2", "a-3", "b-1")
    assert take_all_eligible(queue) == ["a-1", "b-1", "a-2"]

    assert queue.drain() == ["a-3"]
    assert len(queue) == 0


async def test_a_worker_waiting_on_a_held_back_tenant_wakes_when_its_time_comes() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, "a-1", "a-2", "a-3", "a-4")
    assert take_all_eligible(queue) == ["a-1", "a-2"]

    worker = asyncio.create_task(queue.get())
    await turns()
    assert clock.sleepers == 1  # one timer, for when a may start again: no polling
    clock.advance(0.25)
    await turns()
    assert not worker.done()

    clock.advance(0.25)

    assert await asyncio.wait_for(worker, PATIENCE) == "a-3"
    queue.close()


async def test_a_worker_waiting_on_a_held_back_tenant_takes_another_tenants_new_task() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, "a-1", "a-2", "a-3")
    assert take_all_eligible(queue) == ["a-1", "a-2"]
    first, second = asyncio.create_task(queue.get()), asyncio.create_task(queue.get())
    await turns()

    put_all(queue, "b-1")

    assert await asyncio.wait_for(first, PATIENCE) == "b-1"  # at once: the clock stood still
    assert not second.done()
    clock.advance(0.5)
    assert await asyncio.wait_for(second, PATIENCE) == "a-3"
    queue.close()


async def test_close_stops_the_timer_and_wakes_waiting_workers() -> None:
    clock = FakeClock()
    queue = throttled_queue(clock)
    put_all(queue, "a-1", "a-2", "a-3")
    take_all_eligible(queue)
    worker = asyncio.create_task(queue.get())
    await turns()
    assert clock.sleepers == 1

    queue.close()

    with pytest.raises(QueueClosed):
        await asyncio.wait_for(worker, PATIENCE)
    await turns()
    assert clock.sleepers == 0
