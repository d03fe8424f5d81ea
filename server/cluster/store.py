"""A store shared by every replica: tasks, results and the waiting queue live in Redis.

It answers as MemoryStore does (the contract suite in tests/store checks it),
and adds what replicas need to share the work: `admit` numbers and queues a
task as one step, `claim` hands waiting tasks to one replica under a lease,
`reclaim` takes back the tasks of a replica whose leases ran out.

A task is the hash P:task:{id} (see `keys.RedisKeys` for the other keys):

    doc              JSON of what never changes: task_id, client_id, spec,
                     created_at, trace_context
    client, created_at, idem
                     copies the scripts read without parsing JSON: the
                     client (its per-client sets), the creation time (the
                     idempotency window) and the idempotency key's name
    state            TaskState value
    seq, prio        acceptance sequence and priority: the queue score
    started_at, finished_at
                     float text, absent while unset
    attempts, crashes
    result           JSON of the result (absent until finished) and
    result_attempts  its attempts: the larger of the result's and the task's
                     count when it finished, as MemoryStore keeps it

Every change to more than one key is one Lua script (see `lua.py`), so it is
atomic. Reads of one key are plain commands.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis.asyncio as redis_asyncio
from redis.commands.core import AsyncScript

from aiproc.server.cluster import lua
from aiproc.server.cluster.connection import open_redis
from aiproc.server.cluster.keys import PRIORITY_BAND, RedisKeys, queue_score
from aiproc.server.core.errors import QueueFull, TenantQueueFull
from aiproc.server.core.models import Priority, Task, TaskResult, TaskState
from aiproc.server.resilience.rate_share import RateShares, Spacing
from aiproc.server.store.codec import (
    dumps,
    result_from_json,
    result_to_json,
    spec_from_json,
    spec_to_json,
)

_MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took."""

    ids: list[str]
    """The ids claimed, first to run first."""
    held_back_for: float | None
    """Seconds until the first tenant passed over (over its share) may start; None if no
    tenant was passed over."""


# The client is made with decode_responses=True, so the casts below from redis-py's
# `bytes | str` replies to str are true.

# Tasks one SCAN_TASKS call looks at, and finished tasks one EXPIRE call drops: bounds how
# long a script holds Redis (nothing else runs meanwhile) when there are many.
SCAN_PAGE = 200
EXPIRE_BATCH = 500


