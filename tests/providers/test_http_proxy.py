"""Provider requests honour HTTP(S)_PROXY: they go through the proxy's transport, not around it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.providers.http import create_http_client
from aiproc.server.providers.openai import OpenAIProvider
from tests.providers.vendor_support import make_request, provider_maker

make_provider = provider_maker(
    OpenAIProvider, api_key="sk-proxied", model="gpt-test", context_window=8192
)


class ForwardingProxy:
    """A plain HTTP forward proxy on port 0 that notes each request's absolute target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _forward(self, request: web.Request) -> web.Response:
        # A proxy is sent the absolute URL as the request target.
        target = str(request.url)
        self.targets.append(target)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target, headers=headers, data=await request.read()
            ) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )

    async def __aenter__(self) -> ForwardingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardingProxy]:
    async with ForwardingProxy() as running:
        yield running


async def test_a_provider_call_goes_through_the_proxy_the_environment_names(
    fake: FakeOpenAIServer, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    client = create_http_client(max_connections=4)
    try:
        completion = await make_provider(fake, client).complete(make_request())
    finally:
        await client.aclose()

    assert completion.content.startswith("Enhanced: ")
    assert proxy.targets == [f"{fake.base_url}/chat/completions"]


async def test_without_a_proxy_in_the_environment_the_call_goes_direct(
    fake: FakeOpenAIServer, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = create_http_client(max_connections=4)
    try:
        completion = await make_provider(fake, client).complete(make_request())
    finally:
        await client.aclose()

    assert completion.content.startswith("Enhanced: ")
    assert proxy.targets == []
    assert len(fake.requests) == 1
