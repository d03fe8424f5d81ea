"""The Redis the tests share (127.0.0.1:6379): each test gets its own key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_prefix() -> str:
    return f"aiproc-test-{uuid.uuid4().hex}"


async def delete_prefix(prefix: str) -> int:
    """Deletes every key under `prefix` (SCAN: this is test cleanup, not a hot path)."""
    client = redis.Redis.from_url(REDIS_URL)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    await delete_prefix(prefix)
