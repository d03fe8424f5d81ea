"""Shared fixtures: an in-process server on port 0 and real channels to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from aiproc.server.app import AiprocServer
from aiproc.server.config import Config
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from tests.support import ServerFactory, make_config

pytest_plugins = ["tests.redis_support"]  # the redis_prefix fixture


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    """Starts in-process servers on port 0; stops them all at the end of the test."""
    servers: list[AiprocServer] = []

    async def start(config: Config | None = None, **kwargs: Any) -> AiprocServer:
        server = await AiprocServer.start(config or make_config(), **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=1.0)


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[AiprocServer], pb_grpc.ProcessorServiceStub]]:
    """Opens a real channel to a server and returns a stub; closes channels at the end."""
    channels: list[grpc.aio.Channel] = []

    def connect(server: AiprocServer) -> pb_grpc.ProcessorServiceStub:
        channel = grpc.aio.insecure_channel(server.address)
        channels.append(channel)
        return pb_grpc.ProcessorServiceStub(channel)

    yield connect
    for channel in channels:
        await channel.close()