class RedisStore:
    """The TaskStore over Redis, plus the queue operations of `cluster.work_queue`."""

    def __init__(self, redis_client: redis_asyncio.Redis, prefix: str, retention: float) -> None:
        """Uses `redis_client` (created with decode_responses=True), which the caller closes;
        `RedisStore.open` makes a store that owns its client instead."""
        self.keys = RedisKeys(prefix)
        """The names of this store's keys (shared with the bus)."""
        self.client = redis_client
        """The connection, shared with the bus and the rate limiter (replies are str)."""
        self.retention = retention
        self.origin = uuid.uuid4().hex
        """This replica's stamp on what it tells the others (see cluster/bus.py)."""
        self._owns_client = False
        self._closed = False
        # Results not yet acknowledged, as of the last script that changed or read the
        # count: undelivered_count() is synchronous. Other replicas change it too, so it can
        # lag until this store's next change or refresh().
        self._undelivered = 0
        register = redis_client.register_script
        self._put = register(lua.PUT)
        self._admit = register(lua.ADMIT)
        self._mark_running = register(lua.MARK_RUNNING)
        self._record_attempt = register(lua.RECORD_ATTEMPT)
        self._finish = register(lua.FINISH)
        self._pending_results = register(lua.PENDING_RESULTS)
        self._ack = register(lua.ACK)
        self._requeue = register(lua.REQUEUE)
        self._scan_tasks = register(lua.SCAN_TASKS)
        self._expire = register(lua.EXPIRE)
        self._claim = register(lua.CLAIM)
        self._renew = register(lua.RENEW)
        self._unclaim = register(lua.UNCLAIM)
        self._give_back = register(lua.GIVE_BACK)
        self._reclaim = register(lua.RECLAIM)

    @classmethod
    async def open(cls, url: str, prefix: str, retention: float) -> RedisStore:
        """Connects to `url` (raising StoreError if Redis cannot be reached) and reads the
        undelivered count; close() closes the connection."""
        client = await open_redis(url)
        store = cls(client, prefix, retention)
        store._owns_client = True
        try:
            await store.refresh()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def durable(self) -> bool:
        return True

    # -- TaskStore ------------------------------------------------------------------------

    async def put(self, task: Task) -> None:
        """Stores `task` as it is (replacing one with its id); a QUEUED task also waits in
        the queue, and the sequence counter moves up to its sequence."""
        idem = self._idempotency_key(task)
        fields = _task_fields(task, idem)
        await self._run(
            self._put, task.task_id, task.client_id, idem, self._ttl_ms(), *_flat(fields)
        )

    async def get(self, task_id: str) -> Task | None:
        fields = cast(dict[str, str], await self.client.hgetall(self.keys.task(task_id)))
        return _task_from_fields(fields) if fields else None

    async def find_idempotent(self, client_id: str, key: str) -> Task | None:
        if not key:
            return None
        task_id = cast(str | None, await self.client.get(self.keys.idempotency(client_id, key)))
        return None if task_id is None else await self.get(task_id)

    async def mark_running(self, task_id: str, started_at: float) -> Task | None:
        reply = await self._run(self._mark_running, task_id, _float_text(started_at))
        return None if reply is None else _task_from_fields(_pairs(reply))

    async def record_attempt(self, task_id: str) -> None:
        await self._run(self._record_attempt, task_id)

    async def finish(
        self, result: TaskResult, finished_at: float, *, wait_durable: bool = True
    ) -> TaskResult | None:
        # Always durable on return: the script that finishes the task is the write.
        finished, undelivered, *attempts = await self._run(
            self._finish,
            result.task_id,
            result.state.value,
            _float_text(finished_at),
            dumps(result_to_json(result)),
            result.attempts,
            self.origin,
        )
        self._undelivered = int(undelivered)
        # Kept as MemoryStore keeps it: counting every call recorded against the task.
        return replace(result, attempts=int(attempts[0])) if finished else None

    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]:
        if task_ids is None:
            reply = await self._run(self._pending_results, client_id, "all")
        else:
            if not task_ids:
                return []
            reply = await self._run(self._pending_results, client_id, "some", *set(task_ids))
        return [_result(text, attempts) for text, attempts in _two_by_two(reply)]

    async def ack(self, client_id: str, task_ids: Collection[str]) -> int:
        if not task_ids:
            return 0
        removed, undelivered = await self._run(self._ack, client_id, *task_ids)
        self._undelivered = int(undelivered)
        return int(removed)

    async def live_tasks(self) -> Sequence[Task]:
        """Every QUEUED or RUNNING task, in acceptance order."""
        return await self._scan(self.keys.tasks, (TaskState.QUEUED, TaskState.RUNNING), None)

    async def last_sequence(self) -> int:
        """The sequence counter: never below any stored task's, and it stays put when tasks
        expire, so a sequence is never handed out twice."""
        value = cast(str | None, await self.client.get(self.keys.seq))
        return int(value or 0)

    async def requeue(self, task_id: str, *, crashed: bool) -> Task | None:
        reply = await self._run(self._requeue, task_id, "1" if crashed else "0")
        if reply is None:
            return None
        undelivered, fields = reply
        self._undelivered = int(undelivered)
        return _task_from_fields(_pairs(fields))

    async def list_tasks(
        self, client_id: str | None, state: TaskState | None, limit: int
    ) -> Sequence[Task]:
        if limit <= 0:
            return []
        index = self.keys.tasks if client_id is None else self.keys.client_tasks(client_id)
        return await self._scan(index, () if state is None else (state,), limit)

    async def expire(self, now: float) -> int:
        """Drops the tasks that finished at or before `now - retention`, with their results
        and idempotency keys, in batches."""
        cutoff = _float_text(now - self.retention)
        expired = 0
        while True:
            dropped, looked_at, undelivered = await self._run(self._expire, cutoff, EXPIRE_BATCH)
            expired += int(dropped)
            self._undelivered = int(undelivered)
            if int(looked_at) < EXPIRE_BATCH:
                return expired

    def undelivered_count(self) -> int:
        """As of this store's last change or refresh(); other replicas' changes show then."""
        return self._undelivered

    async def close(self) -> None:
        """Closes the connection if `open` made it; the data stays in Redis."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self.client.aclose()

    # -- Queue operations -----------------------------------------------------------------

    async def admit(
        self,
        task: Task,
        capacity: int,
        *,
        not_before: float | None = None,
        tenant_limit: int = 0,
    ) -> tuple[Task, bool]:
        """Numbers `task`, stores it QUEUED and queues it, as one step; returns it with its
        sequence (the given one is ignored) and True.

        If this client already queued a task with the same idempotency key (created at or
        after `not_before`, when given: the idempotency window), returns that task and False
        instead, so concurrent repeats on any replicas make one task. Raises QueueFull when
        `capacity` tasks are waiting, or `tenant_limit` (when not 0) of this client's.
        """
        idem = self._idempotency_key(task)
        queued = replace(
            task, state=TaskState.QUEUED, started_at=None, finished_at=None, result=None
        )
        fields = _task_fields(queued, idem)
        del fields["seq"]
        reply = await self._run(
            self._admit,
            task.task_id,
            task.client_id,
            idem,
            self._ttl_ms(),
            capacity,
            "" if not_before is None else _float_text(not_before),
            tenant_limit,
            *_flat(fields),
        )
        outcome = int(reply[0])
        if outcome == 0:
            return _task_from_fields(_pairs(reply[2])), False
        if outcome == -2:
            raise TenantQueueFull(task.client_id, tenant_limit)
        if outcome < 0:
            raise QueueFull(f"queue is full ({int(reply[1])} tasks waiting); retry later")
        queued.sequence = int(reply[1])
        return queued, True

    async def waiting_of(self, client_id: str) -> int:
        """Tasks of `client_id` waiting in the queue now."""
        count = await self.client.hget(self.keys.tenant_waiting, client_id)
        return int(count or 0)

    async def claim(
        self, n: int, lease_seconds: float, shares: RateShares | None = None
    ) -> Claimed:
        """Takes up to `n` waiting task ids in queue order (highest priority first, tenants
        taking turns), leased to this replica for `lease_seconds` (renew() keeps them;
        reclaim() ends them).

        With `shares`, a tenant over its share of the rate limit is passed over and its
        tasks keep their places; each id taken counts as a start of its tenant's."""
        if n <= 0:
            return Claimed([], None)
        reply = await self._run(self._claim, n, _lease_ms(lease_seconds), *_share_arguments(shares))
        wait_us = int(reply[0])
        return Claimed(list(reply[1:]), None if wait_us < 0 else wait_us / _MICROS)

    async def renew(self, task_ids: Collection[str], lease_seconds: float) -> None:
        """Extends these tasks' leases to `lease_seconds` from now; a lease that already
        ended (reclaimed, or the task finished) is not revived."""
        if task_ids:
            await self._run(self._renew, _lease_ms(lease_seconds), *task_ids)

    async def unclaim(self, task_id: str) -> None:
        """A claimed task this replica will not run waits again in its place (if it is still
        QUEUED: a cancelled one stays finished)."""
        await self._run(self._unclaim, task_id)

    async def give_back(self, task_id: str) -> bool:
        """A RUNNING task this replica stops running (shutdown) waits again, no crash counted;
        False (and no change) if it is not RUNNING."""
        return bool(await self._run(self._give_back, task_id))

    async def reclaim(self, max_crashes: int, lease_seconds: float, limit: int = 100) -> list[Task]:
        """Ends up to `limit` leases whose time is up (their replica died or stalled).

        A claimed, never started task waits again; a RUNNING one waits again with one more
        crash, unless that makes `max_crashes`: then it is returned, leased to the caller for
        `lease_seconds`, who records it as failed (code CRASHED) with finish().
        """
        reply = await self._run(self._reclaim, max_crashes, _lease_ms(lease_seconds), limit)
        return [_task_from_fields(_pairs(fields)) for fields in _pairs(reply).values()]

    async def waiting(self) -> dict[Priority, int]:
        """Waiting tasks per priority, from the queue's score bands."""
        async with self.client.pipeline(transaction=False) as pipe:
            for priority in Priority:
                low = queue_score(priority, 0)
                pipe.zcount(self.keys.queue, low, f"({low + PRIORITY_BAND}")
            counts: list[int] = await pipe.execute()
        return dict(zip(Priority, counts, strict=True))

    async def is_waiting(self, task_id: str) -> bool:
        """Whether the task is in the queue (not claimed, not finished)."""
        score: float | None = await self.client.zscore(self.keys.queue, task_id)
        return score is not None

    async def refresh(self) -> None:
        """Re-reads the undelivered count, which other replicas change too."""
        value = cast(str | None, await self.client.get(self.keys.undelivered))
        self._undelivered = int(value or 0)

    # -- Helpers --------------------------------------------------------------------------

    async def _run(self, script: AsyncScript, *args: str | int | float) -> Any:
        """Runs a script of lua.py; the prefix is always its first argument."""
        return await script(keys=[], args=[self.keys.prefix, *args])

    async def _scan(self, index: str, states: Sequence[TaskState], limit: int | None) -> list[Task]:
        """Tasks of `index` in sequence order, in pages, keeping those in `states` (any, if
        empty), at most `limit`."""
        found: dict[str, Task] = {}
        after, after_score = "", "0"
        wanted = [state.value for state in states]
        while limit is None or len(found) < limit:
            remaining = 0 if limit is None else limit - len(found)
            reply = await self._run(
                self._scan_tasks, index, after, after_score, SCAN_PAGE, remaining, *wanted
            )
            exhausted, after, after_score = int(reply[0]), reply[1], reply[2]
            for task_id, fields in _pairs(reply[3:]).items():
                if task_id not in found:  # a page after a vanished id may repeat some
                    found[task_id] = _task_from_fields(_pairs(fields))
            if exhausted:
                break
        return list(found.values())[:limit]

    def _idempotency_key(self, task: Task) -> str:
        key = task.spec.idempotency_key
        return self.keys.idempotency(task.client_id, key) if key else ""

    def _ttl_ms(self) -> int:
        """How long an idempotency key outlives its task's acceptance: the retention (expire
        drops it earlier with a finished task); at least 1 ms, which SET PX requires."""
        return max(1, _ms(self.retention))

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.keys.prefix!r} undelivered={self._undelivered}>"


