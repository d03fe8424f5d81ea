"""LiteLLM's Router as a load: the chat completion DirectLoad sends, through the Router.

Imported only by the load process that runs it (bench/load_process.py), so that no
other process of the suite carries LiteLLM's heap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from _load import CONTENT, Load, closed_loop

MODEL = "gpt-4o-mini"


def import_litellm() -> Any:
    """LiteLLM, quiet and offline (its bundled model cost map, no telemetry)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm  # type: ignore[import-untyped, import-not-found, unused-ignore]

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


async def stop_logging_worker() -> None:
    """Ends the task LiteLLM leaves on the event loop, busy after a round's calls."""
    try:
        from litellm.litellm_core_utils.logging_worker import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            GLOBAL_LOGGING_WORKER,
        )
    except ImportError:  # another version: the task stays, idle
        return
    await GLOBAL_LOGGING_WORKER.stop()


class RouterLoad:
    """The same chat completion as DirectLoad's, through a LiteLLM Router in this process:
    two deployments of one model, both the fake provider as an OpenAI-compatible endpoint."""

    def __init__(self, router: Any) -> None:
        self._router = router
        self._messages = [
            {"role": "user", "content": f"Summarise https://example.com/bench:\n{CONTENT}"}
        ]

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, base_url: str) -> AsyncIterator[RouterLoad]:
        litellm = import_litellm()
        deployment = {
            "model_name": MODEL,
            "litellm_params": {
                "model": f"openai/{MODEL}",
                "api_base": base_url,
                "api_key": "sk-fake",
            },
        }
        yield cls(litellm.Router(model_list=[deployment, dict(deployment)]))
        await stop_logging_worker()

    async def one(self) -> bool:
        response = await self._router.acompletion(
            model=MODEL, messages=self._messages, max_tokens=256
        )
        return bool(response.choices[0].message.content)

    async def closed(self, items: int, concurrency: int) -> Load:
        load = await closed_loop(self.one, items, concurrency)
        # Its callbacks' task would otherwise run on into the other load's round.
        await stop_logging_worker()
        return load
