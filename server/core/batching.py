"""Task ids handed on in batches: those given while one batch is handled go in the next.

A stream that handles ids one by one as they come (acks written to the store,
subscriptions or acks sent to the server) falls behind whenever ids come
faster than one round trip each; handing on each time all that came
meanwhile keeps up, in as few round trips as the pace allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

HandleIds = Callable[[list[str]], Awaitable[None]]


class IdBatcher:
    """Hands ids to `handle` in the order they were added, all those added while one
    batch is handled (up to `most`) going in the next; `run` does the handing on.

    With a `linger` (seconds), a batch's first id waits that long for others to
    join it, unless the batch fills up or the batcher is closed first: fewer,
    larger batches, for ids whose handing on may wait a little.
    """

    def __init__(self, handle: HandleIds, most: int, *, linger: float = 0.0) -> None:
        self._handle = handle
        self._most = most
        self._linger = linger
        self._waiting: list[str] = []
        self._more = asyncio.Event()
        self._taken = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        status = "closed" if self._closed else "open"
        return f"<IdBatcher [{status} | {len(self._waiting)} waiting]>"

    def add(self, task_ids: Iterable[str]) -> None:
        if self._closed:
            raise RuntimeError("the IdBatcher is closed")
        self._waiting.extend(task_ids)
        self._more.set()

    async def wait_for_room(self, most_waiting: int) -> None:
        """Returns once fewer than `most_waiting` ids wait: lets whoever adds them slow down
        to the pace they are handed on at, so that the waiting ones stay bounded."""
        while len(self._waiting) >= most_waiting:
            self._taken.clear()
            await self._taken.wait()

    def close(self) -> None:
        """No more ids: `run` returns once it has handed on those added."""
        self._closed = True
        self._more.set()

    async def run(self) -> None:
        """Hands ids on as they are added, until closed; raises what `handle` raised."""
        while self._waiting or not self._closed:
            if not self._waiting:
                self._more.clear()
                await self._more.wait()
                continue
            if self._linger:
                await self._fill_up()
            task_ids = self._waiting[: self._most]
            del self._waiting[: self._most]
            self._taken.set()
            await self._handle(task_ids)

    async def _fill_up(self) -> None:
        """Waits up to `linger` seconds for a full batch, or for the batcher to close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._linger):
                while len(self._waiting) < self._most and not self._closed:
                    self._more.clear()
                    await self._more.wait()
