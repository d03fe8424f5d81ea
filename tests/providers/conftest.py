"""Fixtures for provider tests: a real fake OpenAI server on port 0 and a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.providers.http import create_http_client


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    http_client = create_http_client(max_connections=8)
    yield http_client
    await http_client.aclose()
