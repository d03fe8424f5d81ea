"""`ResultStream`: one StreamResults call, read as an async iterator of dataclasses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

import grpc

from aiproc.client._convert import progress_from_proto, result_from_proto
from aiproc.client._reading import read_next
from aiproc.client.errors import AiprocClientError, Unavailable, error_from_status, map_rpc_error
from aiproc.client.models import ProgressEvent, TaskResult
from aiproc.v1 import processor_service_pb2 as pb

StreamCall = grpc.aio.StreamStreamCall[pb.StreamResultsRequest, pb.StreamResultsResponse]

CLOSE_GRACE = 2.0
"""Seconds `aclose` waits for the server to end the call after the client half-closes it."""
ACK_IDS_PER_MESSAGE = 5_000
"""Task ids per Ack message at most (the server takes up to 10,000)."""
ACK_LINGER = 0.005
"""Seconds an ack waits for others to share its message (closing sends at once). A write
takes about as long as reading the next result, so without a wait each result's ack would
go alone: this gathers a burst's acks into a few messages, for the client and the server."""


class ResultStream:
    """Results (and progress events, when asked) of the subscribed tasks, on one call.

    Use it as an async context manager; iterate it for `TaskResult` and
    `ProgressEvent` objects; `subscribe` adds task ids to the same call and
    `ack` tells the server a result is safely processed (unacknowledged
    results are delivered again on the next stream). Failures of the call
    raise `AiprocClientError`.
    """

    def __init__(
        self,
        open_call: Callable[[], StreamCall],
        *,
        task_ids: Iterable[str] = (),
        all_tasks: bool = False,
        include_progress: bool = False,
    ) -> None:
        self._open_call = open_call
        self._initial_ids = tuple(task_ids)
        self._all_tasks = all_tasks
        self._include_progress = include_progress
        self._call: StreamCall | None = None
        # grpc.aio allows one write in flight per call; subscribe and ack may race.
        self._write_lock = asyncio.Lock()
        self._subscribed = 0
        self._received = 0
        self._unsent_acks: list[str] = []
        self._ack_sender: asyncio.Task[None] | None = None
        self._send_acks_now = asyncio.Event()
        self._ack_error: BaseException | None = None
        """Why acks could not be sent, raised by the next `ack`."""
        self._half_closed = False
        self._closed = False

    def __repr__(self) -> str:
        scope = "all tasks" if self._all_tasks else f"{self._subscribed} task ids"
        status = "closed" if self._closed else "open" if self._call is not None else "not opened"
        return f"<ResultStream [{status} | {scope} | {self._received} received]>"

    async def __aenter__(self) -> Self:
        if self._call is not None or self._closed:
            raise RuntimeError("a ResultStream can be entered only once")
        self._call = self._open_call()
        try:
            if self._all_tasks or self._initial_ids:
                await self._send_subscribe(self._initial_ids, all_tasks=self._all_tasks)
        except BaseException:
            self._call.cancel()
            self._closed = True
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.aclose()
        else:
            self.abort()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TaskResult | ProgressEvent:
        call = self._opened()
        while (
            not self._closed
            and (message := await read_next(call, pb.StreamResultsResponse)) is not None
        ):
            kind = message.WhichOneof("kind")
            # A kind this client does not know (a newer server) is skipped, not fatal.
            if kind == "result":
                self._received += 1
                return result_from_proto(message.result)
            if kind == "progress":
                return progress_from_proto(message.progress)
        raise StopAsyncIteration

    async def subscribe(self, task_ids: Iterable[str]) -> None:
        """Adds these task ids to the stream; their results arrive on it."""
        ids = tuple(task_ids)
        if ids:
            await self._send_subscribe(ids, all_tasks=False)

    async def ack(self, task_ids: Iterable[str]) -> None:
        """Tells the server these results are processed, so they are not delivered again.

        Returns without waiting for the message to be written: the ids go out in the
        background, together with the other acks of the next few milliseconds
        (ACK_LINGER), so a loop that acks each result as it reads it neither waits a round
        trip per result nor sends a message per result. `done_writing` and `aclose` send
        what is still waiting at once, before they close. If sending fails, the next `ack`
        raises why.
        """
        self._opened()
        if self._ack_error is not None:
            raise self._ack_error
        if self._closed or self._half_closed:
            raise RuntimeError("the ResultStream is closed")
        self._unsent_acks.extend(task_ids)
        if self._unsent_acks and (self._ack_sender is None or self._ack_sender.done()):
            self._ack_sender = asyncio.create_task(self._send_acks(), name="aiproc-acks")

    async def _send_acks(self) -> None:
        while self._unsent_acks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_LINGER):
                    await self._send_acks_now.wait()
            ids = self._unsent_acks[:ACK_IDS_PER_MESSAGE]
            del self._unsent_acks[:ACK_IDS_PER_MESSAGE]
            try:
                await self._write(pb.StreamResultsRequest(ack=pb.Ack(task_ids=ids)))
            except (AiprocClientError, RuntimeError) as exc:
                # Kept for a resend: unacknowledged results would come back anyway.
                self._unsent_acks[:0] = ids
                self._ack_error = exc
                return

    async def _acks_sent(self) -> None:
        """Waits until the acks made so far are written (or could not be)."""
        if self._ack_sender is not None:
            self._send_acks_now.set()
            await asyncio.wait([self._ack_sender])  # its failure is kept, not raised here

    async def done_writing(self) -> None:
        """Half-closes the call once the acks made so far are sent: no more subscribes or
        acks; the server then ends it."""
        call = self._opened()
        await self._acks_sent()
        async with self._write_lock:
            if not self._half_closed and not call.done():
                self._half_closed = True
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.done_writing()

    async def aclose(self) -> None:
        """Ends the call after the server has taken every acknowledgement already sent."""
        if self._call is None or self._closed:
            self._closed = True
            return
        call = self._call
        try:
            await self.done_writing()
            self._closed = True
            # Cancelling right away could drop acks still in flight, so wait for the
            # server to end the call; results read here are unacked and come back later.
            async with asyncio.timeout(CLOSE_GRACE):
                while await read_next(call, pb.StreamResultsResponse) is not None:
                    pass
        except (AiprocClientError, TimeoutError):
            pass
        finally:
            self._closed = True
            call.cancel()

    def abort(self) -> None:
        """Cancels the call at once; unacknowledged results are delivered again later."""
        self._closed = True
        if self._ack_sender is not None:
            self._ack_sender.cancel()
        if self._call is not None:
            self._call.cancel()

    def _opened(self) -> StreamCall:
        if self._call is None:
            raise RuntimeError("use 'async with' to open the ResultStream first")
        return self._call

    async def _send_subscribe(self, task_ids: tuple[str, ...], *, all_tasks: bool) -> None:
        subscribe = pb.Subscribe(
            task_ids=task_ids, all_tasks=all_tasks, include_progress=self._include_progress
        )
        await self._write(pb.StreamResultsRequest(subscribe=subscribe))
        self._subscribed += len(task_ids)

    async def _write(self, request: pb.StreamResultsRequest) -> None:
        call = self._opened()
        if self._closed or self._half_closed:
            raise RuntimeError("the ResultStream is closed")
        async with self._write_lock:
            try:
                with map_rpc_error():
                    await call.write(request)
            except asyncio.InvalidStateError:
                raise await _ended_error(call) from None


async def _ended_error(call: StreamCall) -> AiprocClientError:
    """Why a call that no longer takes writes ended."""
    code = await call.code()
    if code == grpc.StatusCode.OK:
        return Unavailable(grpc.StatusCode.UNAVAILABLE, "the server ended the result stream")
    return error_from_status(code, await call.details())
