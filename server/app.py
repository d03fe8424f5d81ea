"""Assembles the server: store, providers, processor, gRPC services; and shuts it down in phases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aiproc.server.api.servicer import ProcessorServicer
from aiproc.server.config import Config, ProviderConfig
from aiproc.server.core.processor import Processor
from aiproc.server.providers.base import Provider
from aiproc.server.providers.registry import ProviderSet, build_providers
from aiproc.server.resilience.clock import Clock
from aiproc.server.store.memory import MemoryStore
from aiproc.v1 import processor_service_pb2, processor_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = processor_service_pb2.DESCRIPTOR.services_by_name["ProcessorService"].full_name


class AiprocServer:
    """A running aiproc: a grpc.aio server on a real socket over one Processor.

    Start with `await AiprocServer.start(config)`; stop with `await server.stop()`.
    """

    def __init__(
        self,
        config: Config,
        grpc_server: grpc.aio.Server,
        processor: Processor,
        providers: ProviderSet | None,
        health_servicer: health.aio.HealthServicer,
        port: int,
    ) -> None:
        self.config = config
        self.processor = processor
        self.port = port
        host = config.server.listen.rpartition(":")[0]
        self.address = f"{host}:{port}"
        self._grpc = grpc_server
        self._providers = providers
        self._health = health_servicer
        self._stopped = asyncio.Event()
        self._stopping = False

    @classmethod
    async def start(
        cls,
        config: Config,
        *,
        providers: Sequence[Provider] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> AiprocServer:
        """Builds everything from config and starts serving.

        `providers` replaces the configured ones (tests inject their own); each
        takes its settings from the [[providers]] entry of the same name, if any.
        """
        provider_set: ProviderSet | None = None
        if providers is None:
            provider_set = build_providers(
                config.providers, config.processor, env=os.environ if env is None else env
            )
            entries = [(p, provider_set.config(p.name)) for p in provider_set.providers]
        else:
            configured = {p.name: p for p in config.providers}
            entries = [
                (p, configured.get(p.name) or ProviderConfig(name=p.name, kind=p.kind))
                for p in providers
            ]
        try:
            return await cls._assemble(config, entries, provider_set, clock)
        except BaseException:
            if provider_set is not None:
                await provider_set.aclose()
            raise

    @classmethod
    async def _assemble(
        cls,
        config: Config,
        providers: Sequence[tuple[Provider, ProviderConfig]],
        provider_set: ProviderSet | None,
        clock: Clock | None,
    ) -> AiprocServer:
        store = MemoryStore(retention=config.server.result_ttl)
        processor = Processor(config, store, providers, clock=clock)
        grpc_server = grpc.aio.server()
        processor_service_pb2_grpc.add_ProcessorServiceServicer_to_server(
            ProcessorServicer(processor, max_content_bytes=config.server.max_content_bytes),
            grpc_server,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
        if config.server.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
            )
        try:
            port = grpc_server.add_insecure_port(config.server.listen)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            raise OSError(f"cannot listen on {config.server.listen}: {exc}") from None
        await processor.start()
        await grpc_server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await health_servicer.set(SERVICE_NAME, serving)
        await health_servicer.set("", serving)
        server = cls(config, grpc_server, processor, provider_set, health_servicer, port)
        log.info("aiproc serving on %s with %r", server.address, processor)
        return server

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown, in phases; safe to call more than once.

        1. health says NOT_SERVING, so balancers stop sending work;
        2. QueueTask answers UNAVAILABLE; queued tasks end with code SHUTDOWN;
        3. running tasks get `grace` seconds (default server.shutdown_grace);
        4. result streams end after sending what they hold; the gRPC server stops.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.server.shutdown_grace if grace is None else grace
        await self._health.enter_graceful_shutdown()
        await self.processor.shutdown(grace)
        await self._grpc.stop(grace=min(grace, 1.0))
        if self._providers is not None:
            await self._providers.aclose()
        await self.processor.store.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def __repr__(self) -> str:
        return f"<AiprocServer {self.address} {self.processor!r}>"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: far too loud for a service making thousands.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def serve(config: Config) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    configure_logging(config.log_level)
    server = await AiprocServer.start(config)
    print(f"aiproc: serving on {server.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("signal received: shutting down (grace %gs)", config.server.shutdown_grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await server.stop()
    print("aiproc: stopped", file=sys.stderr, flush=True)
