"""The client's one exception tree, translated from gRPC statuses at the call sites.

    AiprocClientError(code, message)   any failed call; `code` is the grpc.StatusCode
    ├── InvalidArgument                INVALID_ARGUMENT: the message names the field
    ├── QueueFull                      RESOURCE_EXHAUSTED: the queue is full, retry later
    ├── NotFound                       NOT_FOUND: an unknown task id
    ├── FailedPrecondition             FAILED_PRECONDITION: the task's state forbids it
    ├── Unavailable                    UNAVAILABLE: unreachable, or shutting down
    ├── DeadlineExceeded               DEADLINE_EXCEEDED: the call's deadline expired
    ├── AuthenticationError            UNAUTHENTICATED: no token, or one the server does not know
    └── PermissionDeniedError          PERMISSION_DENIED: the caller's role or tenant forbids it

Any other status raises `AiprocClientError` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class AiprocClientError(Exception):
    """A call to the aiproc server failed with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


class InvalidArgument(AiprocClientError):
    """A request field is missing or malformed; the message names it."""


class QueueFull(AiprocClientError):
    """The server's queue has no room (RESOURCE_EXHAUSTED); try again later."""


class NotFound(AiprocClientError):
    """No task with that id for this client identity."""


class FailedPrecondition(AiprocClientError):
    """The task's state does not allow the operation."""


class Unavailable(AiprocClientError):
    """The server cannot be reached or is shutting down."""


class DeadlineExceeded(AiprocClientError):
    """The call did not finish before its deadline."""


class AuthenticationError(AiprocClientError):
    """The server asks for credentials (a token) the call did not carry, or did not accept
    those it carried; the message says which, never the token."""


class PermissionDeniedError(AiprocClientError):
    """The server knows the caller, but its role or tenant does not allow the call."""


_BY_CODE: dict[grpc.StatusCode, type[AiprocClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: QueueFull,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def error_from_status(code: grpc.StatusCode, message: str) -> AiprocClientError:
    """The exception of the tree that stands for a gRPC status."""
    return _BY_CODE.get(code, AiprocClientError)(code, message)


@contextmanager
def map_rpc_error() -> Iterator[None]:
    """Re-raises a gRPC error from the block as the matching `AiprocClientError`."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise error_from_status(exc.code(), exc.details() or "") from exc
