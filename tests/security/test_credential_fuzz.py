"""Forged, mangled and hostile credentials against a server that requires API keys.

Seeded: near-misses of a real token (one character changed, cut, extended,
case-flipped), other schemes, repeated headers, junk of every printable shape,
and `aiproc-client-id` claims of other tenants. None may get in: each call ends
UNAUTHENTICATED, or PERMISSION_DENIED / INVALID_ARGUMENT for a caller that is
real but asks for what it may not; the server keeps serving real callers.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator

import grpc
import pytest

from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.security.support import config_with, make_key
from tests.support import ServerFactory

SEED = 20_261_126
CALLS = 2_000
IN_FLIGHT = 32

ALICE = make_key("alice-app", "alice")
BOB = make_key("bob-app", "bob")

Metadata = tuple[tuple[str, str], ...]


def near_misses(rng: random.Random, token: str) -> str:
    """`token` made wrong in one of the ways a guesser or a corrupted copy would."""
    at = rng.randrange(len(token))
    other = rng.choice([c for c in string.ascii_letters + string.digits if c != token[at]])
    return rng.choice(
        [
            token[:at] + other + token[at + 1 :],
            token[: rng.randrange(len(token))],
            token + rng.choice(string.ascii_letters),
            token.swapcase(),
            token[::-1],
            token[:7] + "A" * (len(token) - 7),
        ]
    )


def junk(rng: random.Random) -> str:
    alphabet = string.printable.strip() + " "
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 7, 64, 2000])))


def forged_metadata(rng: random.Random) -> Metadata:
    """Credentials that must not authenticate anyone."""
    token = rng.choice([ALICE.token, BOB.token])
    bearer = rng.choice(
        [
            f"Bearer {near_misses(rng, token)}",
            f"Bearer {junk(rng)}",
            f"Basic {token}",
            token,
            f"bearer{token}",
            f"Bearer  {near_misses(rng, token)} ",
            junk(rng),
            "Bearer ",
        ]
    )
    entries: list[tuple[str, str]] = [("authorization", bearer)]
    if rng.random() < 0.2:
        entries.append(("authorization", f"Bearer {near_misses(rng, token)}"))
    if rng.random() < 0.3:
        entries.append(("aiproc-client-id", rng.choice(["alice", "bob", "ops", junk(rng)[:64]])))
    return tuple(entries)


def overreaching_metadata(rng: random.Random) -> Metadata:
    """A real client's token, claiming another tenant's identity."""
    key, other = rng.choice([(ALICE, "bob"), (BOB, "alice")])
    return (*key.metadata, ("aiproc-client-id", rng.choice([other, "ops", "default"])))


@pytest.fixture
async def stub(
    start_server: ServerFactory,
) -> AsyncIterator[pb_grpc.ProcessorServiceAsyncStub]:
    server = await start_server(config_with([ALICE, BOB]))
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.ProcessorServiceStub(channel)


async def test_forged_and_overreaching_credentials_never_get_in(
    stub: pb_grpc.ProcessorServiceAsyncStub,
) -> None:
    theirs = await stub.QueueTask(
        pb.QueueTaskRequest(task=task_pb2.TaskSpec(url="https://e.com/b", content="Text. More.")),
        metadata=BOB.metadata,
        timeout=5,
    )
    rng = random.Random(SEED)
    plans = [
        ("forged", forged_metadata(rng)) if rng.random() < 0.8 else ("overreach", None)
        for _ in range(CALLS)
    ]
    plans = [(kind, m or overreaching_metadata(rng)) for kind, m in plans]
    codes: dict[tuple[str, grpc.StatusCode], int] = {}
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def call(kind: str, metadata: Metadata) -> None:
        async with limit:
            try:
                await stub.GetTask(
                    pb.GetTaskRequest(task_id=theirs.task_id), metadata=metadata, timeout=10
                )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            codes[kind, code] = codes.get((kind, code), 0) + 1

    await asyncio.gather(*(call(kind, metadata) for kind, metadata in plans))

    forged = {code for (kind, code) in codes if kind == "forged"}
    overreach = {code for (kind, code) in codes if kind == "overreach"}
    assert forged
    assert overreach
    assert forged <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert overreach <= {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
    assert sum(codes.values()) == CALLS
    # The real owner still gets in, and the task is untouched.
    mine = await stub.GetTask(
        pb.GetTaskRequest(task_id=theirs.task_id), metadata=BOB.metadata, timeout=5
    )
    assert mine.task.task_id == theirs.task_id
