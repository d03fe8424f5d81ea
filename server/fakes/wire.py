"""The fake's HTTP edge: requests read into FakeRequests, answers sent as made or broken."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from multidict import CIMultiDict

from aiproc.server.fakes.dialect import FakeRequest, FakeResponse
from aiproc.server.fakes.faults import SlowBody

__all__ = [
    "drop",
    "echo",
    "empty",
    "encode",
    "half",
    "html_page",
    "raw",
    "read",
    "respond",
    "trickle",
]

_JSON = "application/json"
# What a captive portal or a proxy's login page puts where the JSON should be.
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    b"<body><h1>Sign in to continue</h1></body></html>\n"
)


async def read(request: web.Request) -> FakeRequest:
    """Reads the whole request; a body that is not JSON is kept raw, and parsed as None."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return FakeRequest(
        method=request.method,
        path=request.path,
        match_info=dict(request.match_info),
        query=dict(request.query),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
        raw=raw,
        arrived_at=time.monotonic(),
    )


def respond(response: FakeResponse, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    """`response` as it is, with `extra_headers` replacing its own of the same name."""
    data, headers = encode(response)
    if extra_headers:
        headers.update(extra_headers)
    return web.Response(body=data, status=response.status, headers=headers)


def half(response: FakeResponse) -> web.Response:
    """A 200 with `response`'s headers and the first half of its body: JSON cut mid-value."""
    data, headers = encode(response)
    return web.Response(body=data[: len(data) // 2], status=200, headers=headers)


def html_page() -> web.Response:
    """A 200 text/html page instead of JSON."""
    return web.Response(body=_HTML_PAGE, status=200, content_type="text/html")


def empty() -> web.Response:
    """A 200 declared as JSON, with no body."""
    return web.Response(body=b"", status=200, headers={"Content-Type": _JSON})


async def trickle(
    request: web.Request,
    response: FakeResponse,
    fault: SlowBody,
    wait: Callable[[float], Awaitable[bool]],
) -> web.StreamResponse:
    """Sends `response`'s headers at once, then its body a chunk per `fault.delay` seconds.

    `wait(seconds)` sleeps and answers False when the server is stopping,
    which drops the connection instead of finishing the body.
    """
    data, headers = encode(response)
    stream = web.StreamResponse(status=response.status, headers=headers)
    stream.content_length = len(data)
    await stream.prepare(request)
    for start in range(0, len(data), fault.chunk):
        if start and not await wait(fault.delay):
            drop(request)
            return stream
        await stream.write(data[start : start + fault.chunk])
    await stream.write_eof()
    return stream


def echo(request: FakeRequest, status: int) -> web.Response:
    """`status` with an error body that repeats the request's path and headers."""
    shown = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
    body = {
        "error": {"message": f"{request.method} {request.path} with {shown}", "type": "echo"},
        "headers": dict(request.headers),
    }
    return web.json_response(body, status=status)


def raw(request: web.Request, data: bytes) -> web.Response:
    """Writes `data` after "HTTP/1.1 " straight to the socket, whatever it holds, then closes
    the connection; aiohttp then quietly fails to send what is returned."""
    if request.transport is not None:
        request.transport.write(b"HTTP/1.1 " + data)
        request.transport.close()
    return web.Response()


def drop(request: web.Request) -> web.Response:
    """Aborts the connection unanswered; aiohttp then quietly fails to send what is returned."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


def encode(response: FakeResponse) -> tuple[bytes, CIMultiDict[str]]:
    """`response`'s body as bytes, and its headers with a content type."""
    headers = CIMultiDict(response.headers)
    if isinstance(response.body, Mapping):
        data = json.dumps(response.body).encode()
    else:
        data = response.body
    headers.setdefault("Content-Type", _JSON)
    return data, headers
