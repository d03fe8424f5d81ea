"""The exception tree's mapping from gRPC statuses, and the UNAVAILABLE retry loop."""

from __future__ import annotations

import grpc
import pytest

from aiproc.client._retry import RetryPolicy, call_with_retry
from aiproc.client.errors import (
    AiprocClientError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QueueFull,
    Unavailable,
    map_rpc_error,
)

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.002)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, QueueFull),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_each_status_maps_to_its_exception(
    code: grpc.StatusCode, kind: type[AiprocClientError]
) -> None:
    with pytest.raises(kind) as caught, map_rpc_error():
        raise rpc_error(code, "task.url: must be an absolute http(s) URL")
    assert type(caught.value) is kind
    assert caught.value.code is code
    assert caught.value.message == "task.url: must be an absolute http(s) URL"
    assert str(caught.value) == f"{code.name}: task.url: must be an absolute http(s) URL"
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


def test_other_statuses_raise_the_root() -> None:
    with pytest.raises(AiprocClientError) as caught, map_rpc_error():
        raise rpc_error(grpc.StatusCode.INTERNAL, "")
    assert type(caught.value) is AiprocClientError
    assert str(caught.value) == "INTERNAL"


def test_non_grpc_errors_pass_through() -> None:
    with pytest.raises(KeyError), map_rpc_error():
        raise KeyError("x")


def unavailable() -> Unavailable:
    return Unavailable(grpc.StatusCode.UNAVAILABLE, "down")


async def test_retries_unavailable_until_the_call_succeeds() -> None:
    budgets: list[float] = []

    async def call(seconds: float) -> str:
        budgets.append(seconds)
        if len(budgets) < 3:
            raise unavailable()
        return "ok"

    assert await call_with_retry(call, budget=5.0, policy=FAST) == "ok"
    assert len(budgets) == 3
    assert budgets[0] <= 5.0
    assert budgets == sorted(budgets, reverse=True)  # each attempt gets what is left


async def test_gives_up_after_the_policy_attempts() -> None:
    calls = 0

    async def call(seconds: float) -> str:
        nonlocal calls
        calls += 1
        raise unavailable()

    with pytest.raises(Unavailable):
        await call_with_retry(call, budget=5.0, policy=FAST)
    assert calls == FAST.attempts


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def call(seconds: float) -> str:
        nonlocal calls
        calls += 1
        raise QueueFull(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")

    with pytest.raises(QueueFull):
        await call_with_retry(call, budget=5.0, policy=FAST)
    assert calls == 1


async def test_stops_when_the_pause_would_outlast_the_budget() -> None:
    now = [100.0]
    calls = 0

    async def call(seconds: float) -> str:
        nonlocal calls
        calls += 1
        now[0] += 0.9  # each attempt takes most of the one-second budget
        raise unavailable()

    policy = RetryPolicy(attempts=10, initial_backoff=0.2, max_backoff=0.2)
    with pytest.raises(Unavailable):
        await call_with_retry(call, budget=1.0, policy=policy, clock=lambda: now[0])
    assert calls == 1


def test_backoff_grows_within_its_ceiling() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, multiplier=2.0)
    assert 0.05 <= policy.backoff(1) <= 0.1
    assert 0.1 <= policy.backoff(2) <= 0.2
    assert 0.15 <= policy.backoff(5) <= 0.3
