"""`EventStream`: one WatchEvents call, read as an async iterator of `ProviderEvent`s."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

import grpc

from aiproc.client._convert import provider_event_from_proto
from aiproc.client._reading import read_next
from aiproc.client.errors import map_rpc_error
from aiproc.client.models import ProviderEvent
from aiproc.v1 import processor_service_pb2 as pb

EventCall = grpc.aio.UnaryStreamCall[pb.WatchEventsRequest, pb.WatchEventsResponse]


class EventStream:
    """Provider events (failovers, breakers, health changes) as the server publishes them.

    Use it as an async context manager and iterate it; leaving the block
    cancels the call. Iteration ends when the server ends the call (e.g. on
    shutdown); failures of the call raise `AiprocClientError`. Events are
    live only: those published before the call reached the server are not sent.
    """

    def __init__(self, open_call: Callable[[], EventCall]) -> None:
        self._open_call = open_call
        self._call: EventCall | None = None
        self._received = 0
        self._closed = False

    def __repr__(self) -> str:
        status = "closed" if self._closed else "open" if self._call is not None else "not opened"
        return f"<EventStream [{status} | {self._received} received]>"

    async def __aenter__(self) -> Self:
        if self._call is not None or self._closed:
            raise RuntimeError("an EventStream can be entered only once")
        self._call = self._open_call()
        # The server sends its (empty) initial metadata once it is watching, so
        # every event after `async with` is entered reaches this stream.
        with map_rpc_error():
            await self._call.initial_metadata()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ProviderEvent:
        if self._call is None:
            raise RuntimeError("use 'async with' to open the EventStream first")
        call = self._call
        while (
            not self._closed
            and (message := await read_next(call, pb.WatchEventsResponse)) is not None
        ):
            # A response without an event (a newer server's addition) is skipped.
            if message.HasField("event"):
                self._received += 1
                return provider_event_from_proto(message.event)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Cancels the call; the server stops watching for it. Safe to call more than once."""
        self._closed = True
        if self._call is not None:
            # The client sends nothing on this call, so there is nothing to flush:
            # cancelling is the clean way to end it.
            self._call.cancel()
