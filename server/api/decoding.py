"""Requests parsed by aiproc rather than by gRPC, so that malformed bytes are INVALID_ARGUMENT.

Left to gRPC, bytes that are not a valid message (a corrupt wire format, a
string field that is not UTF-8) end a unary call with UNKNOWN and the parser's
exception text, and inside a request stream they kill the task reading it and
leave the call hanging. `decoding` turns each method's handler, ours and the
health and reflection services', into one that takes the raw bytes and parses
them itself: a failure ends the call with INVALID_ARGUMENT naming the message
type, and never shows the parser's words.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from aiproc.server.api.status import Context, abort_with
from aiproc.server.core.errors import InvalidArgument

__all__ = ["Undecodable", "decoding"]

if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]  # generic only in the stubs


class Undecodable(InvalidArgument):
    """A request's bytes are not a valid message of the method's request type."""

    def __init__(self, type_name: str) -> None:
        super().__init__("request", f"not a valid {type_name} message")


def decoding(handler: _Handler) -> _Handler:
    """The same method, parsing its requests itself (see above); a handler without a
    deserializer (it takes bytes) is returned as it is."""
    if handler.request_deserializer is None:
        return handler
    parse: Callable[[bytes], Any] = handler.request_deserializer
    # The generated deserializer is the message class's FromString.
    owner = getattr(parse, "__self__", None)
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def decode(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception:  # DecodeError, or whatever a foreign deserializer raises
            raise Undecodable(type_name) from None

    async def decoded(raw_requests: AsyncIterable[bytes]) -> AsyncIterator[Any]:
        async for raw in raw_requests:
            yield decode(raw)

    serializer = handler.response_serializer
    if handler.request_streaming:
        behavior: Any = (
            handler.stream_stream if handler.response_streaming else handler.stream_unary
        )

        def arguments(request: Any, context: Context) -> tuple[Any, Context]:
            return decoded(request), context

    else:
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

        def arguments(request: Any, context: Context) -> tuple[Any, Context]:
            return decode(request), context

    if handler.response_streaming and inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(*arguments(request, context)):
                    yield response
            except Undecodable as exc:
                await abort_with(context, exc)

        new_behavior: Any = stream_out
    else:
        # A unary answer, or a streaming one written with context.write (health's Watch).

        async def answer(request: Any, context: Context) -> Any:
            try:
                return await behavior(*arguments(request, context))
            except Undecodable as exc:
                await abort_with(context, exc)

        new_behavior = answer
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(new_behavior, request_deserializer=None, response_serializer=serializer)
