"""The one exception tree of aiproc, translated to gRPC statuses only in `api/`.

    AiprocError
    ├── RequestError                 the caller's fault, raised before work starts
    │   ├── InvalidArgument(field)   a field is missing or malformed
    │   ├── NotFound                 no such task for this caller
    │   ├── FailedPrecondition       the task's state forbids the operation
    │   ├── Unauthenticated          no credentials, or credentials nobody issued
    │   └── PermissionDenied         a known caller asked for what its role forbids
    ├── QueueFull                    the bounded queue has no room
    ├── TooManyStreams               the caller has as many streams open as it may
    ├── ShuttingDown                 the server no longer accepts work
    ├── StoreError                   the store cannot be read or written
    └── ProviderError                a provider call failed; `error_code` classifies it
        ├── RateLimited(retry_after) HTTP 429: wait, then try again
        ├── TransientError           network error, 5xx: back off and retry
        ├── ProviderTimeout          the call exceeded its deadline
        ├── InvalidRequest           HTTP 400/404/422: the request itself is wrong
        ├── AuthenticationFailed     HTTP 401/403: the key is wrong
        └── BadResponse              the answer could not be parsed

`retryable` on a provider error says whether the runner may try again.
"""

from __future__ import annotations

from aiproc.server.core.models import ErrorCode


class AiprocError(Exception):
    """Root of every error aiproc raises on purpose."""


class RequestError(AiprocError):
    """The caller asked for something that cannot be done."""


class InvalidArgument(RequestError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(RequestError):
    pass


class FailedPrecondition(RequestError):
    pass


class Unauthenticated(RequestError):
    """The call carries no credentials, or ones that name no caller; the message never
    repeats what the caller sent."""


class PermissionDenied(RequestError):
    """The caller is known, but its role or tenant does not allow the operation."""


class QueueFull(AiprocError):
    pass


class TenantQueueFull(QueueFull):
    """A tenant has as many tasks waiting as its quota allows; other tenants are still
    admitted."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(
            f"tenant {tenant!r} has {limit} tasks waiting, its quota (max_queued); retry later"
        )


class TooManyStreams(AiprocError):
    pass


class ShuttingDown(AiprocError):
    pass


class StoreError(AiprocError):
    """The store's file cannot be opened, read or written."""


class ProviderError(AiprocError):
    """A provider call failed. The message is safe to show to callers."""

    error_code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message)
        self.provider = provider


class RateLimited(ProviderError):
    error_code = ErrorCode.RATE_LIMITED
    retryable = True

    def __init__(
        self, message: str, *, provider: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after
        """Seconds the provider asked us to wait, when it said."""


class TransientError(ProviderError):
    error_code = ErrorCode.TRANSIENT
    retryable = True


class ProviderTimeout(ProviderError):
    error_code = ErrorCode.TIMEOUT


class InvalidRequest(ProviderError):
    error_code = ErrorCode.INVALID_REQUEST


class AuthenticationFailed(ProviderError):
    error_code = ErrorCode.AUTHENTICATION


class BadResponse(ProviderError):
    # A truncated or garbled body is usually a one-off; a second try is cheap.
    error_code = ErrorCode.BAD_RESPONSE
    retryable = True
