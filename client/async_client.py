"""`AsyncClient`: the asyncio client of the aiproc service, dataclasses in and out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import grpc

from aiproc.client import tracing
from aiproc.client._channel import channel_options
from aiproc.client._convert import (
    queued_from_proto,
    spec_to_proto,
    state_from_proto,
    state_to_proto,
    stats_from_proto,
    task_from_proto,
    tasks_from_proto,
)
from aiproc.client._receiver import Receiver
from aiproc.client._retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, call_with_retry
from aiproc.client._tls import Pem, channel_credentials
from aiproc.client.errors import Unavailable, map_rpc_error
from aiproc.client.events import EventStream
from aiproc.client.models import (
    Priority,
    QueuedTask,
    Stats,
    TaskInfo,
    TaskResult,
    TaskSpec,
    TaskState,
)
from aiproc.client.stream import ResultStream
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from aiproc.v1.processor_service_pb2_grpc import ProcessorServiceAsyncStub

_T = TypeVar("_T")

DEFAULT_TARGET = "127.0.0.1:50051"
CLIENT_ID_METADATA = "aiproc-client-id"
AUTHORIZATION_METADATA = "authorization"


class AsyncClient:
    """A connection to one aiproc server; every call has a deadline.

    `timeout` is each call's deadline in seconds unless the call passes its
    own. `token` (an API key from `aiproc keys create`) is sent as
    `authorization: Bearer <token>` on every call, streams included; the
    server then knows the caller's tenant. `client_id` is sent as
    `aiproc-client-id`: on an open server it names the tenant; with a token,
    only an admin may name a tenant other than its own. `tls=True`, or any of
    `ca`, `cert` and `key` (PEM as a path or bytes), connects over TLS: `ca`
    replaces the system's roots, `cert` with `key` is the client certificate
    for mutual TLS. Reads (get, list_tasks, stats), cancel and queue calls with
    an idempotency key are retried on UNAVAILABLE within their deadline;
    requeue never is.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        client_id: str | None = None,
        token: str | None = None,
        tls: bool = False,
        ca: Pem | None = None,
        cert: Pem | None = None,
        key: Pem | None = None,
        timeout: float = 10.0,
        buffer_size: int = 256,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.client_id = client_id
        self.timeout = timeout
        self._buffer_size = buffer_size
        self._retry = retry
        self._credentials = channel_credentials(tls=tls, ca=ca, cert=cert, key=key)
        metadata = [(CLIENT_ID_METADATA, client_id)] if client_id else []
        if token is not None:
            metadata.append((AUTHORIZATION_METADATA, f"Bearer {_checked(token)}"))
        self._authenticated = token is not None
        self._metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        # Opened on first use: grpc.aio binds a channel to the loop that creates it,
        # and the client may be built before the loop runs.
        self._channel: grpc.aio.Channel | None = None
        self._service: ProcessorServiceAsyncStub | None = None
        self._receiver: Receiver | None = None
        self._closed = False

    def __repr__(self) -> str:
        status = "closed" if self._closed else "open"
        transport = "plaintext" if self._credentials is None else "TLS"
        token = ", token" if self._authenticated else ""  # never the token itself
        return (
            f"<AsyncClient [{self.target} | {status} | {transport}{token}"
            f" | client_id={self.client_id!r}]>"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Ends the background subscription, if any, and closes the channel."""
        if self._closed:
            return
        self._closed = True
        if self._receiver is not None:
            await self._receiver.aclose()
            self._receiver = None
        if self._channel is not None:
            await self._channel.close()

    async def queue(
        self,
        url: str,
        content: str,
        *,
        priority: Priority | str = Priority.NORMAL,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, by design
        task_timeout: float | None = None,
        instructions: str = "",
        model: str = "",
        idempotency_key: str = "",
        metadata: Mapping[str, str] | None = None,
        max_retries: int | None = None,
    ) -> QueuedTask:
        """Queues one task and returns its id at once.

        `timeout` is this call's deadline; `task_timeout` bounds the task's
        processing on the server (None: the server's worker_timeout);
        `max_retries` is the task's budget of retries after retryable provider
        errors (None: the server's processor.max_retries; at most 20). The call
        is retried on UNAVAILABLE only with an idempotency key, which makes a
        repeat safe.
        """
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must not be negative")
        spec = TaskSpec(
            url=url,
            content=content,
            priority=Priority(priority),
            timeout=task_timeout,
            instructions=instructions,
            model=model,
            idempotency_key=idempotency_key,
            metadata=dict(metadata or {}),
            max_retries=max_retries,
        )
        request = pb.QueueTaskRequest(task=spec_to_proto(spec))

        async def attempt(seconds: float) -> pb.QueueTaskResponse:
            return await self._stub().QueueTask(request, timeout=seconds, metadata=self._metadata)

        policy = self._retry if idempotency_key else NO_RETRY
        return queued_from_proto(await self._call(attempt, timeout, policy))

    def stream(
        self,
        *,
        task_ids: Iterable[str] = (),
        all_tasks: bool = False,
        include_progress: bool = False,
        timeout: float | None = None,
    ) -> ResultStream:
        """One StreamResults call over the given tasks (or all of them), to use with
        `async with`; `timeout` bounds the whole stream (None: no deadline, since a
        subscription lasts as long as its reader wants)."""
        return ResultStream(
            lambda: self._stub().StreamResults(timeout=timeout, metadata=self._metadata),
            task_ids=task_ids,
            all_tasks=all_tasks,
            include_progress=include_progress,
        )

    def watch_events(self, *, timeout: float | None = None) -> EventStream:
        """One WatchEvents call streaming provider events, to use with `async with`;
        `timeout` bounds the whole stream (None: no deadline, it lasts until closed)."""
        return EventStream(
            lambda: self._stub().WatchEvents(
                pb.WatchEventsRequest(), timeout=timeout, metadata=self._metadata
            )
        )

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskResult:  # noqa: ASYNC109
        """Waits for one task's result, acknowledges it and returns it."""
        async with self.stream(task_ids=[task_id], timeout=self._seconds(timeout)) as stream:
            async for item in stream:
                if isinstance(item, TaskResult) and item.task_id == task_id:
                    await stream.ack([task_id])
                    return item
        raise Unavailable(
            grpc.StatusCode.UNAVAILABLE, f"the server ended the stream before {task_id}'s result"
        )

    async def start_receiving(self) -> None:
        """Starts the background subscription to every task's results, if not running."""
        await self._running_receiver()

    async def try_recv_result(self) -> TaskResult | None:
        """A result received in the background, or None if none is ready; never waits for one."""
        results = await self._take(1)
        return results[0] if results else None

    async def recv_all_results(self) -> list[TaskResult]:
        """Every result received in the background and not yet handed out."""
        return await self._take(None)

    async def get(self, task_id: str, *, timeout: float | None = None) -> TaskInfo:  # noqa: ASYNC109
        """One task's state, spec and, once terminal, result."""
        request = pb.GetTaskRequest(task_id=task_id)

        async def attempt(seconds: float) -> pb.GetTaskResponse:
            return await self._stub().GetTask(request, timeout=seconds, metadata=self._metadata)

        return task_from_proto((await self._call(attempt, timeout, self._retry)).task)

    async def cancel(self, task_id: str, *, timeout: float | None = None) -> TaskState:  # noqa: ASYNC109
        """Cancels a live task; returns CANCELLED, or the terminal state it already had."""
        request = pb.CancelTaskRequest(task_id=task_id)

        async def attempt(seconds: float) -> pb.CancelTaskResponse:
            return await self._stub().CancelTask(request, timeout=seconds, metadata=self._metadata)

        # Cancelling twice changes nothing, so a retry is safe.
        return state_from_proto((await self._call(attempt, timeout, self._retry)).state)

    async def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        limit: int = 100,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, by design
    ) -> list[TaskInfo]:
        """This client identity's tasks, oldest first, at most `limit` of them.

        `state` keeps only tasks in that state (None or UNSPECIFIED: any state);
        `limit` 0 means the server's default (100); the server refuses more than
        10,000 with InvalidArgument.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        wanted = TaskState.UNSPECIFIED if state is None else TaskState(state)
        request = pb.ListTasksRequest(state=state_to_proto(wanted), limit=limit)

        async def attempt(seconds: float) -> pb.ListTasksResponse:
            return await self._stub().ListTasks(request, timeout=seconds, metadata=self._metadata)

        return tasks_from_proto(await self._call(attempt, timeout, self._retry))

    async def requeue(self, task_id: str, *, timeout: float | None = None) -> TaskState:  # noqa: ASYNC109
        """Queues a finished task (succeeded, failed, dead-lettered or cancelled) again,
        forgetting its result; returns QUEUED. FailedPrecondition while it is queued or
        running."""
        request = pb.RequeueTaskRequest(task_id=task_id)

        async def attempt(seconds: float) -> pb.RequeueTaskResponse:
            return await self._stub().RequeueTask(request, timeout=seconds, metadata=self._metadata)

        # Never retried: an UNAVAILABLE may hide a requeue that took effect, and a
        # repeat after the task ran again would run it a third time.
        return state_from_proto((await self._call(attempt, timeout, NO_RETRY)).state)

    async def stats(self, *, timeout: float | None = None) -> Stats:  # noqa: ASYNC109
        """Queue, worker, counter, latency and provider statistics."""

        async def attempt(seconds: float) -> pb.StatsResponse:
            return await self._stub().Stats(
                pb.StatsRequest(), timeout=seconds, metadata=self._metadata
            )

        return stats_from_proto(await self._call(attempt, timeout, self._retry))

    async def _call(
        self,
        attempt: Callable[[float], Awaitable[_T]],
        seconds: float | None,
        policy: RetryPolicy,
    ) -> _T:
        async def mapped(left: float) -> _T:
            with map_rpc_error():
                return await attempt(left)

        return await call_with_retry(mapped, budget=self._seconds(seconds), policy=policy)

    def _stub(self) -> ProcessorServiceAsyncStub:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._service is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(
                    self.target, options=channel_options(), interceptors=tracing.interceptors()
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target,
                    self._credentials,
                    options=channel_options(),
                    interceptors=tracing.interceptors(),
                )
            self._service = pb_grpc.ProcessorServiceStub(self._channel)
        return self._service

    def _seconds(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def _running_receiver(self) -> Receiver:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._receiver is None:
            receiver = Receiver(self.stream(all_tasks=True), self._buffer_size)
            await receiver.start()
            self._receiver = receiver
        return self._receiver

    async def _take(self, limit: int | None) -> list[TaskResult]:
        receiver = await self._running_receiver()
        results = receiver.take(limit)
        if results:
            await receiver.ack(results)
            return results
        if receiver.error is not None:
            # Forget the ended subscription so the next call opens a new one, which
            # receives again every result not yet acknowledged.
            self._receiver = None
            await receiver.aclose()
            raise receiver.error
        return []


def _checked(token: str) -> str:
    """The token, if it can travel in metadata; the error never repeats it."""
    if not token or not all("!" <= c <= "~" for c in token):
        raise ValueError(
            "token: expected printable ASCII without spaces, as `aiproc keys create` prints"
        )
    return token
