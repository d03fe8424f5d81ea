"""IdBatcher: ids handed on in order, those added while a batch is handled together."""

from __future__ import annotations

import asyncio

import pytest

from aiproc.server.core.batching import IdBatcher


class Handled:
    """Records each batch; the first waits for `release`."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, task_ids: list[str]) -> None:
        self.calls.append(task_ids)
        self.started.set()
        await self.release.wait()


async def test_ids_added_while_a_batch_is_handled_go_together_in_the_next() -> None:
    handled = Handled()
    batcher = IdBatcher(handled, most=100)
    running = asyncio.create_task(batcher.run())
    batcher.add(["a"])
    await handled.started.wait()
    batcher.add(["b", "c"])
    batcher.add(["d"])
    batcher.close()
    handled.release.set()
    async with asyncio.timeout(5):
        await running
    assert handled.calls == [["a"], ["b", "c", "d"]]


async def test_a_batch_takes_at_most_most_ids() -> None:
    handled = Handled()
    handled.release.set()
    batcher = IdBatcher(handled, most=2)
    batcher.add(["a", "b", "c", "d", "e"])
    batcher.close()
    async with asyncio.timeout(5):
        await batcher.run()
    assert handled.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_failed_batch_ends_run_with_its_error() -> None:
    async def failing(task_ids: list[str]) -> None:
        raise OSError("no room")

    batcher = IdBatcher(failing, most=10)
    batcher.add(["a"])
    with pytest.raises(OSError, match="no room"):
        async with asyncio.timeout(5):
            await batcher.run()


async def test_no_id_is_taken_after_close() -> None:
    batcher = IdBatcher(Handled(), most=10)
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.add(["a"])
    async with asyncio.timeout(5):
        await batcher.run()  # nothing to hand on: returns at once


async def test_with_a_linger_a_first_id_waits_for_others_until_the_batch_is_full() -> None:
    handled = Handled()
    handled.release.set()
    batcher = IdBatcher(handled, most=3, linger=3600)
    running = asyncio.create_task(batcher.run())
    batcher.add(["a"])
    await asyncio.sleep(0)  # one loop turn, not a timed wait: the batcher sees "a", lingers
    batcher.add(["b"])
    batcher.add(["c", "d"])
    async with asyncio.timeout(5):
        await handled.started.wait()  # full, so handed on long before the linger is over
        batcher.close()
        await running
    assert handled.calls == [["a", "b", "c"], ["d"]]


async def test_closing_cuts_a_linger_short() -> None:
    handled = Handled()
    handled.release.set()
    batcher = IdBatcher(handled, most=100, linger=3600)
    running = asyncio.create_task(batcher.run())
    batcher.add(["a"])
    await asyncio.sleep(0)  # one loop turn: the batcher sees "a" and lingers
    batcher.add(["b"])
    batcher.close()
    async with asyncio.timeout(5):
        await running
    assert handled.calls == [["a", "b"]]


async def test_room_comes_once_a_batch_is_taken_from_those_waiting() -> None:
    handled = Handled()
    batcher = IdBatcher(handled, most=2)
    batcher.add(["a", "b", "c"])
    room = asyncio.create_task(batcher.wait_for_room(most_waiting=2))
    running = asyncio.create_task(batcher.run())
    async with asyncio.timeout(5):
        await room  # "a" and "b" taken, "c" still waits: one is fewer than two
        assert handled.calls == [["a", "b"]]
        handled.release.set()
        batcher.close()
        await running
    assert handled.calls == [["a", "b"], ["c"]]
