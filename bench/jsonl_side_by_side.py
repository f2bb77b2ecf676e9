"""Benchmark: ``close-opps list --format jsonl`` against the Python API doing the same.

For each N (default 5000 and 20000), serves N Close records from the sandbox's Close
emulator in its own process on 127.0.0.1 (no injected latency unless ``--latency``), then,
in one run and alternating, writes every record as one JSON line to a file with:

- **API**: ``CloseAdapter.list()`` with default settings and
  ``close_opps.serialize.opportunity_to_json(opp)`` of each record, written to the file
  (the Python API's listing plus serialization);
- **CLI in-process**: ``close_opps.cli.main(["list", "close", "--format", "jsonl", ...])``
  with stdout redirected to the file (the command's own cost, without starting Python);
- **CLI subprocess**: ``python -m close_opps.cli list close --format jsonl`` with stdout to
  the file, as a user runs it (Python's start and the imports included; the start alone,
  ``close-opps --version``, is printed too).

One untimed API run warms the emulator and this process first. Every run must write N
lines. It prints the median times, records/s and the ratios CLI /
API (target <= 1.2). Run::

    PYTHONPATH=. python bench/jsonl_side_by_side.py
    PYTHONPATH=. python bench/jsonl_side_by_side.py --records 20000 --latency 0.02 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from list_throughput import emulator_process  # the emulator in its own process, shared

import close_opps
from close_opps import CloseAdapter
from close_opps.cli import main as cli_main
from close_opps.serialize import opportunity_to_json


async def api(base_url: str, api_key: str, path: str) -> None:
    """The Python API: list, serialize each record, write its line."""
    async with CloseAdapter(api_key, base_url=base_url) as adapter:
        # buffered writes to a local file, as the CLI's to its stdout
        with open(path, "w", encoding="utf-8") as out:  # noqa: ASYNC230
            async for opp in adapter.list():
                out.write(opportunity_to_json(opp) + "\n")


def cli_args() -> list[str]:
    return ["list", "close", "--format", "jsonl"]


def cli_in_process(path: str) -> None:
    with open(path, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
        try:
            cli_main(cli_args())
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise SystemExit(f"close-opps exited {exc.code}") from None


def cli_subprocess(path: str, env: dict[str, str]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        subprocess.run(  # noqa: S603
            [sys.executable, "-m", "close_opps.cli", *cli_args()],
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            check=True,
        )


def startup(env: dict[str, str]) -> float:
    """Python's start and the CLI's imports: ``close-opps --version``."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "close_opps.cli", "--version"],
        capture_output=True,
        env=env,
        check=True,
    )
    return time.perf_counter() - started


def timed(run: Callable[[], None], path: str, expected: int) -> float:
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    with open(path, encoding="utf-8") as written:
        lines = sum(1 for _ in written)
    if lines != expected:
        raise SystemExit(f"{lines} lines written, expected {expected}")
    return elapsed


def measure(records: int, args: argparse.Namespace, tmp: str) -> None:
    with emulator_process(records, args.latency) as server:
        base_url, api_key = server.base_url, server.api_key
        # the CLI reads the key and the URL from the environment, as the adapters do
        env = {**os.environ, "CLOSE_API_KEY": api_key, "CLOSE_BASE_URL": base_url}
        path = os.path.join(tmp, "out.jsonl")
        runs: dict[str, list[float]] = {"API": [], "CLI in-process": [], "CLI subprocess": []}
        saved = {name: os.environ.get(name) for name in ("CLOSE_API_KEY", "CLOSE_BASE_URL")}
        os.environ.update(CLOSE_API_KEY=api_key, CLOSE_BASE_URL=base_url)
        try:
            # warm up, untimed: the emulator's first listing, this process's first decoding
            asyncio.run(api(base_url, api_key, path))
            for _ in range(args.repeat):  # alternate: each sees the same machine state
                runs["API"].append(
                    timed(lambda: asyncio.run(api(base_url, api_key, path)), path, records)
                )
                runs["CLI in-process"].append(timed(lambda: cli_in_process(path), path, records))
                runs["CLI subprocess"].append(
                    timed(lambda: cli_subprocess(path, env), path, records)
                )
            start = statistics.median(startup(env) for _ in range(3))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    print(
        f"{records} Close records, {args.latency * 1000:.0f} ms injected latency per request, "
        f"median of {args.repeat} alternating runs, written to a file"
    )
    base = statistics.median(runs["API"])
    for name, times in runs.items():
        median = statistics.median(times)
        print(
            f"  {name:<16} {median:7.3f} s  {records / median:10,.0f} records/s  "
            f"x{median / base:5.2f} of the API's time"
        )
    print(f"  (starting Python and the CLI, `close-opps --version`: {start:.3f} s)")
    for name in ("CLI in-process", "CLI subprocess"):
        ratio = statistics.median(runs[name]) / base
        print(f"  {name} / API (time): {ratio:5.2f}   (target <= 1.2)")


def main(args: argparse.Namespace) -> None:
    print(f"close_opps from {Path(close_opps.__file__).parent}, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="close-opps-bench-") as tmp:
        for records in args.records:
            measure(records, args, tmp)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
