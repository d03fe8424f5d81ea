"""The one place HTTP clients for providers are made.

httpx_aiohttp maps aiohttp.ClientConnectionError (a reset or dropped
connection, a refused connect) to httpx.ConnectTimeout, so callers must not
read ConnectTimeout as "the request took too long".
"""

from __future__ import annotations

from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient
from opentelemetry.trace import Tracer

from aiproc.server.telemetry.http_spans import TracedTransport

# Idle connections are dropped a little before the 5 s keep-alive of common
# servers (uvicorn, behind vLLM and LiteLLM), so a request is never written to
# a socket the server is closing at that same moment.
_KEEPALIVE_EXPIRY = 4.0


class _TracedClient(HttpxAiohttpClient):
    """HttpxAiohttpClient whose transports, direct and proxied, trace each request."""

    def __init__(self, tracer: Tracer, **kwargs: Any) -> None:
        self._tracer = tracer  # read by the _init_* hooks, which the base __init__ calls
        super().__init__(**kwargs)

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        return TracedTransport(super()._init_transport(*args, **kwargs), self._tracer)

    def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        return TracedTransport(super()._init_proxy_transport(*args, **kwargs), self._tracer)


def create_http_client(
    *, max_connections: int, timeout: float | None = None, tracer: Tracer | None = None
) -> httpx.AsyncClient:
    """An httpx client on the aiohttp transport, pooling up to `max_connections` connections.

    `timeout` is the default for every phase of a call, in seconds; None means
    none, for callers that bound each call themselves. With a `tracer`, each
    request gets a client span beneath the current one, and its context is sent
    in the `traceparent` header.
    """
    # httpx's own pool collapses at LLM-typical concurrency; the aiohttp
    # transport sustains about 8x the throughput at 64 calls in flight.
    # HttpxAiohttpClient builds an AiohttpTransport for direct and proxied
    # (HTTPS_PROXY) routes alike, where a bare transport would only serve the first.
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
    )
    settings: dict[str, Any] = {"limits": limits, "timeout": httpx.Timeout(timeout)}
    if tracer is None:
        return HttpxAiohttpClient(**settings)
    return _TracedClient(tracer, **settings)


def transport_for(client: httpx.AsyncClient, url: httpx.URL) -> httpx.AsyncBaseTransport:
    """The transport `client` routes `url` through: the direct one, or a proxy's when
    HTTP(S)_PROXY covers the URL.

    httpx keeps this lookup private; it has had this name and meaning through the
    0.2x releases, and pyproject pins httpx to 0.28.
    """
    return client._transport_for_url(url)
