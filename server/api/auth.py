"""The one place every RPC is authenticated and authorized.

`ServedMethods` (handlers.py), the server's one interceptor, guards every method but
those of the open services with `Admission.guard`, so a new RPC is guarded without
anyone remembering to (deny by default).

grpc.aio gives an interceptor the method name and metadata, but not the ServicerContext,
whose `auth_context()` holds the verified TLS peer. So the guard wraps the method's
handler: the wrapper resolves the caller from the context, then runs the real handler in
the same task with the caller set for `current_caller()`. Any refusal ends the call
through `abort_with`, so it is UNAUTHENTICATED, PERMISSION_DENIED or INVALID_ARGUMENT with
a message that never repeats a credential.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from aiproc.server.api.status import Context, abort_with
from aiproc.server.core.errors import AiprocError
from aiproc.server.security.authenticator import Authenticator
from aiproc.server.security.caller import enter
from aiproc.server.security.policy import authorize

log = logging.getLogger(__name__)

Admit = Callable[[Context], Awaitable[None]]
if TYPE_CHECKING:  # subscriptable only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncGenerator[Any, None]]


class Admission:
    """Resolves and authorizes the caller of each call of a guarded method."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def __repr__(self) -> str:
        return f"<Admission {self._authenticator!r}>"

    def guard(self, method: str, handler: Handler) -> Handler:
        """`handler` of `method`, admitting each call's caller before it runs."""

        async def admit(context: Context) -> None:
            await self._admit(method, context)

        return _guarded(handler, admit)

    async def _admit(self, method: str, context: Context) -> None:
        try:
            caller = self._authenticator.caller(
                context.invocation_metadata() or (), context.auth_context()
            )
            authorize(caller, method)
        except AiprocError as exc:
            # The peer address, for whoever audits refusals; the message holds no credential.
            log.info("refused %s from %s: %s", method, context.peer(), exc)
            await abort_with(context, exc)
        if log.isEnabledFor(logging.DEBUG):  # peer() builds a string on every call
            log.debug("%s from %s: %r", method, context.peer(), caller)
        enter(caller)


def _guarded(handler: Handler, admit: Admit) -> Handler:
    """The same handler, admitting the caller first, whatever its streaming shape.

    grpc's type stubs describe the synchronous server; on grpc.aio our behaviours are
    coroutine functions (unary responses) and async generator functions (streams).
    """
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if not handler.response_streaming:
        unary = cast(Unary, handler.unary_unary or handler.stream_unary)

        async def respond(request: Any, context: Context) -> Any:
            await admit(context)
            return await unary(request, context)

        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(respond, deserialize, serialize)
        return grpc.unary_unary_rpc_method_handler(respond, deserialize, serialize)

    streaming = cast(Streaming, handler.unary_stream or handler.stream_stream)

    async def stream(request: Any, context: Context) -> AsyncGenerator[Any, None]:
        await admit(context)
        async with contextlib.aclosing(streaming(request, context)) as responses:
            async for response in responses:
                yield response

    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, deserialize, serialize)
    return grpc.unary_stream_rpc_method_handler(stream, deserialize, serialize)
