"""AckBatcher: acks applied in order, those added during an application together."""

from __future__ import annotations

import asyncio

import pytest

from aiproc.server.api.acks import AckBatcher


class Applied:
    """Records each application; the first waits for `release`."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, task_ids: list[str]) -> None:
        self.calls.append(task_ids)
        self.started.set()
        await self.release.wait()


async def test_acks_added_while_one_is_applied_go_together_in_the_next() -> None:
    applied = Applied()
    acks = AckBatcher(applied, most=100)
    running = asyncio.create_task(acks.run())
    acks.add(["a"])
    await applied.started.wait()
    acks.add(["b", "c"])
    acks.add(["d"])
    acks.close()
    applied.release.set()
    async with asyncio.timeout(5):
        await running
    assert applied.calls == [["a"], ["b", "c", "d"]]


async def test_one_application_takes_at_most_most_ids() -> None:
    applied = Applied()
    applied.release.set()
    acks = AckBatcher(applied, most=2)
    acks.add(["a", "b", "c", "d", "e"])
    acks.close()
    async with asyncio.timeout(5):
        await acks.run()
    assert applied.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_failed_application_ends_run_with_its_error() -> None:
    async def failing(task_ids: list[str]) -> None:
        raise OSError("no room")

    acks = AckBatcher(failing, most=10)
    acks.add(["a"])
    with pytest.raises(OSError, match="no room"):
        async with asyncio.timeout(5):
            await acks.run()


async def test_no_ack_is_taken_after_close() -> None:
    acks = AckBatcher(Applied(), most=10)
    acks.close()
    with pytest.raises(RuntimeError):
        acks.add(["a"])
    async with asyncio.timeout(5):
        await acks.run()  # nothing to apply: returns at once