# -- Fields: explicit, field by field; JSON through the shared codec -------------------------


def _task_fields(task: Task, idem: str) -> dict[str, str]:
    """The hash fields of `task` (see the module docstring)."""
    doc = {
        "task_id": task.task_id,
        "client_id": task.client_id,
        "spec": spec_to_json(task.spec),
        "created_at": task.created_at,
        "trace_context": dict(task.trace_context),
    }
    fields = {
        "doc": dumps(doc),
        "client": task.client_id,
        "created_at": _float_text(task.created_at),
        "state": task.state.value,
        "seq": str(task.sequence),
        "prio": str(int(task.spec.priority)),
        "attempts": str(task.attempts),
        "crashes": str(task.crashes),
    }
    if idem:
        fields["idem"] = idem
    if task.started_at is not None:
        fields["started_at"] = _float_text(task.started_at)
    if task.finished_at is not None:
        fields["finished_at"] = _float_text(task.finished_at)
    if task.result is not None:
        fields["result"] = dumps(result_to_json(task.result))
        fields["result_attempts"] = str(task.result.attempts)
    return fields


def _task_from_fields(fields: Mapping[str, str]) -> Task:
    doc = json.loads(fields["doc"])
    result = fields.get("result")
    return Task(
        task_id=doc["task_id"],
        client_id=doc["client_id"],
        spec=spec_from_json(doc["spec"]),
        created_at=doc["created_at"],
        state=TaskState(fields["state"]),
        started_at=_optional_float(fields.get("started_at")),
        finished_at=_optional_float(fields.get("finished_at")),
        attempts=int(fields["attempts"]),
        result=None if result is None else _result(result, fields["result_attempts"]),
        sequence=int(fields["seq"]),
        trace_context=doc["trace_context"],
        crashes=int(fields["crashes"]),
    )


