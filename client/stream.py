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
        """Tells the server these results are processed, so they are not delivered again."""
        ids = tuple(task_ids)
        if ids:
            await self._write(pb.StreamResultsRequest(ack=pb.Ack(task_ids=ids)))

    async def done_writing(self) -> None:
        """Half-closes the call: no more subscribes or acks; the server then ends it."""
        call = self._opened()
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
