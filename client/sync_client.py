"""`Client`: the blocking face of `AsyncClient`, for code without an event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from aiproc.client._tls import Pem
from aiproc.client.async_client import DEFAULT_TARGET, AsyncClient
from aiproc.client.events import EventStream
from aiproc.client.models import (
    Priority,
    ProviderEvent,
    QueuedTask,
    Stats,
    TaskInfo,
    TaskResult,
    TaskState,
)

_T = TypeVar("_T")


class _Runner(Protocol):
    def __call__(self, coro: Coroutine[Any, Any, _T], /) -> _T: ...


class Client:
    """The same calls as `AsyncClient`, blocking; its event loop runs in a background thread.

    Connection settings (token, TLS, client_id) are `AsyncClient`'s.

    Use it as a context manager, or call `close()`. Result streams are left
    to `AsyncClient`; `wait`, `try_recv_result` and `recv_all_results` cover
    receiving results here, and `watch_events` blocks for provider events.
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
    ) -> None:
        self._client = AsyncClient(
            target,
            client_id=client_id,
            token=token,
            tls=tls,
            ca=ca,
            cert=cert,
            key=key,
            timeout=timeout,
            buffer_size=buffer_size,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="aiproc-client-loop", daemon=True
        )
        self._thread.start()
        self._closed = False

    def __repr__(self) -> str:
        status = "closed" if self._closed else "open"
        return f"<Client [{self._client.target} | {status}]>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the client and stops its thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def queue(
        self,
        url: str,
        content: str,
        *,
        priority: Priority | str = Priority.NORMAL,
        timeout: float | None = None,
        task_timeout: float | None = None,
        instructions: str = "",
        model: str = "",
        idempotency_key: str = "",
        metadata: Mapping[str, str] | None = None,
        max_retries: int | None = None,
    ) -> QueuedTask:
        """Queues one task and returns its id at once (see `AsyncClient.queue`)."""
        return self._run(
            self._client.queue(
                url,
                content,
                priority=priority,
                timeout=timeout,
                task_timeout=task_timeout,
                instructions=instructions,
                model=model,
                idempotency_key=idempotency_key,
                metadata=metadata,
                max_retries=max_retries,
            )
        )

    def wait(self, task_id: str, *, timeout: float | None = None) -> TaskResult:
        """Waits for one task's result, acknowledges it and returns it."""
        return self._run(self._client.wait(task_id, timeout=timeout))

    def start_receiving(self) -> None:
        """Starts the background subscription to every task's results, if not running."""
        self._run(self._client.start_receiving())

    def try_recv_result(self) -> TaskResult | None:
        """A result received in the background, or None if none is ready; never waits for one."""
        return self._run(self._client.try_recv_result())

    def recv_all_results(self) -> list[TaskResult]:
        """Every result received in the background and not yet handed out."""
        return self._run(self._client.recv_all_results())

    def get(self, task_id: str, *, timeout: float | None = None) -> TaskInfo:
        """One task's state, spec and, once terminal, result."""
        return self._run(self._client.get(task_id, timeout=timeout))

    def cancel(self, task_id: str, *, timeout: float | None = None) -> TaskState:
        """Cancels a live task; returns CANCELLED, or the terminal state it already had."""
        return self._run(self._client.cancel(task_id, timeout=timeout))

    def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> list[TaskInfo]:
        """This client identity's tasks, oldest first (see `AsyncClient.list_tasks`)."""
        return self._run(self._client.list_tasks(state=state, limit=limit, timeout=timeout))

    def requeue(self, task_id: str, *, timeout: float | None = None) -> TaskState:
        """Queues a finished task again and returns QUEUED (see `AsyncClient.requeue`)."""
        return self._run(self._client.requeue(task_id, timeout=timeout))

    def stats(self, *, timeout: float | None = None) -> Stats:
        """Queue, worker, counter, latency and provider statistics."""
        return self._run(self._client.stats(timeout=timeout))

    def watch_events(self, *, timeout: float | None = None) -> BlockingEventStream:
        """Provider events as a blocking iterator, to use with `with` (see
        `AsyncClient.watch_events`); `timeout` bounds the whole stream."""
        return BlockingEventStream(self._client.watch_events(timeout=timeout), self._run)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # E.g. KeyboardInterrupt in this thread: do not leave the call running.
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class BlockingEventStream:
    """An `EventStream` read from a thread without an event loop: each `next` blocks
    until the next event, and the iteration ends when the server ends the call."""

    def __init__(self, stream: EventStream, run: _Runner) -> None:
        self._stream = stream
        self._run = run

    def __repr__(self) -> str:
        return f"<BlockingEventStream {self._stream!r}>"

    def __enter__(self) -> Self:
        self._run(self._stream.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ProviderEvent:
        try:
            return self._run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Cancels the call."""
        self._run(self._stream.aclose())
