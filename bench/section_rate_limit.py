"""Rate-limit fidelity: does aiproc use all of its configured rate, and never more?

aiproc (its own process) is configured with rate_limit_rps R and a burst; a
closed loop keeps far more tasks waiting than R lets through, so the limiter is
the bottleneck for the whole run. The fake provider (its own process, with
--record) notes when each call arrived at its socket; from those times come the
achieved rate over the run against R, and the busiest 1 s window against
R + burst, the most a token bucket may ever let through in one second.

The limiter reserves each call's slot and sleeps until it, so its schedule is
exact; what the provider's socket sees can still bunch: when the server's
event loop runs late (a busy machine), the calls whose slots passed meanwhile
leave together, and a window then holds about R x (1 s + the lag) + burst.
"""

from __future__ import annotations

import aiohttp
from _load import AiprocLoad
from _procs import fake_provider, server
from _suite import Measure, SectionResult, Settings, at_least, at_most

RATE = 50.0
BURST = 5
WAITING = 200
"""Tasks kept in flight: four times the rate, so the limiter is never idle."""
USE_GOAL = 0.98

CONFIG = """
[server]
store = "memory"
[processor]
num_workers = 64
max_concurrent_requests = 64
queue_size = 10000
rate_limit_rps = {rate}
rate_limit_burst = {burst}
[health]
enabled = false
[[providers]]
name = "fake"
kind = "openai"
base_url = "{url}"
model = "gpt-4o-mini"
max_concurrent_requests = 64
"""


async def arrivals(base_url: str) -> list[float]:
    """When each chat completion reached the fake (time.monotonic() there), sorted."""
    url = base_url.removesuffix("/v1") + "/_fake/requests"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        listed = (await response.json())["requests"]
    return sorted(r["arrived_at"] for r in listed if r["path"].endswith("/chat/completions"))


def busiest_window(times: list[float], width: float = 1.0) -> tuple[int, float]:
    """The most arrivals in any window of `width` seconds, and when (offset from the first)."""
    most, at, end = 0, 0.0, 0
    for start_index, start in enumerate(times):
        while end < len(times) and times[end] < start + width:
            end += 1
        if end - start_index > most:
            most, at = end - start_index, start - times[0]
    return most, at


async def run(settings: Settings) -> SectionResult:
    seconds = 6.0 if settings.quick else 20.0
    tasks = int(RATE * seconds) + BURST
    config = CONFIG.format(rate=RATE, burst=BURST, url="{url}")
    async with fake_provider(settings.folder, record=True) as fake:
        async with (
            server(settings.folder, config.format(url=fake.address)) as srv,
            AiprocLoad.connect(srv.address) as load,
        ):
            result = await load.closed(tasks, WAITING)
        times = await arrivals(fake.address)
    # The bucket starts full: the first BURST calls go at once, each later one
    # waits for its token, so the rate is measured from the last of the burst.
    span = times[-1] - times[BURST - 1]
    achieved = (len(times) - BURST) / span
    overall = (len(times) - 1) / (times[-1] - times[0])
    worst, worst_at = busiest_window(times)
    busiest_5s = busiest_window(times, 5.0)[0]
    details = {
        "rate_limit_rps": RATE,
        "rate_limit_burst": BURST,
        "in_flight": WAITING,
        "tasks": result.done,
        "failed": result.failed,
        "provider_calls": len(times),
        "achieved_per_second": achieved,
        "achieved_per_second_with_burst": overall,
        "worst_1s_window": worst,
        "worst_1s_window_at": worst_at,
        "worst_1s_window_after_the_burst": busiest_window(times[BURST:])[0],
        "worst_5s_window": busiest_5s,
        "worst_5s_limit": RATE * 5 + BURST,
        # The event-loop lag that would account for the busiest 1 s window.
        "lag_to_explain_worst_s": max(0.0, (worst - RATE - BURST) / RATE),
        "seconds": span,
    }
    measures = [
        at_least("achieved / configured rate", achieved / RATE, USE_GOAL),
        at_most("calls in the busiest 1 s", worst, RATE + BURST),
        Measure("tasks failed", result.failed),
    ]
    note = (
        f"rate_limit_rps {RATE:g}, burst {BURST}, {WAITING} tasks in flight, "
        f"{len(times)} calls over {span:.1f} s, timed at the provider's socket"
    )
    return SectionResult("rate-limit fidelity", measures, details, note)
