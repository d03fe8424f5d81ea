"""Replicas talking through Redis pub/sub: results, progress, cancels, provider signals.

One channel (`P:feed`) carries small JSON messages, each after its sender's
origin stamp and a space ("ORIGIN {...}"), so a replica skips its own without
decoding it; `P:wake` says a task became waiting. Pub/sub delivers at most
once, so nothing here is the only copy of anything: a result lives in the store
until acknowledged, and after a reconnect every stream re-reads its pending
results (`ReplicaListener.resync`) and the dispatcher looks at the queue again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from aiproc.server.cluster.keys import RedisKeys
from aiproc.server.core.errors import StoreError
from aiproc.server.core.models import ProgressEvent, ProgressKind, TaskResult
from aiproc.server.core.replicas import ReplicaListener

log = logging.getLogger(__name__)

RECONNECT_PAUSE = 1.0
"""Seconds between attempts to resubscribe after the connection to Redis broke."""
SEND_BATCH = 256
"""Most messages published in one round trip."""
STOP_FLUSH = 1.0
"""Seconds a stopping bus waits for its unsent messages to go out."""
SUBSCRIBE_TIMEOUT = 10.0


class RedisBus:
    """Implements core.replicas.ReplicaBus over one Redis (see the module docstring)."""

    def __init__(
        self, client: redis.Redis, keys: RedisKeys, *, origin: str, on_wake: Callable[[], None]
    ) -> None:
        self._redis = client
        self._feed = keys.feed
        self._wake = keys.wake
        self._on_wake = on_wake
        self.origin = origin
        """This replica's stamp on what it sends (the store stamps results with it too)."""
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._listener: ReplicaListener | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    async def start(self, listener: ReplicaListener) -> None:
        self._listener = listener
        self._loops = [
            asyncio.create_task(self._receive(listener), name="aiproc-bus-receive"),
            asyncio.create_task(self._send(), name="aiproc-bus-send"),
        ]
        # Subscribed before the server takes work, so no news of it is missed.
        try:
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise StoreError("cannot subscribe to Redis pub/sub") from None

    # What this replica tells the others.

    def result_ready(self, result: TaskResult) -> None:
        pass  # the store published it as it recorded it (lua.FINISH)

    def progress(self, event: ProgressEvent) -> None:
        self._post(
            {
                "k": "progress",
                "t": event.task_id,
                "c": event.client_id,
                "kind": event.kind.value,
                "at": event.at,
                "attempt": event.attempt,
                "provider": event.provider,
                "message": event.message,
                "backoff": event.backoff,
            }
        )

    def cancel(self, task_id: str) -> None:
        self._post({"k": "cancel", "t": task_id})

    def provider_paused(self, provider: str, seconds: float) -> None:
        self._post({"k": "paused", "p": provider, "s": seconds})

    def breaker_changed(self, provider: str, opened: bool) -> None:
        self._post({"k": "breaker", "p": provider, "open": opened})

    def _post(self, message: dict[str, Any]) -> None:
        if self._loops:
            self._outbox.put_nowait(f"{self.origin} {json.dumps(message)}")

    async def _send(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < SEND_BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for message in batch:
                        pipe.publish(self._feed, message)
                    await pipe.execute()
            except RedisError as exc:
                # Nothing is lost with them: receivers resync after reconnecting.
                log.warning("bus: could not publish %d messages (%s)", len(batch), exc)
            finally:
                for _ in batch:
                    self._outbox.task_done()

    # What the others told this replica.

    async def _receive(self, listener: ReplicaListener) -> None:
        first = True
        channels = (self._feed, self._wake)
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                confirmed: set[str] = set()
                async for message in pubsub.listen():
                    if message.get("type") != "subscribe":
                        await self._dispatch(listener, message)
                        continue
                    # SUBSCRIBE only sends: the subscription is live once Redis confirms
                    # each channel, and only then is nothing published missed.
                    confirmed.add(message["channel"])
                    if confirmed.issuperset(channels):
                        self._subscribed.set()
                        if not first:
                            self._resync(listener)
                        first = False
            except (RedisError, UnicodeDecodeError) as exc:
                # A message that is not UTF-8 (published by something else) cannot be
                # decoded, and the connection cannot read past it: replaced like a broken one.
                log.warning("bus: lost Redis pub/sub (%s); resubscribing", exc)
                await asyncio.sleep(RECONNECT_PAUSE)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _resync(self, listener: ReplicaListener) -> None:
        """After resubscribing: messages may have been missed meanwhile."""
        try:
            listener.resync()
        except Exception:
            # Like a failing handler, it must not stop this replica hearing the rest.
            log.exception("bus: the listener failed to resync")
        self._on_wake()

    async def _dispatch(self, listener: ReplicaListener, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        if message["channel"] == self._wake:
            self._on_wake()
            return
        # "ORIGIN JSON": a replica skips its own news without decoding it.
        origin, _, text = message["data"].partition(" ")
        if origin == self.origin:
            return
        try:
            body = json.loads(text)
        except ValueError as exc:
            log.warning("bus: ignored a malformed message (%s)", exc)
            return
        if not isinstance(body, dict):
            return
        try:
            await self._apply(listener, body)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bus: ignored a malformed message (%s)", exc)
        except Exception:
            # Acting on news must never stop this replica hearing the rest.
            log.exception("bus: failed to act on a %s message", body.get("k"))

    async def _apply(self, listener: ReplicaListener, body: dict[str, Any]) -> None:
        kind = body["k"]
        if kind == "result":
            await listener.remote_result(str(body["t"]), str(body["c"]))
        elif kind == "progress":
            listener.remote_progress(
                ProgressEvent(
                    task_id=str(body["t"]),
                    client_id=str(body["c"]),
                    kind=ProgressKind(body["kind"]),
                    at=float(body["at"]),
                    attempt=int(body["attempt"]),
                    provider=str(body["provider"]),
                    message=str(body["message"]),
                    backoff=float(body["backoff"]),
                )
            )
        elif kind == "cancel":
            listener.remote_cancel(str(body["t"]))
        elif kind == "paused":
            listener.remote_paused(str(body["p"]), float(body["s"]))
        elif kind == "breaker":
            listener.remote_breaker(str(body["p"]), bool(body["open"]))

    async def stop(self) -> None:
        # What is still in the outbox goes out first: a result's news, say.
        if self._loops:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), STOP_FLUSH)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
