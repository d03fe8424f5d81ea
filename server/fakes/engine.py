"""A fake LLM provider on a real socket: any vendor's dialect, with scriptable faults.

Tests, benchmarks and operators rehearsing an outage point a provider at it:

    async with FakeProviderServer(OpenAIDialect()) as fake:
        fake.enqueue(FakeReply(fault=Reset()))                  # the next request only
        fake.set_phases([Phase(HttpError(503), requests=30),   # then 30 failures,
                         Phase(Refuse(), duration=5)])          # then 5 s of refusals
        ...  # point a provider at fake.base_url

Each request takes the next queued `FakeReply` if there is one, else the
current phase's fault, else a normal answer: the dialect's success echoing
the prompt, or its error if the request is one a real server would reject.
The same server answers a control API under /_fake/ (see `control`).
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Self

from aiohttp import web

from aiproc.server.fakes import control, garbage, wire
from aiproc.server.fakes.dialect import Dialect, FakeRequest, FakeResponse, FakeUsage, RouteKind
from aiproc.server.fakes.faults import (
    EchoRequest,
    EmptyBody,
    FakeReply,
    Fault,
    Garbage,
    Hang,
    HttpError,
    MalformedJson,
    Refuse,
    Reset,
    SlowBody,
    WrongContentType,
)
from aiproc.server.fakes.listener import Listener
from aiproc.server.fakes.phases import Phase, PhaseSchedule
from aiproc.server.providers.prompt import estimate_tokens
from aiproc.server.resilience.clock import Clock, SystemClock

__all__ = ["FakeProviderServer", "FakeStats"]

_ECHO_CHARS = 200
# Requests carry up to 1 MiB of content, JSON-escaped; aiohttp's default cap is 1 MiB.
_MAX_REQUEST_BYTES = 64 * 1024 * 1024
_NORMAL = FakeReply()


@dataclass(frozen=True, slots=True)
class FakeStats:
    """What the fake has done since it was made or reset, and what it will do next."""

    requests: int
    outcomes: Mapping[str, int]
    """Requests per outcome: the status answered ("200", "503"), the fault's name ("reset",
    "slow"), or "dropped" for those the fake's own stopping cut off."""
    phase: Phase | None
    phase_requests: int
    """Requests the current phase has had."""
    phases_queued: int
    replies_queued: int
    listening: bool


