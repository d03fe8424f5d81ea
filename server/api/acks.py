"""The acks of one StreamResults call, applied behind the call's reader, many at a time.

Were the reader to wait for each ack's store write before reading on, a
Subscribe sent after an ack would wait for that write, and so would the
results of the ids it adds: a client acking result by result would fall
further behind with every result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

ApplyAcks = Callable[[list[str]], Awaitable[None]]


class AckBatcher:
    """Applies acked ids in the order they came, all those added while one application
    runs (up to `most`) going in the next one; `run` does the applying."""

    def __init__(self, apply: ApplyAcks, most: int) -> None:
        self._apply = apply
        self._most = most
        self._waiting: list[str] = []
        self._more = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        status = "closed" if self._closed else "open"
        return f"<AckBatcher [{status} | {len(self._waiting)} waiting]>"

    def add(self, task_ids: Iterable[str]) -> None:
        if self._closed:
            raise RuntimeError("the AckBatcher is closed")
        self._waiting.extend(task_ids)
        self._more.set()

    def close(self) -> None:
        """No more acks: `run` returns once it has applied those added."""
        self._closed = True
        self._more.set()

    async def run(self) -> None:
        """Applies acks as they are added, until closed; raises what applying raised."""
        while self._waiting or not self._closed:
            if not self._waiting:
                self._more.clear()
                await self._more.wait()
                continue
            task_ids = self._waiting[: self._most]
            del self._waiting[: self._most]
            await self._apply(task_ids)
