"""Over 10,000 random and malformed requests to a live server, and nothing gives.

Every reply must be one of the codes a well-behaved server answers a bad
request with; afterwards the server must be serving, its workers alive, and
every task it accepted findable in a valid state, with a normal task still
completing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.fuzz_cases import SERVICE, Case, StreamCase, Unary, draw, floods, mutations
from tests.api.test_server import Stream, queue_request
from tests.support import ServerFactory, make_config

SEED = 20_240_611
HYPOTHESIS_BATCHES = 120  # x 25 cases
MUTATIONS = 7_200
IN_FLIGHT = 48

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
}
# Requeueing a task that is still queued or running: the request is well formed and the
# task exists; its state forbids the operation. That is what FAILED_PRECONDITION is for
# (and what the README documents), and nowhere else.
PRECONDITION = {"RequeueTask"}
VALID_STATES = {
    task_pb2.TASK_STATE_QUEUED,
    task_pb2.TASK_STATE_RUNNING,
    task_pb2.TASK_STATE_SUCCEEDED,
    task_pb2.TASK_STATE_FAILED,
    task_pb2.TASK_STATE_CANCELLED,
}


class Fuzzer:
    """Sends cases and keeps what came back: codes per method, and the accepted tasks."""

    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self._channels = channels
        self.codes: collections.Counter[tuple[str, grpc.StatusCode]] = collections.Counter()
        self.bad: list[tuple[str, grpc.StatusCode, str, Case]] = []
        self.accepted: dict[str, str] = {}
        """Accepted task id -> the client id that owns it."""
        self._ids: dict[str, list[str]] = collections.defaultdict(list)
        """Accepted task ids by owner, in the order seen, for cases' references to resolve."""
        self.calls = self.messages = self.ended_while_writing = 0

    async def send(self, number: int, case: Case) -> None:
        channel = self._channels[number % len(self._channels)]
        self.calls += 1
        try:
            if isinstance(case, Unary):
                await self._unary(channel, case)
                code, details = grpc.StatusCode.OK, ""
            elif case.method == "StreamResults":
                ended = await self._results(channel, case)
                if ended is None:
                    return
                code, details = ended, ""
            else:
                code, details = await self._watch(channel, case), ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        self.codes[(case.method, code)] += 1
        allowed = ALLOWED | (
            {grpc.StatusCode.FAILED_PRECONDITION} if case.method in PRECONDITION else set()
        )
        if code not in allowed:
            self.bad.append((case.method, code, details, case))

    def _body(self, body: bytes | object, metadata: tuple[tuple[str, str], ...]) -> bytes:
        """The bytes of a message; a reference resolves to a task of the caller's own."""
        if isinstance(body, bytes):
            return body
        owner = dict(metadata).get("aiproc-client-id", "default")
        return body(self._ids[owner])  # type: ignore[operator,no-any-return]

    async def _unary(self, channel: grpc.aio.Channel, case: Unary) -> None:
        self.messages += 1
        call = channel.unary_unary(SERVICE + case.method)
        body = self._body(case.request, case.metadata)
        reply = await call(body, metadata=case.metadata, timeout=60)
        if case.method == "QueueTask":
            task_id = pb.QueueTaskResponse.FromString(reply).task_id
            owner = dict(case.metadata).get("aiproc-client-id", "default")
            if task_id not in self.accepted:
                self._ids[owner].append(task_id)
            self.accepted[task_id] = owner

    async def _results(self, channel: grpc.aio.Channel, case: StreamCase) -> grpc.StatusCode | None:
        """The call's status; None when the server ended it while messages were still being
        written, for then grpc's client replaces the server's status with its own INTERNAL
        "Internal error from Core" (the failed write's), and the server's is lost. Such
        calls are checked on the server's side: it logs any status of its own that is not
        a domain error, and the test fails on any error in the log."""
        call = channel.stream_stream(SERVICE + "StreamResults")(metadata=case.metadata, timeout=60)
        for message in case.messages:
            if call.done():
                break
            self.messages += 1
            try:
                await call.write(self._body(message, case.metadata))
            except asyncio.InvalidStateError:  # ended between the look and the write
                break
            except grpc.aio.AioRpcError as exc:
                if "SendMessageOperation" not in (exc.debug_error_string() or ""):
                    raise
                self.ended_while_writing += 1
                return None
        if not call.done():
            with contextlib.suppress(asyncio.InvalidStateError):
                await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
        return await call.code()

    async def _watch(self, channel: grpc.aio.Channel, case: StreamCase) -> grpc.StatusCode:
        self.messages += 1
        call = channel.unary_stream(SERVICE + "WatchEvents")(
            self._body(case.messages[0], case.metadata), metadata=case.metadata, timeout=60
        )
        # Sent once the watch is open; a refused call gets its status with it.
        await call.initial_metadata()
        if call.done():
            return await call.code()
        call.cancel()  # open: it would run until cancelled
        return grpc.StatusCode.OK