class FakeProviderServer:
    """Serves a dialect's routes and /_fake/, answering from a reply queue, then phases."""

    def __init__(
        self,
        dialect: Dialect,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        *,
        record: bool = True,
        clock: Clock | None = None,
        latency_sigma: float = 0.0,
        seed: int = 0,
    ) -> None:
        """`record=False` keeps only counts, for long runs; `clock` times the phases.

        `latency_sigma` > 0 draws each request's wait from a lognormal distribution
        whose median is `latency` and whose log has that standard deviation, from a
        generator seeded with `seed`, so a run can be replayed.
        """
        if latency_sigma < 0:
            raise ValueError("latency_sigma must be >= 0")
        self.dialect = dialect
        self.latency = latency
        """Seconds every request waits before its answer (the median when `latency_sigma`
        is set); may be changed while serving."""
        self.latency_sigma = latency_sigma
        self._latency_draws = random.Random(seed)
        self._garbage_draws: dict[int, random.Random] = {}
        """One generator per garbage seed, made on first use, so a run replays."""
        self.requests: list[FakeRequest] = []
        self.request_count = 0
        self._record = record
        self._clock = clock if clock is not None else SystemClock()
        self._replies: collections.deque[FakeReply] = collections.deque()
        self._schedule = PhaseSchedule(self._clock.monotonic)
        self._generation = self._schedule.generation
        self._outcomes: collections.Counter[str] = collections.Counter()
        self._arrived = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._listener = Listener(host, port)
        self._runner: web.AppRunner | None = None
        self._phase_timer: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return self._listener.host

    @property
    def port(self) -> int:
        """The port asked for; once started, the port listened on, even when 0 was asked for."""
        return self._listener.port

    @property
    def base_url(self) -> str:
        return self.dialect.base_url(self._url_host, self.port)

    @property
    def control_url(self) -> str:
        """Where the control API lives, e.g. http://127.0.0.1:8080/_fake."""
        return f"http://{self._url_host}:{self.port}{control.PREFIX}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def enqueue(self, *replies: FakeReply) -> None:
        """Queues replies for the next requests, one each, on any endpoint, ahead of any phase."""
        self._replies.extend(replies)

    def fail_next(self, n: int, status: int = 500, *, fault: Fault | None = None) -> None:
        """The next `n` requests get `fault`, or else `status` with the dialect's error body."""
        reply = FakeReply(fault=fault) if fault is not None else FakeReply(status=status)
        self.enqueue(*[reply] * n)

    def set_phase(self, phase: Phase) -> None:
        """Replaces the schedule with one phase, starting now."""
        self.set_phases([phase])

    def set_phases(self, phases: Iterable[Phase]) -> None:
        """Replaces the schedule; the first phase starts now, the others as each one ends."""
        self._schedule.set(phases)
        self._follow_schedule()

    @property
    def phase(self) -> Phase | None:
        """The phase in force; None when answering normally."""
        return self._schedule.current

    def stats(self) -> FakeStats:
        phase = self.phase
        return FakeStats(
            requests=self.request_count,
            outcomes=dict(self._outcomes),
            phase=phase,
            phase_requests=self._schedule.served,
            phases_queued=len(self._schedule.upcoming),
            replies_queued=len(self._replies),
            listening=self._listener.is_open,
        )

    def reset(self) -> None:
        """Back to normal answers: no phases, no queued replies, counts and records cleared."""
        self._replies.clear()
        self._outcomes.clear()
        self.requests.clear()
        self.request_count = 0
        self.set_phases(())

    # A timeout argument, not asyncio.timeout around the call: a wait for a
    # fake should never be unbounded, so the bound is built in.
    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Returns once `n` requests have arrived in all; raises TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.request_count >= n)

    async def wait_for_listening(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Returns once the fake accepts connections; raises TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout):
            await self._listener.wait_open()

    async def start(self) -> None:
        """Starts listening (again, after `aclose`); port 0 becomes the port the system picked."""
        self._stopping.clear()
        app = web.Application(client_max_size=_MAX_REQUEST_BYTES)
        for route in self.dialect.routes():
            app.router.add_route(route.method, route.path, self._handler(route.kind))
        control.add_routes(app, self)
        # handler_cancellation ends a hanging handler when its client goes away;
        # answers still in flight at shutdown are not worth aiohttp's default minute.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        assert runner.server is not None
        try:
            await self._listener.open(runner.server)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._follow_schedule(force=True)

    async def aclose(self) -> None:
        """Stops listening and drops connections still waiting for an answer."""
        self._stopping.set()
        if self._phase_timer is not None:
            self._phase_timer.cancel()
            await asyncio.gather(self._phase_timer, return_exceptions=True)
            self._phase_timer = None
        await self._listener.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        phase = self._schedule.current
        return (
            f"<{type(self).__name__} {self.dialect.name} {self.base_url} "
            f"[requests: {self.request_count}, queued replies: {len(self._replies)}, "
            f"phase: {phase or 'none'}, latency: {self.latency:g}s]>"
        )

    def _handler(self, kind: RouteKind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(kind, request)

        return handle

    async def _serve(self, kind: RouteKind, request: web.Request) -> web.StreamResponse:
        """Records `request`, then answers it with the next queued reply, phase fault or success."""
        connection = request.protocol
        self._listener.busy.add(connection)
        try:
            return await self._answer(kind, request)
        finally:
            self._listener.busy.discard(connection)

    async def _answer(self, kind: RouteKind, request: web.Request) -> web.StreamResponse:
        fake_request = await self._arrive(request)
        if self._replies:
            reply = self._replies.popleft()
            fault = reply.effective_fault
        else:
            reply, fault = _NORMAL, self._schedule.draw()
            if self._schedule.generation != self._generation:
                self._follow_schedule()
        if not await self._wait(self.draw_latency() + reply.delay) or isinstance(fault, Hang):
            self._outcomes["hang" if isinstance(fault, Hang) else "dropped"] += 1
            await self._stopping.wait()
            return wire.drop(request)
        if fault is None:
            response = self._normal(kind, fake_request, reply)
            self._outcomes[str(response.status)] += 1
            return response
        if not isinstance(fault, Garbage):  # counted by the kind of garbage drawn
            self._outcomes[fault.name] += 1
        return await self._misbehave(kind, fake_request, request, fault)

    def _garbage(
        self, kind: RouteKind, fake_request: FakeRequest, request: web.Request, seed: int
    ) -> web.StreamResponse:
        """One garbage answer, counted as an outcome "garbage:<kind>"."""
        draws = self._garbage_draws.setdefault(seed, random.Random(seed))
        success, _ = wire.encode(self._success(kind, fake_request))
        name, answer = garbage.answer(draws, success)
        self._outcomes[f"{Garbage.name}:{name}"] += 1
        if answer is None:
            return wire.drop(request)
        if isinstance(answer, bytes):
            return wire.raw(request, answer)
        return answer

    async def _misbehave(
        self, kind: RouteKind, fake_request: FakeRequest, request: web.Request, fault: Fault
    ) -> web.StreamResponse:
        match fault:
            case HttpError():
                error = self.dialect.error(fault.status, f"fake error {fault.status}")
                return wire.respond(error, fault.headers())
            case Reset() | Refuse() | Hang():
                return wire.drop(request)
            case SlowBody():
                answer = self._success(kind, fake_request)
                return await wire.trickle(request, answer, fault, self._wait)
            case MalformedJson():
                return wire.half(self._success(kind, fake_request))
            case WrongContentType():
                return wire.html_page()
            case EmptyBody():
                return wire.empty()
            case EchoRequest():
                return wire.echo(fake_request, fault.status)
            case Garbage():
                return self._garbage(kind, fake_request, request, fault.seed)

    def _normal(self, kind: RouteKind, fake_request: FakeRequest, reply: FakeReply) -> web.Response:
        if reply.body is not None:
            body = reply.body.encode() if isinstance(reply.body, str) else reply.body
            return wire.respond(FakeResponse(reply.status, body), reply.headers)
        if reply.status != 200:
            error = self.dialect.error(reply.status, f"fake error {reply.status}")
            return wire.respond(error, reply.headers)
        return wire.respond(self._success(kind, fake_request), reply.headers)

    def _success(self, kind: RouteKind, fake_request: FakeRequest) -> FakeResponse:
        """The dialect's answer to an accepted request, or its error for one it would reject."""
        if (problem := self.dialect.check_request(kind, fake_request)) is not None:
            return self.dialect.error(problem.status, problem.message)
        if kind != "completion":
            return self.dialect.success(kind, fake_request, "", FakeUsage(0, 0))
        prompt = self.dialect.prompt_text(fake_request)
        content = "Enhanced: " + prompt[:_ECHO_CHARS]
        usage = FakeUsage(estimate_tokens(prompt), estimate_tokens(content))
        return self.dialect.success(kind, fake_request, content, usage)

    async def _arrive(self, request: web.Request) -> FakeRequest:
        """Reads the request, records it if recording, and wakes `wait_for_requests`."""
        fake_request = await wire.read(request)
        if self._record:
            self.requests.append(fake_request)
        self.request_count += 1
        async with self._arrived:
            self._arrived.notify_all()
        return fake_request

    def draw_latency(self) -> float:
        """The wait before the next answer: `latency`, or a lognormal draw around it."""
        if self.latency_sigma == 0 or self.latency <= 0:
            return self.latency
        return self._latency_draws.lognormvariate(math.log(self.latency), self.latency_sigma)

    async def _wait(self, seconds: float) -> bool:
        """Sleeps `seconds`; False if the server began stopping meanwhile."""
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()
            except TimeoutError:
                return True
        return not self._stopping.is_set()

    def _follow_schedule(self, *, force: bool = False) -> None:
        """After a change of phase: stops or resumes listening, and times the phase's end."""
        phase = self._schedule.current
        if self._schedule.generation == self._generation and not force:
            return
        self._generation = self._schedule.generation
        if self._runner is None:
            return
        if phase is not None and isinstance(phase.fault, Refuse):
            self._listener.close()
        else:
            self._listener.reopen_soon()
        if self._phase_timer is not None:
            self._phase_timer.cancel()
            self._phase_timer = None
        if (left := self._schedule.time_left()) is not None:
            self._phase_timer = asyncio.create_task(self._phase_ends(left))

    async def _phase_ends(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        # Cleared first: following the schedule cancels the timer, and this is it.
        self._phase_timer = None
        # Forced: a timer may fire a hair before the phase's end, which then
        # has to be timed again rather than missed.
        self._follow_schedule(force=True)
