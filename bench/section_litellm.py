"""aiproc against LiteLLM's Router, on the same work in the same run.

One `aiproc fake-provider` process answers after 50 ms. The same chat
completions, 64 in flight, closed loop, go (1) straight to it over aiohttp, the
ceiling; (2) through LiteLLM's Router, two deployments of one model both
pointing at the fake provider as an OpenAI-compatible endpoint, the way a user
embeds a gateway library in their process; and (3) through an `aiproc serve`
process in front of the same provider (sqlite store, limits out of reach),
QueueTask and the result on StreamResults; the last two alternately, in rounds
pooled afterwards. Each load runs in a process of its own
(bench/load_process.py), as each would for real: when they shared one, full
garbage collections walking LiteLLM's heap (up to a quarter of a second each)
stalled aiproc's load too, and the later sections' loads. The issue's target:
aiproc at least 4x the Router's throughput. LiteLLM is an optional extra
(`pip install '.[bench]'`); without it the section is skipped with a note.
"""

from __future__ import annotations

import importlib.util

from _load import Load
from _procs import fake_provider, server
from _suite import Measure, SectionResult, Settings, at_least
from load_process import LoadProcess
from section_e2e import ROUNDS, merged, ms, server_config, summary

LATENCY = 0.05
CONCURRENCY = 64
RATIO_GOAL = 4.0
SKIPPED = "skipped: LiteLLM not installed (pip install '.[bench]')"


async def run(settings: Settings) -> SectionResult:
    if importlib.util.find_spec("litellm") is None:
        return SectionResult("LiteLLM Router", note=SKIPPED)
    items, warmup = (800, 128) if settings.quick else (3000, 256)
    share = items // ROUNDS
    aiproc_loads: list[Load] = []
    router_loads: list[Load] = []
    server_cpu = client_cpu = router_cpu = 0.0
    async with fake_provider(settings.folder, latency=LATENCY) as provider:
        async with LoadProcess.start("direct", provider.address, str(CONCURRENCY)) as direct_load:
            await direct_load.closed(warmup, CONCURRENCY)
            direct, _ = await direct_load.closed(items, CONCURRENCY)
        async with (
            server(settings.folder, server_config(provider.address, CONCURRENCY)) as aiproc,
            LoadProcess.start("aiproc", aiproc.address) as through_load,
            LoadProcess.start("litellm", provider.address) as router,
        ):
            await through_load.closed(warmup, CONCURRENCY)
            await router.closed(warmup, CONCURRENCY)
            # Alternately, so that a noisy spell on the machine weighs on both.
            for _ in range(ROUNDS):
                began_server = aiproc.cpu_seconds()
                through_round, through_cpu = await through_load.closed(share, CONCURRENCY)
                aiproc_loads.append(through_round)
                server_cpu += aiproc.cpu_seconds() - began_server
                client_cpu += through_cpu
                router_round, router_round_cpu = await router.closed(share, CONCURRENCY)
                router_loads.append(router_round)
                router_cpu += router_round_cpu
            router_rss_mb = round(router.rss / 1e6, 1)
            rss_import_mb = round(router.setup_rss / 1e6, 1)
    through, routed = merged(aiproc_loads), merged(router_loads)
    server_ms = ms(server_cpu / max(through.done, 1))
    client_ms = ms(client_cpu / max(through.done, 1))
    router_ms = ms(router_cpu / max(routed.done, 1))
    ratio = through.per_second / routed.per_second if routed.per_second else float("nan")
    ceiling = direct.per_second or float("nan")
    measures = [
        at_least("aiproc / LiteLLM Router, tasks/s", ratio, RATIO_GOAL),
        Measure("aiproc tasks/s", through.per_second),
        Measure("LiteLLM Router calls/s", routed.per_second),
        Measure("direct calls/s (the ceiling)", direct.per_second),
        Measure("aiproc / direct calls", through.per_second / ceiling),
        # Above 1, the 4x target asks aiproc to beat direct calls to the same provider.
        Measure("4 x LiteLLM Router / direct calls", 4 * routed.per_second / ceiling),
        Measure("aiproc server CPU", server_ms, "ms/task"),
        Measure("LiteLLM CPU", router_ms, "ms/call"),
        Measure("aiproc p50", ms(through.percentile(50)), "ms"),
        Measure("LiteLLM Router p50", ms(routed.percentile(50)), "ms"),
        Measure("LiteLLM resident memory from import", rss_import_mb, "MB"),
    ]
    return SectionResult(
        "LiteLLM Router",
        measures,
        {
            "latency_ms": ms(LATENCY),
            "concurrency": CONCURRENCY,
            "items": items,
            "litellm_version": _version(),
            "litellm_import_rss_mb": rss_import_mb,
            "litellm": {
                **summary(routed),
                "cpu_ms_per_call": round(router_ms, 3),
                "rss_mb_after": router_rss_mb,
            },
            "aiproc": {
                **summary(through),
                "server_cpu_ms": round(server_ms, 3),
                "client_cpu_ms": round(client_ms, 3),
            },
            "direct": summary(direct),
        },
        note=f"{CONCURRENCY} in flight, {ms(LATENCY):g} ms fake provider, {items} items each; "
        "each load in a process of its own; LiteLLM CPU is its process's CPU time over its "
        "rounds",
    )


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return None
