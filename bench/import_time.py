"""Benchmark: the cost of ``import close_opps`` against ``import aiohttp``, side by side.

Each measurement is a fresh interpreter (``python -X importtime`` would also do; this prints
the ratio the target speaks of). Run::

    python bench/import_time.py            # 9 runs, each program in a fresh interpreter
"""

from __future__ import annotations

import statistics
import subprocess
import sys

PROGRAMS = {
    "import aiohttp": "import aiohttp",
    "import close_opps": "import aiohttp; import close_opps",
    "from close_opps import CloseAdapter": "import aiohttp; from close_opps import CloseAdapter",
}
MEASURE = "import time; t = time.perf_counter(); {program}; print(time.perf_counter() - t)"


def once(program: str) -> float:
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", MEASURE.format(program=program)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def main(runs: int = 9) -> None:
    # Alternate the programs within each run, so each ratio compares the same machine state.
    times: dict[str, list[float]] = {name: [] for name in PROGRAMS}
    for _ in range(runs):
        for name, program in PROGRAMS.items():
            times[name].append(once(program))
    for name, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, times["import aiohttp"], strict=True)]
        print(
            f"  {name:<38} {statistics.median(seconds) * 1000:7.1f} ms   "
            f"x{statistics.median(ratios):4.2f} of aiohttp (median of per-run ratios)"
        )


if __name__ == "__main__":
    main()
