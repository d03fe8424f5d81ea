"""RedisBus against a real Redis (127.0.0.1:6379): what replicas tell each other.

Two buses on one prefix stand for two replicas, each with a listener that
records what it heard. That a replica does not hear its own messages is
checked with a sentinel: once a message the other replica sent afterwards has
arrived, anything of its own would have arrived before it (one subscription
delivers in publishing order). Waits are bounded by PATIENCE; nothing sleeps
a fixed time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as redis

from aiproc.server.cluster import bus as bus_module
from aiproc.server.cluster.bus import RedisBus
from aiproc.server.cluster.store import RedisStore
from aiproc.server.core.models import ProgressEvent, ProgressKind
from tests.redis_support import REDIS_URL
from tests.store.builders import result, task

RETENTION = 3600.0
PATIENCE = 10.0
"""Seconds a test waits for what should take milliseconds before it fails."""

Heard = tuple[object, ...]


class Recorder:
    """A ReplicaListener that records what it hears, and fails on demand."""

    def __init__(self) -> None:
        self.heard: list[Heard] = []
        self.resyncs = 0
        self.failing = False
        """Every handler raises after recording."""
        self.failing_resyncs = False
        """resync raises after counting."""

    async def remote_result(self, task_id: str, client_id: str) -> None:
        self._hear("result", task_id, client_id)

    def remote_progress(self, event: ProgressEvent) -> None:
        self._hear("progress", event)

    def remote_cancel(self, task_id: str) -> None:
        self._hear("cancel", task_id)

    def remote_paused(self, provider: str, seconds: float) -> None:
        self._hear("paused", provider, seconds)

    def remote_breaker(self, provider: str, opened: bool) -> None:
        self._hear("breaker", provider, opened)

    def resync(self) -> None:
        self.resyncs += 1
        if self.failing_resyncs:
            raise RuntimeError("resync failed")

    def _hear(self, *what: object) -> None:
        self.heard.append(what)
        if self.failing:
            raise RuntimeError(f"listener failed on {what[0]}")


class Replica:
    """One replica's side of the bus: its store (for the origin stamp and FINISH), its bus,
    what its listener heard and how often the bus woke its queue."""

    def __init__(self, store: RedisStore, name: str) -> None:
        self.store = store
        self.name = name
        """The client name of its connections, to find its pub/sub connection by."""
        self.listener = Recorder()
        self.wakes = 0
        self.bus = RedisBus(store.client, store.keys, origin=store.origin, on_wake=self._woken)

    def _woken(self) -> None:
        self.wakes += 1


@pytest.fixture
async def admin() -> AsyncIterator[redis.Redis]:
    """A client of the test's own, for raw publishes and CLIENT commands."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def replicas(redis_prefix: str) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas on the test's prefix, each bus started with its own connection."""
    numbers = itertools.count(1)
    async with AsyncExitStack() as stack:

        async def open_replica() -> Replica:
            # Named, so a test can find its pub/sub connection among everyone's.
            name = f"{redis_prefix}-{next(numbers)}"
            store = await RedisStore.open(
                f"{REDIS_URL}?client_name={name}", redis_prefix, RETENTION
            )
            stack.push_async_callback(store.close)
            replica = Replica(store, name)
            await replica.bus.start(replica.listener)
            stack.push_async_callback(replica.bus.stop)
            return replica

        yield await open_replica(), await open_replica()


@pytest.fixture
def quick_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bus that lost its subscription tries again at once, not after a second."""
    monkeypatch.setattr(bus_module, "RECONNECT_PAUSE", 0.01)


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Polls `check` until it holds; fails the test if it still does not after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {PATIENCE}s: {what}")
        await asyncio.sleep(0.005)


async def hear(replica: Replica, *what: object) -> None:
    await eventually(lambda: what in replica.listener.heard, f"{replica.name} heard {what}")


async def heard_after_own(sender: Replica, listener: Replica) -> list[Heard]:
    """What `sender` heard, up to a sentinel `listener` sends now: anything `sender` sent
    before this would have reached it by then, had it been delivered to it."""
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    listener.bus.cancel(sentinel)
    await hear(sender, "cancel", sentinel)
    return sender.listener.heard[: sender.listener.heard.index(("cancel", sentinel))]


