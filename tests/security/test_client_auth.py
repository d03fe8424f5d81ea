"""The Python clients with a token and TLS settings, against a real server on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from aiproc.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    PermissionDeniedError,
    Unavailable,
)
from aiproc.server.app import AiprocServer
from tests.security.support import Pki, config_with, make_key
from tests.support import ServerFactory

ALICE = make_key("alice-app", "alice")
OPS = make_key("ops", "ops", role="admin")
TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."
FAST = {"rate_limit_rps": 10_000.0, "rate_limit_burst": 100}


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., AsyncClient]]:
    made: list[AsyncClient] = []

    def make(server: AiprocServer, **kwargs: object) -> AsyncClient:
        made.append(AsyncClient(server.address, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def test_a_token_over_tls_reaches_every_kind_of_call(
    start_server: ServerFactory, pki: Pki, clients: Callable[..., AsyncClient]
) -> None:
    config = config_with([ALICE, OPS], server=pki.tls(), processor=FAST)
    server = await start_server(config)
    alice = clients(server, token=ALICE.token, ca=pki.ca_file)  # a path
    queued = await alice.queue("https://example.com/a", TEXT)
    result = await alice.wait(queued.task_id, timeout=10)  # a stream
    assert result.success
    assert [t.task_id for t in await alice.list_tasks()] == [queued.task_id]
    assert (await alice.stats()).counters.completed == 1  # her own tenant's figures
    with pytest.raises(PermissionDeniedError, match="WatchEvents needs role admin"):
        async with alice.watch_events(timeout=5) as refused:
            await anext(aiter(refused))
    ops = clients(server, token=OPS.token, ca=pki.ca_pem)  # bytes
    assert (await ops.stats()).counters.queued == 1
    async with ops.watch_events(timeout=5) as events:  # a stream an admin may open
        assert events is not None
    assert ALICE.token not in repr(alice)
    assert "TLS, token" in repr(alice)


async def test_missing_or_wrong_tokens_raise_authentication_error(
    start_server: ServerFactory, pki: Pki, clients: Callable[..., AsyncClient]
) -> None:
    server = await start_server(config_with([ALICE], server=pki.tls()))
    nobody = clients(server, ca=pki.ca_pem)
    with pytest.raises(AuthenticationError, match="missing credentials") as caught:
        await nobody.list_tasks()
    assert caught.value.code.name == "UNAUTHENTICATED"
    stranger = clients(server, token=make_key("x", "alice").token, ca=pki.ca_pem)
    with pytest.raises(AuthenticationError, match="invalid credentials"):
        await stranger.get("0" * 32)
    with pytest.raises(AuthenticationError):
        await stranger.wait("0" * 32, timeout=5)
    plaintext = clients(server, token=ALICE.token, timeout=0.5)
    with pytest.raises(Unavailable):
        await plaintext.list_tasks()


async def test_the_blocking_client_with_a_client_certificate(
    start_server: ServerFactory, pki: Pki
) -> None:
    server = await start_server(config_with(server=pki.tls(client_ca=True), processor=FAST))
    cert, key = pki.client_cert(common_name="billing")

    def use() -> list[str]:
        with Client(server.address, ca=pki.ca_file, cert=cert, key=key.read_bytes()) as client:
            queued = client.queue("https://example.com/b", TEXT)
            assert client.wait(queued.task_id, timeout=10).success
            return [t.task_id for t in client.list_tasks()]

    assert len(await asyncio.to_thread(use)) == 1


def test_settings_are_checked_before_any_call(pki: Pki) -> None:
    with pytest.raises(ValueError, match="cert and key go together"):
        AsyncClient(ca=pki.ca_file, cert=pki.cert_file)
    secret = "aiproc_s3cr3t tail"
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        AsyncClient(token=secret)
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(FileNotFoundError):
        Client(ca="/nonexistent/ca.pem")
