"""Tenants over the API: they take turns within a priority level, each has its own quota of
waiting tasks and its own share of the rate limit; on every store, since a shared Redis queue
must behave as a local one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from aiproc.server.app import AiprocServer
from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from tests.api.test_server import queue_request
from tests.redis_support import REDIS_URL
from tests.security.support import config_with, make_key
from tests.support import GatedProvider, ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]
StoreSettings = Mapping[str, object]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """[server] settings for one store kind."""
    if request.param == "redis":
        prefix: str = request.getfixturevalue("redis_prefix")
        return {"store": REDIS_URL, "redis_prefix": prefix}
    return {"store": request.param, "data_dir": str(tmp_path)}


async def queue_as(stub: pb_grpc.ProcessorServiceAsyncStub, tenant: str, name: str) -> None:
    metadata = (("aiproc-client-id", tenant),)
    await stub.QueueTask(queue_request(f"https://e.com/{name}"), timeout=5, metadata=metadata)


async def test_tenants_take_turns_within_a_priority_level(
    store: StoreSettings, start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    config = make_config(server=store, processor={"num_workers": 1})
    stub = channel_to(await start_server(config, providers=[provider]))
    await queue_as(stub, "x", "blocker")
    await provider.wait_calls(1)  # the only worker is busy from here on
    for name in ("a-1", "a-2", "a-3", "a-4"):
        await queue_as(stub, "a", name)
    for name in ("b-1", "b-2"):
        await queue_as(stub, "b", name)

    provider.gate.set()
    await provider.wait_calls(7)

    order = [call.rsplit("/", 1)[1] for call in provider.calls[1:]]
    # b's first task waits behind one of a's at most, not behind all four.
    assert order.index("b-1") <= 1
    assert order.index("b-2") <= 3
    assert [n for n in order if n.startswith("a")] == ["a-1", "a-2", "a-3", "a-4"]
    assert [n for n in order if n.startswith("b")] == ["b-1", "b-2"]


async def test_a_throttled_tenants_backlog_does_not_delay_another_tenant(
    store: StoreSettings, start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    config = make_config(server=store, processor={"num_workers": 1, "rate_limit_rps": 100.0})
    # a may start 0.001 of 100 tasks a second: one, then one every 10 seconds.
    config = replace(config, quotas=QuotasConfig(tenants=(TenantQuota("a", rate_share=0.001),)))
    stub = channel_to(await start_server(config, providers=[provider]))
    await queue_as(stub, "a", "a-1")
    await provider.wait_calls(1)  # the only worker runs a's one start
    for name in ("a-2", "a-3", "a-4", "a-5"):
        await queue_as(stub, "a", name)
    for name in ("b-1", "b-2"):
        await queue_as(stub, "b", name)

    provider.gate.set()
    await provider.wait_calls(3)

    # Taking turns alone would have run a-2 before b-1; a is over its share, so b's tasks
    # go first, and the worker never waited for a.
    assert [call.rsplit("/", 1)[1] for call in provider.calls[:3]] == ["a-1", "b-1", "b-2"]


async def test_a_tenant_at_its_quota_is_refused_while_others_are_admitted(
    store: StoreSettings, start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    config = make_config(
        server=store,
        processor={"num_workers": 1},
        quotas={"max_queued_per_tenant": 2},
    )
    stub = channel_to(await start_server(config, providers=[provider]))
    await queue_as(stub, "a", "running")
    await provider.wait_calls(1)  # taken by the worker: no longer waiting
    await queue_as(stub, "a", "a-1")
    await queue_as(stub, "a", "a-2")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await queue_as(stub, "a", "a-3")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant 'a' has 2 tasks waiting" in (caught.value.details() or "")
    await queue_as(stub, "b", "b-1")
    await queue_as(stub, "b", "b-2")

    # Once one of a's tasks has left the queue, a is admitted again.
    provider.gate.set()
    await provider.wait_calls(2)
    await queue_as(stub, "a", "a-3")
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.rejected >= 1


async def test_a_clients_stats_show_its_own_waiting_tasks_against_its_quota(
    store: StoreSettings, start_server: ServerFactory, channel_to: Connect
) -> None:
    alice, bob = make_key("alice-app", "alice"), make_key("bob-app", "bob")
    provider = GatedProvider()
    config = config_with(
        [alice, bob],
        server=dict(store),
        processor={"num_workers": 1},
        quotas={"max_queued_per_tenant": 5},
    )
    stub = channel_to(await start_server(config, providers=[provider]))
    await stub.QueueTask(queue_request(), metadata=bob.metadata, timeout=5)
    await provider.wait_calls(1)  # bob's first task runs; the rest wait
    for _ in range(3):
        await stub.QueueTask(queue_request(), metadata=alice.metadata, timeout=5)
    await stub.QueueTask(queue_request(), metadata=bob.metadata, timeout=5)

    alices = await stub.Stats(pb.StatsRequest(), timeout=5, metadata=alice.metadata)
    bobs = await stub.Stats(pb.StatsRequest(), timeout=5, metadata=bob.metadata)

    assert (alices.queue_size, alices.queue_capacity, alices.counters.queued) == (3, 5, 3)
    assert (bobs.queue_size, bobs.counters.queued) == (1, 2)
    provider.gate.set()
