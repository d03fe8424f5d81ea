"""A fake OpenAI-compatible server on a real socket, with scriptable faults.

Tests, benchmarks and operators rehearsing an outage point a provider at it:

    async with FakeOpenAIServer() as fake:
        fake.enqueue(FakeReply(status=429, headers={"Retry-After": "1"}))
        ...  # call fake.base_url; the first request gets the 429, later ones succeed
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aiproc.server.providers.prompt import estimate_tokens

__all__ = ["FAKE_MODEL", "FakeOpenAIServer", "FakeReply", "RecordedRequest", "run_fake_provider"]

FAKE_MODEL = "fake-gpt"
_ECHO_CHARS = 200
# Requests carry up to 1 MiB of content, JSON-escaped; aiohttp's default cap is 1 MiB.
_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Benchmarks open many connections at once; the default backlog of 128 drops some.
_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class FakeReply:
    """One scripted answer. Without a body, errors get an OpenAI error body, 200 a completion."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | bytes | Mapping[str, Any] | None = None
    """A mapping is sent as JSON; str and bytes are sent as they are."""
    delay: float = 0.0
    """Seconds to wait before answering, on top of the server's latency."""
    hang: bool = False
    """Never answer; the connection stays open until the client gives up."""
    drop_connection: bool = False
    """Close the connection without answering."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: Any
    """The parsed JSON body; None when there is none or it is not JSON."""
    arrived_at: float
    """time.monotonic() when the request was read."""


class FakeOpenAIServer:
    """Serves /v1/chat/completions and /v1/models, answering from a queue of FakeReply."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0, *, record: bool = True
    ) -> None:
        """`record=False` keeps only the count of requests, for long runs and benchmarks."""
        self.host = host
        self.port = port
        self.latency = latency
        """Seconds every request waits before its answer; may be changed while serving."""
        self.requests: list[RecordedRequest] = []
        self.request_count = 0
        self._record = record
        self._replies: collections.deque[FakeReply] = collections.deque()
        self._ids = itertools.count(1)
        self._arrived = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def enqueue(self, *replies: FakeReply) -> None:
        """Queues replies for the next requests, one each, on any endpoint."""
        self._replies.extend(replies)

    def fail_next(self, n: int, status: int = 500) -> None:
        """The next `n` requests get `status` with an OpenAI error body."""
        self.enqueue(*(FakeReply(status=status) for _ in range(n)))

    # A timeout argument, not asyncio.timeout around the call: a wait for a
    # fake should never be unbounded, so the bound is built in.
    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Returns once `n` requests have arrived in all; raises TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.request_count >= n)

    async def start(self) -> None:
        """Starts listening (again, after `aclose`); port 0 becomes the port the system picked."""
        self._stopping.clear()
        app = web.Application(client_max_size=_MAX_REQUEST_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation ends a hanging handler when its client goes away;
        # answers still in flight at shutdown are not worth aiohttp's default minute.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def aclose(self) -> None:
        """Stops listening and drops connections still waiting for an answer."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"<FakeOpenAIServer {self.base_url} [requests: {self.request_count}, "
            f"queued replies: {len(self._replies)}, latency: {self.latency:g}s]>"
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._completion)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, _model_list)

    async def _answer(
        self, request: web.Request, success: Callable[[Any], web.Response]
    ) -> web.StreamResponse:
        """Records `request`, then plays the next queued reply, or `success` when none is queued."""
        body = await self._arrive(request)
        reply = self._replies.popleft() if self._replies else FakeReply()
        if not await self._wait(self.latency + reply.delay) or reply.hang:
            await self._stopping.wait()
            return _drop(request)
        if reply.drop_connection:
            return _drop(request)
        if reply.body is not None or reply.status != 200:
            return _scripted(reply)
        response = success(body)
        response.headers.update(reply.headers)
        return response

    async def _arrive(self, request: web.Request) -> Any:
        """Reads and records the request; returns its JSON body, or None."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if self._record:
            headers = {name.lower(): value for name, value in request.headers.items()}
            self.requests.append(
                RecordedRequest(request.method, request.path, headers, body, time.monotonic())
            )
        self.request_count += 1
        async with self._arrived:
            self._arrived.notify_all()
        return body

    async def _wait(self, seconds: float) -> bool:
        """Sleeps `seconds`; False if the server began stopping meanwhile."""
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()
            except TimeoutError:
                return True
        return not self._stopping.is_set()

    def _completion(self, body: Any) -> web.Response:
        if problem := _invalid_chat_request(body):
            return _error_response(400, problem)
        messages = body["messages"]
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        content = "Enhanced: " + user[:_ECHO_CHARS]
        prompt_tokens = sum(estimate_tokens(m["content"]) for m in messages)
        completion_tokens = estimate_tokens(content)
        completion = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return web.json_response(completion)


def _invalid_chat_request(body: Any) -> str:
    """Why `body` is not a chat completion request a real server would take, or ""."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return "each message must be an object with a string 'content'"
        if message.get("role") not in ("system", "user", "assistant"):
            return "each message must have role 'system', 'user' or 'assistant'"
    return ""


def _scripted(reply: FakeReply) -> web.Response:
    if reply.body is None:
        return _error_response(reply.status, f"fake error {reply.status}", reply.headers)
    if isinstance(reply.body, Mapping):
        return web.json_response(dict(reply.body), status=reply.status, headers=reply.headers)
    data = reply.body.encode() if isinstance(reply.body, str) else reply.body
    headers = {"Content-Type": "application/json", **reply.headers}
    return web.Response(body=data, status=reply.status, headers=headers)


def _error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    error = {"message": message, "type": "fake_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Closes the connection unanswered; aiohttp then quietly fails to send the response."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


def _model_list(_body: Any) -> web.Response:
    model = {"id": FAKE_MODEL, "object": "model", "created": 0, "owned_by": "aiproc-fake"}
    return web.json_response({"object": "list", "data": [model]})


async def run_fake_provider(host: str, port: int, latency: float) -> None:
    """Serves a fake OpenAI-compatible API until cancelled, announcing its URL on stdout."""
    async with FakeOpenAIServer(host, port, latency, record=False) as fake:
        print(f"fake OpenAI-compatible server on {fake.base_url}", flush=True)
        await asyncio.Event().wait()
