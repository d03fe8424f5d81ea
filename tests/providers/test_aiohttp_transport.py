"""What our aiohttp transport turns aiohttp's exceptions into, and that it stays closed."""

from __future__ import annotations

import ssl

import aiohttp
import httpx
import pytest

from aiproc.server.providers.aiohttp_transport import AiohttpTransport, transport_error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), httpx.ReadError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.ClientPayloadError("truncated"), httpx.ReadError),
        (aiohttp.InvalidUrlClientError("ftp://x"), httpx.UnsupportedProtocol),
    ],
)
def test_aiohttp_errors_become_httpx_errors_of_the_same_meaning(
    error: aiohttp.ClientError, expected: type[httpx.TransportError]
) -> None:
    mapped = transport_error(error)

    assert type(mapped) is expected


def test_an_answer_that_is_not_http_is_left_to_the_caller() -> None:
    error = aiohttp.ClientResponseError(None, (), status=400, message="bad status line")  # type: ignore[arg-type]

    assert transport_error(error) is None


async def test_a_closed_transport_refuses_to_send() -> None:
    transport = AiohttpTransport(ssl_context=ssl.create_default_context(), limits=httpx.Limits())
    await transport.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))
