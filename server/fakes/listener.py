"""The fake's listening socket, which an outage closes and later opens again on the same port."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

__all__ = ["Listener"]

# Benchmarks open many connections at once; the default backlog of 128 drops some.
_BACKLOG = 1024
_log = logging.getLogger(__name__)


class Listener:
    """Accepts connections for an aiohttp low-level server; closes and reopens on demand."""

    def __init__(self, host: str, port: int) -> None:
        """Port 0 becomes the port the system picks at the first `open`, kept from then on."""
        self.host = host
        self.port = port
        self.busy: set[web.RequestHandler] = set()
        """Connections with a request in hand, which `close` lets answer before closing."""
        self._server: web.Server | None = None
        self._socket: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._reopening: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    async def open(self, server: web.Server) -> None:
        """Listens for `server`'s connections; OSError if the port cannot be had."""
        self._server = server
        loop = asyncio.get_running_loop()
        self._socket = await loop.create_server(server, self.host, self.port, backlog=_BACKLOG)
        self.port = self._socket.sockets[0].getsockname()[1]
        self._open.set()

    def reopen_soon(self) -> None:
        """Listens again, in the background, if closed; `wait_open` tells when it has."""
        if self._socket is None and self._reopening is None and self._server is not None:
            self._reopening = asyncio.create_task(self._reopen(self._server))

    async def wait_open(self) -> None:
        await self._open.wait()

    def close(self) -> None:
        """Refuses new connections, closes idle ones now and busy ones once they have answered.

        Closing the open ones too is what a server going down does, and keeps a
        client's pooled connection from slipping requests past the outage.
        """
        self._close_socket()
        if self._server is None:
            return
        for connection in self._server.connections:
            if connection in self.busy:
                connection.close()
            else:
                connection.force_close()

    async def aclose(self) -> None:
        """Stops listening for good, leaving the connections to their server's shutdown."""
        if self._reopening is not None:
            self._reopening.cancel()
            await asyncio.gather(self._reopening, return_exceptions=True)
        self._close_socket()
        self._server = None

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._open.clear()

    async def _reopen(self, server: web.Server) -> None:
        try:
            await self.open(server)
        except OSError as exc:
            # Rare (another process took the port meanwhile), and no caller to raise to.
            _log.error("fake provider cannot listen again on %s:%s: %s", self.host, self.port, exc)
        finally:
            self._reopening = None