def _result(text: str, attempts: str) -> TaskResult:
    return replace(result_from_json(json.loads(text)), attempts=int(attempts))


def _float_text(value: float) -> str:
    """Text that reads back as exactly the same float (Python's repr is the shortest)."""
    return repr(float(value))


def _optional_float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _lease_ms(seconds: float) -> float:
    """A lease in ms for the scripts, kept fractional: leases are measured in fractional ms."""
    return seconds * 1000


def _share_arguments(shares: RateShares | None) -> list[str | int]:
    """CLAIM's share arguments: the default spacing, then each tenant's own, in whole
    microseconds (rounded so that a tenant can only be slower, never faster)."""
    if shares is None:
        return [0, 0]
    arguments: list[str | int] = [*_spacing_us(shares.default)]
    for tenant, spacing in shares.own.items():
        arguments += [tenant, *_spacing_us(spacing)]
    return arguments


def _spacing_us(spacing: Spacing | None) -> tuple[int, int]:
    """(interval, tolerance) in microseconds; (0, 0) for no cap."""
    if spacing is None:
        return 0, 0
    return max(1, math.ceil(spacing.interval * _MICROS)), math.floor(spacing.tolerance * _MICROS)


def _flat(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _two_by_two(flat: Iterable[Any]) -> list[tuple[Any, Any]]:
    """A flat [a, b, a, b, ...] reply as [(a, b), ...]."""
    items = iter(flat)
    return list(zip(items, items, strict=True))


def _pairs(flat: Iterable[Any]) -> dict[Any, Any]:
    """A flat [name, value, name, value, ...] reply (HGETALL's shape) as a dict."""
    return dict(_two_by_two(flat))