async def test_ten_thousand_hostile_requests_change_nothing(
    start_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cases = draw(HYPOTHESIS_BATCHES, SEED) + mutations(MUTATIONS, SEED) + floods(SEED)
    config = make_config(
        server={
            "store": "sqlite",
            "data_dir": str(tmp_path),
            "max_content_bytes": 128 * 1024,
            "max_streams_per_client": 6,
        },
        processor={"rate_limit_rps": 100_000.0, "queue_size": 2000, "worker_timeout": "5s"},
        health={"enabled": False},
    )
    server = await start_server(config)
    channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
    fuzzer = Fuzzer(channels)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(number: int, case: Case) -> None:
        async with slots:
            await fuzzer.send(number, case)

    async def held_watches() -> None:
        """More WatchEvents for one identity than it may hold, all held open at once."""
        calls = []
        for n in range(10):
            case = StreamCase("WatchEvents", (b"",), (("aiproc-client-id", "holder"),))
            call = channels[n % 4].unary_stream(SERVICE + "WatchEvents")(
                b"", metadata=case.metadata, timeout=60
            )
            await call.initial_metadata()
            calls.append(call)
        for call in calls:
            code = await call.code() if call.done() else grpc.StatusCode.OK
            fuzzer.codes[("WatchEvents", code)] += 1
            call.cancel()

    try:
        await asyncio.gather(held_watches(), *(one(n, case) for n, case in enumerate(cases)))
        stub = pb_grpc.ProcessorServiceStub(channels[0])

        assert fuzzer.calls >= 10_000
        assert fuzzer.ended_while_writing < fuzzer.calls // 20
        assert fuzzer.bad == [], f"{len(fuzzer.bad)} bad replies, e.g. {fuzzer.bad[:3]}"
        # The cases reached the server's every answer, not only its parser's.
        codes = {code for _, code in fuzzer.codes}
        assert codes >= ALLOWED - {
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        }
        assert len(fuzzer.accepted) >= 100

        health = health_pb2_grpc.HealthStub(channels[1])
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for task_id, owner in fuzzer.accepted.items():
            got = await stub.GetTask(
                pb.GetTaskRequest(task_id=task_id),
                metadata=(("aiproc-client-id", owner),),
                timeout=10,
            )
            assert got.task.state in VALID_STATES, got.task

        normal = await stub.QueueTask(
            queue_request(priority=task_pb2.PRIORITY_CRITICAL),
            metadata=(("aiproc-client-id", "after-fuzz"),),
            timeout=5,
        )
        stream = Stream(stub, "after-fuzz", deadline=60)
        stream.subscribe(normal.task_id)
        (result,) = await stream.results(1, within=30)
        stream.close()
        assert result.success, result.error
        stats = await stub.Stats(pb.StatsRequest(), timeout=5)
        assert server.processor.pool.alive == stats.total_workers
        # Nothing a caller sent made the server log a failure, or its text (a warning per
        # malformed baggage member did, once); only the start-up note of the offline provider.
        noted = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name != "aiproc.server.providers.registry"
        ]
        assert noted == [], [r.getMessage() for r in noted[:3]]
    finally:
        for channel in channels:
            await channel.close()
