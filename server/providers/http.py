"""The one place HTTP clients for providers are made: httpx over our aiohttp transport."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
from opentelemetry.trace import Tracer

from aiproc.server.providers.aiohttp_transport import AiohttpTransport
from aiproc.server.telemetry.http_spans import TracedTransport

# Idle connections are dropped a little before the 5 s keep-alive of common
# servers (uvicorn, behind vLLM and LiteLLM), so a request is never written to
# a socket the server is closing at that same moment.
_KEEPALIVE_EXPIRY = 4.0
_DEFAULT_LIMITS = httpx.Limits()
"""Only for the hooks' signatures: create_http_client always passes its own limits."""


class _ProviderClient(httpx.AsyncClient):
    """An httpx client whose transports, direct and through a proxy (HTTP(S)_PROXY), are
    aiohttp's, each tracing its requests when there is a tracer."""

    def __init__(self, tracer: Tracer | None, **kwargs: Any) -> None:
        self._tracer = tracer  # read by the _init_* hooks, which the base __init__ calls
        super().__init__(**kwargs)

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        return self._traced(AiohttpTransport(ssl_context=ssl_context, limits=limits))

    def _init_proxy_transport(
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
    ) -> httpx.AsyncBaseTransport:
        ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        return self._traced(AiohttpTransport(ssl_context=ssl_context, limits=limits, proxy=proxy))

    def _traced(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return transport if self._tracer is None else TracedTransport(transport, self._tracer)


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
    # transport sustains about 8x the throughput at 64 calls in flight. The
    # client's hooks build one for the direct route and one per proxy route
    # (HTTP(S)_PROXY), where a transport handed to it would serve only the first.
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
    )
    settings: dict[str, Any] = {"limits": limits, "timeout": httpx.Timeout(timeout)}
    return _ProviderClient(tracer, **settings)


def transport_for(client: httpx.AsyncClient, url: httpx.URL) -> httpx.AsyncBaseTransport:
    """The transport `client` routes `url` through: the direct one, or a proxy's when
    HTTP(S)_PROXY covers the URL.

    httpx keeps this lookup private; it has had this name and meaning through the
    0.2x releases, and pyproject pins httpx to 0.28.
    """
    return client._transport_for_url(url)
