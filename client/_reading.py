"""Reading the next message of a server-streaming gRPC call, with the client's errors."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from aiproc.client.errors import map_rpc_error

_Response = TypeVar("_Response", bound=Message)

ReadableCall = grpc.aio.UnaryStreamCall[Any, _Response] | grpc.aio.StreamStreamCall[Any, _Response]


async def read_next(
    call: ReadableCall[_Response], response_type: type[_Response]
) -> _Response | None:
    """The next message of the call, or None once it has ended or was cancelled here."""
    if call.cancelled():
        return None  # reading it would raise CancelledError
    try:
        with map_rpc_error():
            message = await call.read()
    except asyncio.CancelledError:
        # grpc raises CancelledError when the call is cancelled locally while this
        # read waits (e.g. by `abort`): that ends the stream, unless this very task
        # is the one being cancelled.
        task = asyncio.current_task()
        if call.cancelled() and task is not None and not task.cancelling():
            return None
        raise
    return message if isinstance(message, response_type) else None
