"""One HTTP request to a vendor API, bounded in time and size, with transport failures mapped.

    read/write/pool timeout, deadline      ProviderTimeout
    other network errors                   TransientError
    a body over 8 MiB                      BadResponse
    an answer that is not HTTP, or whose   BadResponse
    Content-Encoding does not decode

HTTP error statuses are not raised here: the vendor module reads them, since
only it knows where its API puts the details.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from aiproc.server.core.errors import BadResponse, ProviderError, ProviderTimeout, TransientError
from aiproc.server.providers._http_errors import Redactor, json_object
from aiproc.server.providers.http import transport_for

_USER_AGENT = f"aiproc/{importlib.metadata.version('aiproc')}"
# A completion is kilobytes; a body this large is a broken server or proxy.
_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def capped(seconds: float, cap: float | None) -> float:
    """`seconds`, but no more than `cap` when there is one."""
    return seconds if cap is None else min(seconds, cap)


class Exchange:
    """Sends requests for one provider through an HTTP client it shares but does not own."""

    def __init__(self, *, provider: str, client: httpx.AsyncClient, redactor: Redactor) -> None:
        self._provider = provider
        self._client = client
        self._redactor = redactor

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        seconds: float,
        json: dict[str, Any] | None = None,
    ) -> Reply:
        """Sends one request and reads the whole answer within `seconds`."""
        try:
            # The transport's own timeouts are per phase; this bounds the whole call.
            async with asyncio.timeout(seconds):
                return await self._send(method, url, headers, json, seconds)
        except TimeoutError:
            raise ProviderTimeout(
                f"{self._provider}: no answer within {seconds:g}s", provider=self._provider
            ) from None
        except httpx.TransportError as exc:
            raise self._network_error(exc) from exc
        # httpx's other errors (a Content-Encoding that does not decode, ...), and aiohttp's
        # own for an answer that is not HTTP at all (a bad status line or header), which our
        # transport lets through unmapped.
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            detail = self._redactor.excerpt(str(exc)) or type(exc).__name__
            raise BadResponse(
                f"{self._provider}: unreadable answer: {detail}", provider=self._provider
            ) from exc

    async def get_json(
        self,
        url: str,
        *,
        headers: dict[str, str],
        seconds: float,
        error: Callable[[Reply], ProviderError],
    ) -> dict[str, Any]:
        """GETs `url` and returns its JSON object; raises `error(reply)` for an error status
        and BadResponse for a body that is not a JSON object."""
        reply = await self.send("GET", url, headers=headers, seconds=seconds)
        if not reply.ok:
            raise error(reply)
        data = json_object(reply.body)
        if data is None:
            raise BadResponse(
                f"{self._provider}: HTTP {reply.status}: the answer is not a JSON object",
                provider=self._provider,
            )
        return data

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        payload: dict[str, Any] | None,
        seconds: float,
    ) -> Reply:
        # A Request built here and handed straight to the client's transport skips
        # the client's merging of base URL, default headers and cookies, its auth and
        # redirect layers and its cookie jar: about a fifth of a call's CPU at high
        # rates, and a provider needs none of them (redirects are not followed anyway).
        request = httpx.Request(
            method,
            _parsed_url(url),
            headers=_request_headers(tuple(headers.items()), with_body=payload is not None),
            content=None if payload is None else _json_bytes(payload),
            # No pool timeout: waiting for our own pool is bounded by the deadline
            # above and must not pass for the provider being slow or down.
            extensions={
                "timeout": {"connect": seconds, "read": seconds, "write": seconds, "pool": None}
            },
        )
        response = await transport_for(self._client, request.url).handle_async_request(request)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in _body_chunks(response):
                size += len(chunk)
                if size > _MAX_BODY_BYTES:
                    raise BadResponse(
                        f"{self._provider}: HTTP {response.status_code}: body larger than "
                        f"{_MAX_BODY_BYTES} bytes",
                        provider=self._provider,
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        return Reply(response.status_code, response.headers, b"".join(chunks))

    def _network_error(self, exc: httpx.TransportError) -> ProviderError:
        detail = self._redactor.excerpt(str(exc)) or type(exc).__name__
        # ConnectTimeout is not here: a provider that cannot be reached in time is
        # unreachable (transient, so the next attempt goes elsewhere), not slow.
        if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
            return ProviderTimeout(
                f"{self._provider}: timed out: {detail}", provider=self._provider
            )
        return TransientError(f"{self._provider}: network error: {detail}", provider=self._provider)

    def __repr__(self) -> str:
        return f"<Exchange provider={self._provider!r}>"


def _body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The answer's body as it arrives, decoded. Without a Content-Encoding (the usual case)
    the transport's chunks are the body, and reading them straight spares httpx's decoding
    and chunking layers, a tenth of a call's CPU."""
    if "content-encoding" in response.headers:
        return response.aiter_bytes()
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)  # a transport's answer always is
    return aiter(stream)


@functools.lru_cache(maxsize=64)
def _request_headers(headers: tuple[tuple[str, str], ...], *, with_body: bool) -> httpx.Headers:
    """A provider's headers with ours, normalised once: a provider sends the same few over
    and over, and httpx normalising them on every request cost more than the request's
    other Python work together. httpx.Request copies them, so the cached ones never change."""
    normalised = httpx.Headers(dict(headers))
    normalised["user-agent"] = _USER_AGENT
    if with_body:
        normalised["content-type"] = "application/json"
    return normalised


@functools.lru_cache(maxsize=256)
def _parsed_url(url: str) -> httpx.URL:
    """`url` parsed once: a provider calls the same few endpoints over and over."""
    return httpx.URL(url)


def _json_bytes(payload: dict[str, Any]) -> bytes:
    """The body httpx's `json=` would send: compact UTF-8, no NaN."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
