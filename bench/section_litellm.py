"""aiproc against LiteLLM's Router in process, on the same work in the same run.

One `aiproc fake-provider` process answers after 50 ms. The same chat
completions, 64 in flight, closed loop, go (1) straight to it over aiohttp, the
ceiling; (2) through LiteLLM's Router in this process, two deployments of one
model both pointing at the fake provider as an OpenAI-compatible endpoint, the
way a user embeds a gateway library; and (3) through an `aiproc serve` process
in front of the same provider (sqlite store, limits out of reach), QueueTask and
the result on StreamResults; the last two alternately, in rounds pooled
afterwards. The loads of (1) and (3) run in a process of their own
(bench/load_process.py), as aiproc's callers do: in this one, full garbage
collections walking LiteLLM's heap stalled them for up to a quarter of a second.
The issue's target: aiproc at least 4x the Router's throughput.
LiteLLM is an optional extra (`pip install '.[bench]'`); without it the section
is skipped with a note.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _load import CONTENT, Load, closed_loop
from _procs import fake_provider, rss_bytes, server
from _suite import Measure, SectionResult, Settings, at_least
from load_process import LoadProcess
from section_e2e import ROUNDS, merged, ms, server_config, summary

LATENCY = 0.05
CONCURRENCY = 64
RATIO_GOAL = 4.0
MODEL = "gpt-4o-mini"
SKIPPED = "skipped: LiteLLM not installed (pip install '.[bench]')"


class RouterLoad:
    """The same chat completion as DirectLoad's, through a LiteLLM Router in this process."""

    def __init__(self, router: Any) -> None:
        self._router = router
        self._messages = [
            {"role": "user", "content": f"Summarise https://example.com/bench:\n{CONTENT}"}
        ]

    @classmethod
    def build(cls, litellm: Any, base_url: str) -> RouterLoad:
        deployment = {
            "model_name": MODEL,
            "litellm_params": {
                "model": f"openai/{MODEL}",
                "api_base": base_url,
                "api_key": "sk-fake",
            },
        }
        return cls(litellm.Router(model_list=[deployment, dict(deployment)]))

    async def one(self) -> bool:
        response = await self._router.acompletion(
            model=MODEL, messages=self._messages, max_tokens=256
        )
        return bool(response.choices[0].message.content)

    async def closed(self, items: int, concurrency: int) -> Load:
        return await closed_loop(self.one, items, concurrency)


def import_litellm() -> Any | None:
    """LiteLLM, quiet and offline (its bundled model cost map, no telemetry); None if absent."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    try:
        import litellm  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        return None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


async def stop_logging_worker() -> None:
    """Ends the task LiteLLM leaves on the event loop, which the later sections share."""
    try:
        from litellm.litellm_core_utils.logging_worker import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            GLOBAL_LOGGING_WORKER,
        )
    except ImportError:  # another version: the task stays, idle
        return
    await GLOBAL_LOGGING_WORKER.stop()


async def run(settings: Settings) -> SectionResult:
    rss_before = rss_bytes(os.getpid())
    litellm = import_litellm()
    if litellm is None:
        return SectionResult("LiteLLM Router", note=SKIPPED)
    rss_import_mb = round((rss_bytes(os.getpid()) - rss_before) / 1e6, 1)
    items, warmup = (800, 128) if settings.quick else (3000, 256)
    share = items // ROUNDS
    aiproc_loads: list[Load] = []
    router_loads: list[Load] = []
    server_cpu = client_cpu = router_cpu = 0.0
    async with fake_provider(settings.folder, latency=LATENCY) as provider:
        async with LoadProcess.start("direct", provider.address, str(CONCURRENCY)) as direct_load:
            await direct_load.closed(warmup, CONCURRENCY)
            direct, _ = await direct_load.closed(items, CONCURRENCY)
        router = RouterLoad.build(litellm, provider.address)
        async with (
            server(settings.folder, server_config(provider.address, CONCURRENCY)) as aiproc,
            LoadProcess.start("aiproc", aiproc.address) as through_load,
        ):
            await through_load.closed(warmup, CONCURRENCY)
            await router.closed(warmup, CONCURRENCY)
            await stop_logging_worker()
            # Alternately, so that a noisy spell on the machine weighs on both.
            for _ in range(ROUNDS):
                began_server = aiproc.cpu_seconds()
                through_round, through_cpu = await through_load.closed(share, CONCURRENCY)
                aiproc_loads.append(through_round)
                server_cpu += aiproc.cpu_seconds() - began_server
                client_cpu += through_cpu
                began = time.process_time()
                router_loads.append(await router.closed(share, CONCURRENCY))
                router_cpu += time.process_time() - began
                # Its callbacks' task would otherwise run on into aiproc's next round.
                await stop_logging_worker()
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
            "litellm_version": getattr(litellm, "__version__", None) or _version(),
            "litellm_import_rss_mb": rss_import_mb,
            "litellm": {
                **summary(routed),
                "cpu_ms_per_call": round(router_ms, 3),
                "rss_mb_after": round(rss_bytes(os.getpid()) / 1e6, 1),
            },
            "aiproc": {
                **summary(through),
                "server_cpu_ms": round(server_ms, 3),
                "client_cpu_ms": round(client_ms, 3),
            },
            "direct": summary(direct),
        },
        note=f"{CONCURRENCY} in flight, {ms(LATENCY):g} ms fake provider, {items} items each; "
        "LiteLLM CPU is this process's CPU time over its run",
    )


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return None
