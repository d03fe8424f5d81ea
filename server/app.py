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

from aiproc.server.api.auth import Admission
from aiproc.server.api.grpc_options import server_options
from aiproc.server.api.handlers import ServedMethods
from aiproc.server.api.servicer import ProcessorServicer
from aiproc.server.api.stream_limits import StreamLimits
from aiproc.server.config import Config, ProviderConfig, exposure_risks
from aiproc.server.core.processor import Processor
from aiproc.server.gc_tuning import tune_for_serving
from aiproc.server.providers.base import Provider
from aiproc.server.providers.http import create_http_client
from aiproc.server.providers.registry import build_providers
from aiproc.server.resilience.clock import Clock, SystemClock
from aiproc.server.security import Authenticator, server_credentials
from aiproc.server.store.factory import open_backend
from aiproc.server.telemetry.logs import configure_logging
from aiproc.server.telemetry.setup import Telemetry
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
        health_servicer: health.aio.HealthServicer,
        port: int,
        owned: contextlib.AsyncExitStack,
    ) -> None:
        self.config = config
        self.processor = processor
        self.port = port
        host = config.server.listen.rpartition(":")[0]
        self.address = f"{host}:{port}"
        self._grpc = grpc_server
        self._health = health_servicer
        self._owned = owned
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
        telemetry: Telemetry | None = None,
    ) -> AiprocServer:
        """Builds everything from config and starts serving; on failure, closes what it opened.

        `providers` replaces the configured ones (tests inject their own); each
        takes its settings from the [[providers]] entry of the same name, if any.
        `telemetry` replaces the one the config describes; the server shuts it
        down when it stops, either way.
        """
        env = os.environ if env is None else env
        owned = contextlib.AsyncExitStack()
        try:
            if telemetry is None:
                telemetry = Telemetry.start(config.telemetry, env=env)
            # Flushing may wait on a slow collector: off the event loop.
            owned.push_async_callback(asyncio.to_thread, telemetry.shutdown)
            if providers is None:
                http_client = create_http_client(
                    max_connections=config.processor.max_concurrent_requests,
                    tracer=telemetry.tracer if telemetry.tracing else None,
                )
                owned.push_async_callback(http_client.aclose)
                provider_set = build_providers(
                    config.providers, config.processor, env=env, http_client=http_client
                )
                entries = [(p, provider_set.config(p.name)) for p in provider_set.providers]
            else:
                configured = {p.name: p for p in config.providers}
                entries = [
                    (p, configured.get(p.name) or ProviderConfig(name=p.name, kind=p.kind))
                    for p in providers
                ]
            return await cls._assemble(config, entries, clock, telemetry, owned)
        except BaseException:
            await owned.aclose()
            raise

    @classmethod
    async def _assemble(
        cls,
        config: Config,
        providers: Sequence[tuple[Provider, ProviderConfig]],
        clock: Clock | None,
        telemetry: Telemetry,
        owned: contextlib.AsyncExitStack,
    ) -> AiprocServer:
        clock = clock or SystemClock()
        credentials = server_credentials(config.server)  # bad PEM files stop us before any I/O
        authenticator = Authenticator(
            config.auth, client_certificates=bool(config.server.tls_client_ca_file)
        )
        backend = await open_backend(config, owned, clock)
        processor = Processor(config, backend, providers, clock=clock, telemetry=telemetry)
        # Health stays open so balancers and orchestrators can probe without a key, and
        # reflection (when server.reflection is on) so tools can list the API.
        served = ServedMethods(
            Admission(authenticator),
            open_services=(health.SERVICE_NAME, reflection.SERVICE_NAME),
        )
        grpc_server = grpc.aio.server(
            interceptors=[served],
            options=server_options(config.server, config.keepalive),
        )
        servicer = ProcessorServicer(
            processor,
            max_content_bytes=config.server.max_content_bytes,
            streams=StreamLimits(config.server.max_streams_per_client),
            tracer=telemetry.tracer,
        )
        processor_service_pb2_grpc.add_ProcessorServiceServicer_to_server(servicer, grpc_server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
        if config.server.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
            )
        try:
            if credentials is None:
                port = grpc_server.add_insecure_port(config.server.listen)
            else:
                port = grpc_server.add_secure_port(config.server.listen, credentials)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            raise OSError(f"cannot listen on {config.server.listen}: {exc}") from None
        for risk in exposure_risks(config):  # only there with server.allow_insecure
            log.warning("server.allow_insecure: serving %s with %s", config.server.listen, risk)
        await processor.start()
        # Undone by stop() when all goes well; by the caller's cleanup if the rest fails.
        owned.push_async_callback(processor.shutdown, 0.0)
        await grpc_server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await health_servicer.set(SERVICE_NAME, serving)
        await health_servicer.set("", serving)
        server = cls(config, grpc_server, processor, health_servicer, port, owned)
        transport = "plaintext" if credentials is None else "TLS"
        if config.server.tls_client_ca_file:
            transport = "mutual TLS"
        log.info(
            "aiproc serving on %s (%s, %r) with %r",
            server.address,
            transport,
            authenticator,
            processor,
        )
        return server

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown, in phases; safe to call more than once.

        1. health says NOT_SERVING, so balancers stop sending work;
        2. QueueTask answers UNAVAILABLE; queued tasks end with code SHUTDOWN;
        3. running tasks get `grace` seconds (default server.shutdown_grace);
        4. result streams end after sending what they hold; the gRPC server stops;
        5. HTTP connections close, and spans and metrics are flushed.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.server.shutdown_grace if grace is None else grace
        try:
            await self._health.enter_graceful_shutdown()
            await self.processor.shutdown(grace)
            await self._grpc.stop(grace=min(grace, 1.0))
        finally:
            await self._owned.aclose()
            self._stopped.set()

    def __repr__(self) -> str:
        return f"<AiprocServer {self.address} {self.processor!r}>"


async def serve(config: Config) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully."""
    configure_logging(config.log_level, config.telemetry.log_format)
    server = await AiprocServer.start(config)
    tune_for_serving()
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
