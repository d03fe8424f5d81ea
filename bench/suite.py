"""The benchmark suite: every measurement of aiproc's speed and cost, one table and one JSON.

    .venv/bin/python bench/suite.py            # everything, under ~10 minutes
    .venv/bin/python bench/suite.py --quick    # fewer, shorter rounds, under ~2 minutes
    .venv/bin/python bench/suite.py --only e2e litellm

Each section starts what it needs (an `aiproc serve` process, fake providers in
their own processes, Redis where used) and compares against a baseline run in
the same run, because these machines are shared and noisy. Writes
bench/results/suite.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import environment, write_result  # noqa: E402
from _suite import Section, SectionResult, Settings, table  # noqa: E402

RESULTS = HERE / "results" / "suite.json"


def sections() -> dict[str, Section]:
    """The sections, in the order they run (imported here: each pulls in what it needs)."""
    import section_batch
    import section_e2e
    import section_failover
    import section_litellm
    import section_memory
    import section_overheads
    import section_rate_limit
    import section_realistic

    return {
        "e2e": section_e2e.run,
        "litellm": section_litellm.run,
        "realistic": section_realistic.run,
        "rate_limit": section_rate_limit.run,
        "failover": section_failover.run,
        "memory": section_memory.run,
        "overheads": section_overheads.run,
        "batch": section_batch.run,
    }


async def run(names: list[str], quick: bool) -> list[SectionResult]:
    available = sections()
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"aiproc-bench-{name}-") as folder:
            started = time.perf_counter()
            print(f"[{name}] running...", flush=True)
            try:
                result = await available[name](Settings(quick=quick, folder=Path(folder)))
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                result = SectionResult(name, note=f"failed: {type(exc).__name__}: {exc}")
            result.details["seconds"] = round(time.perf_counter() - started, 1)
            print(f"[{name}] done in {result.details['seconds']} s", flush=True)
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 2 min)")
    parser.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    args = parser.parse_args(argv)
    names = list(sections())
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {names}")
    results = asyncio.run(run(args.only or names, args.quick))
    print()
    print(table(results))
    write_result(
        RESULTS,
        {
            **environment(),
            "quick": args.quick,
            "sections": [asdict(result) for result in results],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
