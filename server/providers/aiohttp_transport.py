"""An httpx transport over an aiohttp session: httpx's API for the providers, aiohttp's pool.

httpx's own connection pool collapses at the concurrency LLM calls run at (98%
of its CPU in pool bookkeeping at 64 calls in flight), where aiohttp's sustains
about 8x the rate. This bridge sends a request httpx built and hands back an
httpx.Response whose body streams from aiohttp. It replaces the httpx-aiohttp
package's transport, which did for every request what is done here once (the
session's cookie jar, the exception mapping set up as a context manager around
each call and each chunk), and it says what a dropped connection is: a read
error, where that package called it a connect timeout.

What aiohttp raises becomes httpx's exception of the same meaning; an answer
that is not HTTP at all (a bad status line or header) is left as aiohttp's
ClientResponseError, which the caller reads as an unreadable answer.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx

_CHUNK_BYTES = 64 * 1024

# Most specific first: the first match decides.
_ERRORS: tuple[tuple[type[aiohttp.ClientError], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.ReadError),  # reset, dropped, disconnected
)


def _aiohttp_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """The request's headers as aiohttp takes them: every one, in order, names as sent."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw]


def transport_error(error: aiohttp.ClientError) -> httpx.TransportError | None:
    """httpx's exception for `error`, or None for one that says the answer is not HTTP."""
    for source, target in _ERRORS:
        if isinstance(error, source):
            return target(str(error) or type(error).__name__)
    return None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session, directly or through `proxy`.

    The session is made on the first request, inside the event loop that uses it.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        limits: httpx.Limits,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._limits = limits
        self._proxy = str(proxy.url) if proxy is not None else None
        self._proxy_auth = (
            aiohttp.BasicAuth(*proxy.auth) if proxy is not None and proxy.auth else None
        )
        self._proxy_headers = dict(proxy.headers) if proxy is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        route = f"via {self._proxy}" if self._proxy else "direct"
        return f"<AiohttpTransport {route} max_connections={self._limits.max_connections}>"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            answer = await self._opened().request(
                request.method,
                str(request.url),
                headers=_aiohttp_headers(request.headers),
                data=request.content or None,
                allow_redirects=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
                proxy_headers=self._proxy_headers,
            )
        except aiohttp.ClientError as exc:
            mapped = transport_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        extensions = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode()
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=_Body(answer),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    def _opened(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("cannot send a request: the HTTP client is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry,
                ssl=self._ssl,
            )
            # Providers set no cookies worth keeping, and httpx decodes the body itself.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session


class _Body(httpx.AsyncByteStream):
    """An aiohttp answer's body, chunk by chunk; closing it frees the connection."""

    def __init__(self, answer: aiohttp.ClientResponse) -> None:
        self._answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._answer.content.iter_chunked(_CHUNK_BYTES):
                yield chunk
        except aiohttp.ClientError as exc:
            mapped = transport_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        self._answer.release()
        await self._answer.wait_for_close()