async def kill_subscription(admin: redis.Redis, replica: Replica) -> int:
    """Closes the replica's pub/sub connection from the server side, as a network failure or
    a Redis restart would; only this replica's, so other tests' subscribers are untouched.
    Returns how many connections it closed (it waits for Redis to list one as pub/sub)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        subscribers = await admin.client_list(_type="pubsub")
        ids = [client["id"] for client in subscribers if client["name"] == replica.name]
        if ids or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    killed = 0
    for client_id in ids:
        killed += await admin.client_kill_filter(_id=client_id)
    return killed


# -- What one replica says, the others hear ----------------------------------------------------


async def test_progress_cancels_and_provider_signals_reach_the_other_replica_only(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    event = ProgressEvent(
        task_id="t1",
        client_id="alice",
        kind=ProgressKind.RETRYING,
        at=1234.5,
        attempt=2,
        provider="p1",
        message="rate limited",
        backoff=1.5,
    )

    a.bus.progress(event)
    a.bus.cancel("t2")
    a.bus.provider_paused("p1", 30.0)
    a.bus.breaker_changed("p2", True)
    a.bus.breaker_changed("p2", False)

    said: list[Heard] = [
        ("progress", event),
        ("cancel", "t2"),
        ("paused", "p1", 30.0),
        ("breaker", "p2", True),
        ("breaker", "p2", False),
    ]
    await eventually(lambda: len(b.listener.heard) >= len(said), "b heard everything")
    assert b.listener.heard == said
    assert await heard_after_own(a, b) == []


async def test_a_finished_task_reaches_the_other_replicas_listener_only(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    admitted, _ = await a.store.admit(task("t1", client_id="bob"), 100)

    finished = result(admitted)
    assert await a.store.finish(finished, time.time())
    a.bus.result_ready(finished)  # the store already told them: this adds nothing

    await hear(b, "result", "t1", "bob")
    assert await heard_after_own(a, b) == []
    assert await heard_after_own(b, a) == [("result", "t1", "bob")]


async def test_wake_messages_wake_every_replica_and_reach_no_listener(
    replicas: tuple[Replica, Replica], admin: redis.Redis
) -> None:
    a, b = replicas
    woken = a.wakes, b.wakes

    await a.store.admit(task("t1"), 100)  # publishes on the wake channel

    await eventually(lambda: a.wakes > woken[0] and b.wakes > woken[1], "both woke")
    woken = a.wakes, b.wakes
    await admin.publish(a.store.keys.wake, "1")
    await eventually(lambda: a.wakes > woken[0] and b.wakes > woken[1], "both woke again")
    assert await heard_after_own(a, b) == []
    assert await heard_after_own(b, a) == []


# -- Nothing heard stops the bus --------------------------------------------------------------


async def test_malformed_messages_are_ignored_and_the_bus_goes_on(
    replicas: tuple[Replica, Replica], admin: redis.Redis
) -> None:
    a, b = replicas
    progress = '"k": "progress", "t": "t1", "c": "alice", "at": 1.0, "attempt": 1, "provider": "p"'
    junk = [
        "not json",
        "[1, 2]",
        '"text"',
        "null",
        "{}",
        '{"k": "nonsense"}',
        '{"k": "cancel"}',
        '{"k": "result", "t": "t1"}',
        '{"k": "paused", "p": "p1", "s": "soon"}',
        '{"k": "breaker", "p": "p1"}',
        "{" + progress + "}",
        "{" + progress + ', "kind": "bogus", "message": "", "backoff": 0}',
        "{" + progress + ', "kind": "started", "message": "", "backoff": null}',
    ]
    for message in junk:
        await admin.publish(a.store.keys.feed, message)  # no origin
        await admin.publish(a.store.keys.feed, f"elsewhere {message}")

    a.bus.cancel("after")

    await hear(b, "cancel", "after")
    assert b.listener.heard == [("cancel", "after")]
    assert b.listener.resyncs == 0


async def test_a_message_that_is_not_utf8_makes_the_bus_resubscribe(
    replicas: tuple[Replica, Replica], admin: redis.Redis, quick_reconnect: None
) -> None:
    a, b = replicas
    woken = b.wakes

    # Undecodable, it jams the connection it arrived on: the bus drops that connection and
    # subscribes again; meanwhile messages may have been missed, so it resyncs.
    await admin.publish(a.store.keys.feed, b"\xff\xfe not utf-8")

    await eventually(lambda: b.listener.resyncs == 1, "b resynced")
    assert b.wakes > woken
    a.bus.cancel("after")
    await hear(b, "cancel", "after")
    assert b.listener.heard == [("cancel", "after")]


async def test_a_listener_that_raises_does_not_stop_the_bus(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    b.listener.failing = True
    admitted, _ = await a.store.admit(task("t1"), 100)

    assert await a.store.finish(result(admitted), time.time())  # published as it finishes
    a.bus.cancel("one")
    a.bus.provider_paused("p1", 5.0)
    a.bus.breaker_changed("p1", True)
    await eventually(lambda: len(b.listener.heard) >= 4, "b heard all four")
    b.listener.failing = False
    a.bus.cancel("two")

    await hear(b, "cancel", "two")
    assert b.listener.heard == [
        ("result", "t1", "alice"),
        ("cancel", "one"),
        ("paused", "p1", 5.0),
        ("breaker", "p1", True),
        ("cancel", "two"),
    ]
    assert b.listener.resyncs == 0


# -- Stopping and reconnecting ----------------------------------------------------------------


async def test_stop_sends_what_was_posted_before_it(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    posted = [("cancel", f"t{n}") for n in range(bus_module.SEND_BATCH + 44)]  # two batches
    for _, task_id in posted:
        a.bus.cancel(task_id)

    await a.bus.stop()

    await eventually(lambda: len(b.listener.heard) >= len(posted), "b heard every cancel")
    assert b.listener.heard == posted
    a.bus.cancel("late")  # a stopped bus drops what it is told, quietly


async def test_after_losing_its_connection_the_bus_resubscribes_resyncs_and_hears_again(
    replicas: tuple[Replica, Replica], admin: redis.Redis, quick_reconnect: None
) -> None:
    a, b = replicas
    woken = b.wakes

    assert await kill_subscription(admin, b) == 1

    await eventually(lambda: b.listener.resyncs == 1, "b resynced")
    assert b.wakes > woken, "b's queue was told to look again"
    assert a.listener.resyncs == 0
    a.bus.cancel("after")
    await hear(b, "cancel", "after")
    assert await heard_after_own(a, b) == []


async def test_a_listener_that_fails_to_resync_does_not_stop_the_bus(
    replicas: tuple[Replica, Replica], admin: redis.Redis, quick_reconnect: None
) -> None:
    a, b = replicas
    b.listener.failing_resyncs = True
    woken = b.wakes

    assert await kill_subscription(admin, b) == 1

    await eventually(lambda: b.listener.resyncs == 1, "b tried to resync")
    a.bus.cancel("after")
    await hear(b, "cancel", "after")
    assert b.wakes > woken, "b's queue was told to look again all the same"
