"""A TCP proxy that forwards bytes unchanged and notes the HTTP/2 frames each side sends.

gRPC offers no way to see pings, GOAWAYs or SETTINGS from Python; a test puts
this proxy between a channel and a server and waits for the frames it expects
(an event, not a sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
ENHANCE_YOUR_CALM = 0xB

Side = Literal["client", "server"]


@dataclass(frozen=True, slots=True)
class Frame:
    sender: Side
    type: int
    flags: int
    stream: int
    payload: bytes

    @property
    def is_ping(self) -> bool:
        """A PING asking for an answer (not the answer itself)."""
        return self.type == PING and not self.flags & ACK

    def settings(self) -> dict[int, int]:
        """A SETTINGS frame's values by identifier."""
        return {
            ident: value
            for ident, value in struct.iter_unpack(
                ">HI", self.payload[: len(self.payload) // 6 * 6]
            )
        }

    def goaway_code(self) -> int:
        return int.from_bytes(self.payload[4:8], "big")


class H2Proxy:
    """Listens on 127.0.0.1; each connection is piped to `target` and its frames recorded."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def sent_by(self, sender: Side, kind: int) -> list[Frame]:
        return [f for f in self.frames if f.sender == sender and f.type == kind]

    async def wait_for(self, done: Callable[[], bool], within: float = 10.0) -> None:
        """Returns once `done()` holds over the frames seen; TimeoutError after `within`."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(done)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        pipes = (
            asyncio.create_task(self._pipe(reader, up_writer, "client")),
            asyncio.create_task(self._pipe(up_reader, writer, "server")),
        )
        self._pipes.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
        for stream in (writer, up_writer):
            stream.close()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, sender: Side
    ) -> None:
        buffer = b""
        preface_left = len(PREFACE) if sender == "client" else 0
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
                buffer += data
                if preface_left:
                    skipped = min(preface_left, len(buffer))
                    buffer, preface_left = buffer[skipped:], preface_left - skipped
                buffer = await self._frames(buffer, sender)

    async def _frames(self, buffer: bytes, sender: Side) -> bytes:
        """Records the whole frames at the start of `buffer`; returns the rest."""
        found = []
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            found.append(Frame(sender, kind, flags, stream, buffer[9 : 9 + length]))
            buffer = buffer[9 + length :]
        if found:
            async with self._changed:
                self.frames.extend(found)
                self._changed.notify_all()
        return buffer


@contextlib.asynccontextmanager
async def h2_proxy(target: str) -> AsyncIterator[H2Proxy]:
    """An `H2Proxy` to `target`, listening until the block ends."""
    proxy = H2Proxy(target)
    proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
    try:
        yield proxy
    finally:
        proxy._server.close()
        for pipe in proxy._pipes:
            pipe.cancel()
        await asyncio.gather(*proxy._pipes, return_exceptions=True)
        await proxy._server.wait_closed()
