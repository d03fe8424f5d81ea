"""Running a fake provider in the foreground, as `aiproc fake-provider` does."""

from __future__ import annotations

import asyncio

from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import Fault, HttpError, Refuse
from aiproc.server.fakes.phases import Phase

__all__ = ["chaos_phase", "run_fake_provider"]


def chaos_phase(fault: Fault | None, failure_rate: float | None, seed: int = 0) -> Phase | None:
    """The endless phase the chaos options ask for, or None for normal answers.

    A fault alone hits every request; a rate alone fails that share with a 500.
    """
    if fault is None and failure_rate is None:
        return None
    if isinstance(fault, Refuse):
        # Not even the control API could end an endless refusal.
        raise ValueError("refuse lasts a phase with a duration: set one with POST /_fake/phase")
    return Phase(
        fault if fault is not None else HttpError(500),
        failure_rate=1.0 if failure_rate is None else failure_rate,
        seed=seed,
    )


async def run_fake_provider(
    host: str,
    port: int,
    latency: float,
    *,
    dialect: str = "openai",
    fault: Fault | None = None,
    failure_rate: float | None = None,
    seed: int = 0,
    record: bool = False,
    latency_sigma: float = 0.0,
) -> None:
    """Serves a fake provider until cancelled, announcing its URL on stdout.

    `latency_sigma` > 0 spreads each answer's delay lognormally around `latency`, its
    median (seeded with `seed`, like the failure draws).

    ValueError for an unknown dialect or chaos options that cannot work together.
    """
    # The registry imports every dialect, the OpenAI one among them, which
    # imports this module: importing it here keeps that circle open.
    from aiproc.server.fakes.registry import create_dialect

    phase = chaos_phase(fault, failure_rate, seed)
    async with FakeProviderServer(
        create_dialect(dialect),
        host,
        port,
        latency,
        record=record,
        latency_sigma=latency_sigma,
        seed=seed,
    ) as fake:
        if phase is not None:
            fake.set_phase(phase)
        chaos = f" (faults: {phase})" if phase is not None else ""
        print(f"fake {fake.dialect.title} server on {fake.base_url}{chaos}", flush=True)
        await asyncio.Event().wait()
