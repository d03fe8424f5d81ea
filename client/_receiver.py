"""A background all-tasks subscription that buffers results for polling callers."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from aiproc.client.errors import AiprocClientError, Unavailable
from aiproc.client.models import TaskResult
from aiproc.client.stream import CLOSE_GRACE, ResultStream


class Receiver:
    """Reads results of every task of the client into a bounded buffer, in the background.

    When the buffer is full it stops reading, so gRPC flow control holds the
    server back; nothing is dropped. A result is acknowledged only when taken.
    """

    def __init__(self, stream: ResultStream, buffer_size: int) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._stream = stream
        self._buffer: asyncio.Queue[TaskResult] = asyncio.Queue(maxsize=buffer_size)
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self.error: AiprocClientError | None = None
        """Why the subscription ended, once it has."""

    def __repr__(self) -> str:
        status = "ended" if self.error else "running" if self._pump else "not started"
        size = f"{self._buffer.qsize()}/{self._buffer.maxsize}"
        return f"<Receiver [{status} | {size} buffered]>"

    async def start(self) -> None:
        """Opens the subscription and starts reading it."""
        await self._stream.__aenter__()
        self._pump = asyncio.create_task(self._read_all(), name="aiproc-receiver")

    def take(self, limit: int | None) -> list[TaskResult]:
        """Up to `limit` buffered results (all with None), without waiting."""
        taken: list[TaskResult] = []
        while not self._buffer.empty() and (limit is None or len(taken) < limit):
            taken.append(self._buffer.get_nowait())
        return taken

    async def ack(self, results: list[TaskResult]) -> None:
        """Acknowledges results handed to the caller."""
        # The caller already holds these results; a failed ack only means the
        # server delivers them again on the next subscription (at least once).
        with contextlib.suppress(AiprocClientError):
            await self._stream.ack(result.task_id for result in results)

    async def aclose(self) -> None:
        """Ends the subscription once the server has taken the acks; buffered results
        are dropped unacknowledged, so the server delivers them again later."""
        self._closing = True
        self.take(None)  # frees a reader blocked on the full buffer
        if self._pump is not None:
            if not self._pump.done():
                await self._stream.done_writing()
                await asyncio.wait([self._pump], timeout=CLOSE_GRACE)
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        self._stream.abort()

    async def _read_all(self) -> None:
        try:
            async for item in self._stream:
                if isinstance(item, TaskResult) and not self._closing:
                    await self._buffer.put(item)
        except AiprocClientError as exc:
            self.error = exc
        else:
            self.error = Unavailable(
                grpc.StatusCode.UNAVAILABLE, "the server ended the result stream"
            )
