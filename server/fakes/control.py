"""The fake provider's control API under /_fake/, for scripting an outage from another process.

Every answer is JSON; the POSTs answer with the stats as they are afterwards,
and a bad request gets 400 {"error": "..."}. Faults are spelled as in
`faults.parse_fault` ("503", "429:retry-after=2", "reset", "slow:chunk=8").

    GET  /_fake/stats     {"requests": 12, "outcomes": {"200": 9, "503": 3},
                           "phase": {...} or null, "phase_requests": 3, "phases_queued": 0,
                           "replies_queued": 0, "listening": true, "latency": 0.0}
    GET  /_fake/requests  {"requests": [{"method": "POST", "path": "/v1/chat/completions",
                           "arrived_at": 1234.5}, ...]}: time.monotonic() of each arrival;
                           only when recording (`aiproc fake-provider --record`)
    POST /_fake/phase     one phase, {"fault": "503", "requests": 30}, or a schedule,
                          {"phases": [{"fault": "refuse", "duration": 5}, {"fault": null}]};
                          keys: fault (spec or null), requests, duration (seconds),
                          failure_rate (0-1), seed. Replaces the schedule, starting now.
    POST /_fake/replies   {"faults": ["503", "reset"]}: one queued reply per fault, ahead of phases
    POST /_fake/latency   {"seconds": 0.25}: the delay before every answer
    POST /_fake/reset     normal answers again: no phases or replies, counts cleared

A refuse phase set here needs a duration: while it lasts this API is not
listening either, so nothing else could end it.

    curl -X POST localhost:8080/_fake/phase -d '{"fault": "429:retry-after=2", "duration": 60}'
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aiproc.server.fakes.faults import FakeReply, Refuse, parse_fault
from aiproc.server.fakes.phases import Phase

if TYPE_CHECKING:
    from aiproc.server.fakes.engine import FakeProviderServer, FakeStats

__all__ = ["PREFIX", "add_routes", "phase_from_json", "phase_to_json", "stats_to_json"]

PREFIX = "/_fake"
_PHASE_KEYS = frozenset({"fault", "requests", "duration", "failure_rate", "seed"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(ValueError):
    """A control request this API cannot act on; its message goes back to the caller."""


def add_routes(app: web.Application, fake: FakeProviderServer) -> None:
    """Serves the control API for `fake` on `app`."""

    def acting(action: Callable[[Any], None]) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                action(await _json(request))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return _stats(fake)

        return handle

    async def stats(_request: web.Request) -> web.StreamResponse:
        return _stats(fake)

    async def requests(_request: web.Request) -> web.StreamResponse:
        recorded = [
            {"method": r.method, "path": r.path, "arrived_at": r.arrived_at} for r in fake.requests
        ]
        return web.json_response({"requests": recorded})

    def set_phases(body: Any) -> None:
        items = body.get("phases") if isinstance(body, dict) and "phases" in body else [body]
        if not isinstance(items, list):
            raise _BadRequest("'phases' must be a list of phases")
        phases = [phase_from_json(item) for item in items]
        if any(isinstance(p.fault, Refuse) and p.duration is None for p in phases):
            raise _BadRequest("a refuse phase needs a duration: this API cannot answer meanwhile")
        fake.set_phases(phases)

    def enqueue(body: Any) -> None:
        specs = _field(body, "faults", list)
        if not all(isinstance(spec, str) for spec in specs):
            raise _BadRequest("'faults' must be a list of fault specs")
        fake.enqueue(*(FakeReply(fault=parse_fault(spec)) for spec in specs))

    def set_latency(body: Any) -> None:
        seconds = _number(_field(body, "seconds", (int, float)), "seconds")
        if seconds < 0:
            raise _BadRequest("'seconds' must be >= 0")
        fake.latency = seconds

    app.router.add_get(f"{PREFIX}/stats", stats)
    app.router.add_get(f"{PREFIX}/requests", requests)
    app.router.add_post(f"{PREFIX}/phase", acting(set_phases))
    app.router.add_post(f"{PREFIX}/replies", acting(enqueue))
    app.router.add_post(f"{PREFIX}/latency", acting(set_latency))
    app.router.add_post(f"{PREFIX}/reset", acting(lambda _body: fake.reset()))


def phase_from_json(item: Any) -> Phase:
    """The phase a JSON object describes; ValueError says what is wrong with it."""
    if not isinstance(item, dict):
        raise _BadRequest("a phase must be a JSON object")
    if unknown := item.keys() - _PHASE_KEYS:
        raise _BadRequest(f"unknown phase key(s): {', '.join(sorted(unknown))}")
    fault = item.get("fault")
    if fault is not None and not isinstance(fault, str):
        raise _BadRequest("a phase's 'fault' must be a fault spec or null")
    requests, duration = item.get("requests"), item.get("duration")
    return Phase(
        fault=None if fault is None else parse_fault(fault),
        requests=None if requests is None else _integer(requests, "requests"),
        duration=None if duration is None else _number(duration, "duration"),
        failure_rate=_number(item.get("failure_rate", 1.0), "failure_rate"),
        seed=_integer(item.get("seed", 0), "seed"),
    )


def phase_to_json(phase: Phase) -> dict[str, Any]:
    """`phase` as `phase_from_json` reads it."""
    return {
        "fault": None if phase.fault is None else phase.fault.spec,
        "requests": phase.requests,
        "duration": phase.duration,
        "failure_rate": phase.failure_rate,
        "seed": phase.seed,
    }


def stats_to_json(stats: FakeStats, latency: float) -> dict[str, Any]:
    return {
        "requests": stats.requests,
        "outcomes": dict(stats.outcomes),
        "phase": None if stats.phase is None else phase_to_json(stats.phase),
        "phase_requests": stats.phase_requests,
        "phases_queued": stats.phases_queued,
        "replies_queued": stats.replies_queued,
        "listening": stats.listening,
        "latency": latency,
    }


def _stats(fake: FakeProviderServer) -> web.Response:
    return web.json_response(stats_to_json(fake.stats(), fake.latency))


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise _BadRequest("the body must be JSON") from None


def _field(body: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key) if isinstance(body, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _BadRequest(f"expected a JSON object with {key!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRequest(f"{key!r} must be a number")
    return float(value)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(f"{key!r} must be an integer")
    return value
