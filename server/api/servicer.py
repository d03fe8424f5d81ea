"""The gRPC face of the processor: validate, convert, call, convert back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from functools import partial

import grpc
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Tracer

from aiproc.server.api import convert, metadata
from aiproc.server.api.status import Context, abort_with, unary_rpc
from aiproc.server.api.stream_limits import StreamLimits, StreamSlot
from aiproc.server.api.tracing import SERVICE
from aiproc.server.core.batching import IdBatcher
from aiproc.server.core.errors import AiprocError, InvalidArgument, NotFound
from aiproc.server.core.hub import Subscription
from aiproc.server.core.models import TaskResult, TaskState
from aiproc.server.core.processor import Processor
from aiproc.server.security.caller import Role, current_caller
from aiproc.server.telemetry.propagation import context_from_metadata
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc

MAX_IDS_PER_MESSAGE = 10_000
MAX_UNAPPLIED_ACKS = MAX_IDS_PER_MESSAGE
"""Acked ids a stream keeps waiting for the store at most before it reads on."""
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 10_000


def tenant() -> str:
    """The tenant of the RPC being served, as the auth interceptor resolved it."""
    return current_caller().tenant


class ProcessorServicer(pb_grpc.ProcessorServiceServicer):
    def __init__(
        self,
        processor: Processor,
        *,
        max_content_bytes: int,
        streams: StreamLimits,
        tracer: Tracer | None = None,
    ) -> None:
        """`streams` counts each identity's open StreamResults and WatchEvents calls."""
        self._processor = processor
        self._max_content_bytes = max_content_bytes
        self._streams = streams
        self._tracer = tracer or NoOpTracer()

    @property
    def tracer(self) -> Tracer:
        return self._tracer

    @unary_rpc
    async def QueueTask(
        self, request: pb.QueueTaskRequest, context: Context
    ) -> pb.QueueTaskResponse:
        client_id = tenant()
        try:
            spec = convert.spec_from_pb(request, self._max_content_bytes)
        except InvalidArgument:
            self._processor.count_rejected(client_id)
            raise
        task, deduplicated = await self._processor.submit(client_id, spec)
        # A new task is reported as accepted, QUEUED, as the contract says, even when a
        # worker started it while its admission was being committed.
        state = task.state if deduplicated else TaskState.QUEUED
        return pb.QueueTaskResponse(
            task_id=task.task_id, state=convert.state_pb(state), deduplicated=deduplicated
        )

    @unary_rpc
    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        task_id = convert.task_id_from_pb(request.task_id)
        task = await self._processor.get(tenant(), task_id)
        return pb.GetTaskResponse(task=convert.task_pb_from(task))

    @unary_rpc
    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Context
    ) -> pb.CancelTaskResponse:
        task_id = convert.task_id_from_pb(request.task_id)
        state = await self._processor.cancel(tenant(), task_id)
        return pb.CancelTaskResponse(state=convert.state_pb(state))

    @unary_rpc
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        limit = request.limit or DEFAULT_LIST_LIMIT
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgument("limit", f"at most {MAX_LIST_LIMIT}")
        state = convert.state_from_pb(request.state, "state")
        tasks = await self._processor.list_tasks(tenant(), state, limit)
        return pb.ListTasksResponse(tasks=[convert.task_pb_from(task) for task in tasks])

    @unary_rpc
    async def RequeueTask(
        self, request: pb.RequeueTaskRequest, context: Context
    ) -> pb.RequeueTaskResponse:
        task_id = convert.task_id_from_pb(request.task_id)
        state = await self._processor.requeue(tenant(), task_id)
        return pb.RequeueTaskResponse(state=convert.state_pb(state))

    @unary_rpc
    async def Stats(self, request: pb.StatsRequest, context: Context) -> pb.StatsResponse:
        caller = current_caller()
        if caller.role is Role.ADMIN:
            return convert.stats_pb(self._processor.stats())
        return convert.stats_pb(await self._processor.tenant_stats(caller.tenant))

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        slot = await self._open_stream(context)
        try:
            span = self._stream_span("WatchEvents", context)
            watch = self._processor.events.watch()
            # Initial metadata tells the caller it is watching: any event from now on reaches it.
            await context.send_initial_metadata(())
            try:
                async for event in watch:
                    yield pb.WatchEventsResponse(event=convert.event_pb(event))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_with(context, exc)  # never an UNKNOWN with a stack trace
            finally:
                self._processor.events.unwatch(watch)
                span.end()
        finally:
            slot.release()

    async def _open_stream(self, context: Context) -> StreamSlot:
        """Checks the caller's metadata and takes one of its stream slots, or ends the call."""
        try:
            metadata.check(context.invocation_metadata())
            return self._streams.acquire(tenant())
        except AiprocError as exc:
            await abort_with(context, exc)

    def _stream_span(self, method: str, context: Context) -> Span:
        """A server span for a streaming call, ended by the caller.

        Not made current: the generator is resumed step by step, and a context
        attached in one step cannot be detached in another.
        """
        return self._tracer.start_span(
            f"{SERVICE}/{method}",
            context=context_from_metadata(context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
        )

    async def StreamResults(
        self,
        request_iterator: AsyncIterator[pb.StreamResultsRequest],
        context: Context,
    ) -> AsyncIterator[pb.StreamResultsResponse]:
        if not self._processor.config.stream_results:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "result streaming is disabled on this server (processor.stream_results = false);"
                " read results with GetTask",
            )
        slot = await self._open_stream(context)
        client_id = tenant()
        span = self._stream_span("StreamResults", context)
        subscription = self._processor.hub.open(client_id)
        failure: list[Exception] = []
        reader = asyncio.create_task(
            self._read_requests(request_iterator, subscription, client_id, failure)
        )
        try:
            async for item in subscription:
                if isinstance(item, TaskResult):
                    yield pb.StreamResultsResponse(result=convert.result_pb(item))
                else:
                    yield pb.StreamResultsResponse(progress=convert.progress_pb(item))
            if failure:
                await abort_with(context, failure[0])
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)  # e.g. the store failing to read: never UNKNOWN
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._processor.hub.discard(subscription)
            span.end()
            slot.release()

    async def _read_requests(
        self,
        requests: AsyncIterator[pb.StreamResultsRequest],
        subscription: Subscription,
        client_id: str,
        failure: list[Exception],
    ) -> None:
        """Applies subscriptions and acks; the caller half-closing ends the call.

        Acks are applied behind the reading, many per store write, so a Subscribe
        never waits for one; every ack read is applied before the call ends.
        Whatever ends the reading ends the stream too: a failure is kept for the
        call to end with, and the subscription is closed, so the call never hangs.
        """
        acks = IdBatcher(partial(self._processor.ack, client_id), MAX_IDS_PER_MESSAGE)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(acks.run())
                try:
                    await self._read_all(requests, subscription, client_id, acks)
                except grpc.aio.AioRpcError:
                    pass  # the caller went away; the call is over anyway
                except Exception as exc:  # an AiprocError, or a bug that must not leave it open
                    failure.append(exc)
                finally:
                    acks.close()
        except* Exception as errors:  # an ack the store could not apply
            failure.append(errors.exceptions[0])
        finally:
            subscription.close()

    async def _read_all(
        self,
        requests: AsyncIterator[pb.StreamResultsRequest],
        subscription: Subscription,
        client_id: str,
        acks: IdBatcher,
    ) -> None:
        async for request in requests:
            kind = request.WhichOneof("kind")
            if kind == "subscribe":
                await self._subscribe(request.subscribe, subscription, client_id)
            elif kind == "ack":
                acks.add(list(_ids(request.ack.task_ids, "ack.task_ids")))  # all or none
                # Flow control, not memory, holds back a caller acking faster than the store.
                await acks.wait_for_room(MAX_UNAPPLIED_ACKS)
            else:
                raise InvalidArgument("kind", "set subscribe or ack")

    async def _subscribe(
        self, request: pb.Subscribe, subscription: Subscription, client_id: str
    ) -> None:
        ids = list(_ids(request.task_ids, "subscribe.task_ids"))
        if not ids and not request.all_tasks:
            raise InvalidArgument("subscribe", "set task_ids or all_tasks")
        for task_id in ids:
            try:
                await self._processor.get(client_id, task_id)
            except NotFound:
                raise NotFound(f"subscribe.task_ids: task {task_id} not found") from None
        await subscription.add(
            ids, all_tasks=request.all_tasks, include_progress=request.include_progress
        )


def _ids(values: Iterable[str], field: str) -> Iterator[str]:
    ids = list(values)
    if len(ids) > MAX_IDS_PER_MESSAGE:
        raise InvalidArgument(field, f"at most {MAX_IDS_PER_MESSAGE} ids per message")
    for task_id in ids:
        yield convert.task_id_from_pb(task_id, field)
