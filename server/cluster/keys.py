"""The names of every Redis key and channel aiproc uses, under one prefix.

All names live here so the layout is written down once: several deployments
can share a Redis by choosing different prefixes, and tests can delete exactly
their own keys. The Lua scripts in `lua.py` build the per-task and per-client
names from the prefix in the same way (they learn a task's client only inside
the script); `tests/cluster/test_redis_store.py` checks the two agree.
"""

from __future__ import annotations

import json

# A task's place in P:queue: (5 - priority) * 2**44 + tag. Lower scores leave first, so a
# higher priority always comes before a lower one; within a level the lower virtual tag
# does (tenants take turns, each in its own order: see `enqueue` in lua.py). Tags grow by
# about one per task taken, 2**44 (17 trillion) per level, and the largest score stays
# below 2**53, where a Redis score (a double) still holds every integer exactly.
PRIORITY_BAND = 2**44
MAX_PRIORITY = 4


def queue_score(priority: int, tag: int) -> int:
    """The P:queue score of a task; the same formula as `queue_score` in lua.py."""
    return (MAX_PRIORITY + 1 - priority) * PRIORITY_BAND + tag


class RedisKeys:
    """Key and channel names under `prefix` (for example "aiproc")."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("the Redis key prefix must not be empty")
        self.prefix = prefix
        self.queue = f"{prefix}:queue"
        """ZSET of waiting task ids, scored by `queue_score`."""
        self.leases = f"{prefix}:leases"
        """ZSET of claimed or running task ids -> lease deadline, ms of Redis TIME."""
        self.seq = f"{prefix}:seq"
        """Counter: the last acceptance sequence handed out."""
        self.tasks = f"{prefix}:tasks"
        """ZSET of every stored task id -> sequence."""
        self.finished = f"{prefix}:finished"
        """ZSET of finished task ids -> finished_at (wall seconds), for expiry."""
        self.done = f"{prefix}:done"
        """Counter: completion order, the score of P:client:{id}:pending."""
        self.undelivered = f"{prefix}:undelivered"
        """Counter: results finished and not yet acknowledged."""
        self.wake = f"{prefix}:wake"
        """Channel: a task became waiting (the message is "1")."""
        self.feed = f"{prefix}:feed"
        """Channel: messages between replicas (results, progress, cancels); the bus's."""
        self.rate_limit = f"{prefix}:ratelimit:global"
        """The shared rate limiter's state."""
        self.tenant_waiting = f"{prefix}:tenant_waiting"
        """HASH client id -> its tasks waiting in P:queue (absent: none)."""
        self.last_tag = f"{prefix}:last_tag"
        """HASH "priority|client id" -> the tag of the client's newest waiting task there."""
        self.virtual_time = f"{prefix}:virtual_time"
        """HASH priority -> the highest tag claimed in that level."""
        self.heads = f"{prefix}:heads"
        """ZSET client id -> the score of its first waiting task (absent: none waiting)."""

    def task(self, task_id: str) -> str:
        """HASH of one task (see `server/cluster/store.py` for its fields)."""
        return f"{self.prefix}:task:{task_id}"

    def client_tasks(self, client_id: str) -> str:
        """ZSET of one client's task ids -> sequence."""
        return f"{self.prefix}:client:{client_id}:tasks"

    def lane(self, client_id: str) -> str:
        """ZSET of one client's waiting task ids, scored as in P:queue."""
        return f"{self.prefix}:client:{client_id}:queue"

    def share(self, client_id: str) -> str:
        """STRING: the TAT of one client's share of the rate limit, in microseconds of Redis
        time; it expires once passed (absent: the client may start a full burst)."""
        return f"{self.prefix}:client:{client_id}:share"

    def pending(self, client_id: str) -> str:
        """ZSET of one client's unacknowledged result ids -> completion order."""
        return f"{self.prefix}:client:{client_id}:pending"

    def idempotency(self, client_id: str, key: str) -> str:
        """STRING -> the task id this client queued with this idempotency key.

        JSON of the pair, so no client id or key, whatever it contains, can make two
        pairs share a name.
        """
        return f"{self.prefix}:idem:{json.dumps([client_id, key])}"

    def __repr__(self) -> str:
        return f"RedisKeys({self.prefix!r})"
