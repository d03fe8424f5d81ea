"""The one table from domain errors to gRPC status codes, and the guard that applies it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from opentelemetry.trace import NoOpTracer, Tracer

from aiproc.server.api import metadata
from aiproc.server.api.tracing import record_status, server_span
from aiproc.server.core.errors import (
    AiprocError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QueueFull,
    ShuttingDown,
    StoreError,
    TooManyStreams,
    Unauthenticated,
)

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_S = TypeVar("_S", bound="Traced")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

STATUS_BY_ERROR: tuple[tuple[type[AiprocError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TooManyStreams, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    # The store refuses writes after a failed commit: this replica cannot take
    # work safely, another (or this one, restarted) can.
    (StoreError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: AiprocError) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


async def abort_with(context: Context, error: BaseException) -> NoReturn:
    """Ends the RPC with the mapped status; an unexpected exception becomes a bare INTERNAL.

    No internal exception text or stack trace ever reaches the caller; the
    server log has them.
    """
    if isinstance(error, AiprocError):
        code, message = status_for(error), str(error)
    else:
        log.error("internal error in RPC", exc_info=error)
        code, message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
    record_status(code, message)
    await context.abort(code, message)


class Traced(Protocol):
    @property
    def tracer(self) -> Tracer: ...


def unary_rpc(
    method: Callable[[_S, _Req, Context], Awaitable[_Resp]],
) -> Callable[[_S, _Req, Context], Coroutine[Any, Any, _Resp]]:
    """Wraps a unary servicer method in a server span; every error leaves through `abort_with`.

    The metadata we read is checked first, before the span reads the trace context in it.
    """

    @functools.wraps(method)
    async def guarded(self: _S, request: _Req, context: Context) -> _Resp:
        try:
            metadata.check(context.invocation_metadata())
        except InvalidArgument as exc:
            await abort_with(context, exc)
        if isinstance(self.tracer, NoOpTracer):
            # Tracing is off: no caller's context to read, no span to make current.
            return await _answered(method, self, request, context)
        with server_span(self.tracer, method.__name__, context):
            return await _answered(method, self, request, context)

    return guarded


async def _answered(
    method: Callable[[_S, _Req, Context], Awaitable[_Resp]],
    servicer: _S,
    request: _Req,
    context: Context,
) -> _Resp:
    try:
        return await method(servicer, request, context)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await abort_with(context, exc)
