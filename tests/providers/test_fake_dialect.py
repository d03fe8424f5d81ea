"""The seam for other vendors' fakes: a dialect of our own on the engine, the registry, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from aiproc.server.cli.main import main
from aiproc.server.fakes import (
    FakeError,
    FakeProviderServer,
    FakeRequest,
    FakeResponse,
    FakeUsage,
    HttpError,
    Route,
    RouteKind,
    registry,
)
from aiproc.server.fakes.runner import run_fake_provider


class ToyDialect:
    """A vendor with the model in the path, the key in the query, and its own error shape."""

    name = "toy"
    title = "Toy"

    def routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/api/models/{model}:generate", "completion"),
            Route("GET", "/api/models", "models"),
        )

    def base_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}/api"

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        if request.query.get("key") != "k1":
            return FakeError(403, "bad key")
        if kind == "completion" and not isinstance(request.body, dict):
            return FakeError(400, "want an object")
        return None

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        if kind == "models":
            return FakeResponse(200, {"models": ["toy-1"]})
        body = {"model": request.match_info["model"], "text": content, "tokens": usage.total_tokens}
        return FakeResponse(200, body, {"x-toy": "1"})

    def error(self, status: int, message: str) -> FakeResponse:
        return FakeResponse(status, {"problem": {"code": status, "detail": message}})

    def prompt_text(self, request: FakeRequest) -> str:
        return str(request.body.get("prompt", ""))


@pytest.fixture
async def toy() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer(ToyDialect()) as server:
        yield server


async def test_a_dialect_shapes_the_routes_the_checks_and_the_answers(
    toy: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    url = f"{toy.base_url}/models/toy-1:generate"

    good = await client.post(url, params={"key": "k1"}, json={"prompt": "abcd"})
    keyless = await client.post(url, json={"prompt": "abcd"})
    listed = await client.get(f"{toy.base_url}/models", params={"key": "k1"})

    assert good.json() == {"model": "toy-1", "text": "Enhanced: abcd", "tokens": 1 + 4}
    assert good.headers["x-toy"] == "1"
    assert (keyless.status_code, keyless.json()["problem"]["detail"]) == (403, "bad key")
    assert listed.json() == {"models": ["toy-1"]}
    first = toy.requests[0]
    assert (first.match_info, first.query, first.body) == (
        {"model": "toy-1"},
        {"key": "k1"},
        {"prompt": "abcd"},
    )
    assert first.raw == b'{"prompt":"abcd"}'


async def test_faults_come_in_the_dialects_error_shape(
    toy: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    toy.fail_next(1, fault=HttpError(529))

    response = await client.get(f"{toy.base_url}/models")

    assert response.json() == {"problem": {"code": 529, "detail": "fake error 529"}}


def test_registering_a_dialect_makes_it_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "DIALECTS", dict(registry.DIALECTS))

    registry.register("toy", ToyDialect)

    assert isinstance(registry.create_dialect("toy"), ToyDialect)
    with pytest.raises(ValueError, match="already"):
        registry.register("toy", ToyDialect)
    with pytest.raises(ValueError, match=r"unknown fake dialect 'nope'; known: .*\btoy\b"):
        registry.create_dialect("nope")


class Announcements(io.StringIO):
    """Captured stdout that tells the test when something was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


async def test_run_fake_provider_serves_a_registered_dialect_with_chaos(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.DIALECTS, "toy", ToyDialect)
    out = Announcements()
    with contextlib.redirect_stdout(out):
        server = asyncio.create_task(
            run_fake_provider("127.0.0.1", 0, 0.0, dialect="toy", fault=HttpError(503))
        )
        try:
            async with asyncio.timeout(5):
                await out.written.wait()
            line = out.getvalue()
            match = re.fullmatch(r"fake Toy server on (\S+) \(faults: 503\)\n", line)
            assert match is not None, line
            response = await client.get(f"{match.group(1)}/models")
            assert response.status_code == 503
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--dialect", "nope"], "unknown fake dialect 'nope'"),
        (["--fault", "teapot"], "unknown fault"),
        (["--fault", "refuse"], "refuse"),
        (["--failure-rate", "1.5"], "failure_rate"),
        (["--latency-sigma", "-0.5"], "latency_sigma"),
    ],
)
def test_bad_fake_provider_options_are_usage_errors(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fake-provider", "--port", "0", *argv]) == 2

    assert problem in capsys.readouterr().err
