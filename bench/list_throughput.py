"""Benchmark: CloseAdapter.list() against a plain sequential page loop, side by side.

Serves N Close records from the sandbox's Close emulator on 127.0.0.1 with an injected
latency per request, then, in the same run and alternating, reads them all

- with a plain aiohttp loop: ``_skip``/``_limit`` pages one after another, ``json.loads``
  each body, nothing else (the baseline a hand-written client would do), and
- with ``CloseAdapter.list()`` (typed records, retries, and the following pages fetched
  ``concurrency`` at a time once the total is known),

and prints records/s for each and the ratio. Run::

    python bench/list_throughput.py                       # 5000 records, 20 ms per request
    python bench/list_throughput.py --records 20000 --latency 0.05 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.connection import Connection

import aiohttp
import attrs

from close_opps import CloseAdapter
from close_opps.sandbox import CloseOptions, Sandbox


@attrs.frozen
class Server:
    """Where the emulator listens (it runs in its own process, so it does not share our CPU)."""

    base_url: str
    api_key: str
    auth_headers: dict[str, str]


def serve(conn: Connection, records: int, latency: float) -> None:
    """The child process: run the Close emulator until the parent closes the pipe."""

    async def run() -> None:
        options = CloseOptions(records=records, latency=latency, rate_limit=None)
        async with Sandbox(seed=1, vendors=["close"], close=options) as sb:
            conn.send((sb.close.base_url, sb.close.api_key, sb.close.auth_headers))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)

    with contextlib.suppress(EOFError):
        asyncio.run(run())


@contextlib.contextmanager
def emulator_process(records: int, latency: float) -> Iterator[Server]:
    """The Close emulator with ``records`` records and ``latency`` seconds per request, in a
    process of its own, for as long as the block runs."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve, args=(child, records, latency), daemon=True)
    process.start()
    try:
        yield Server(*parent.recv())
    finally:
        parent.close()
        process.join(timeout=10)


async def sequential_loop(server: Server, page_size: int) -> int:
    """The baseline: one page after another, bodies parsed, records counted."""
    count, skip = 0, 0
    async with aiohttp.ClientSession(headers=server.auth_headers) as session:
        while True:
            params = {"_skip": str(skip), "_limit": str(page_size), "_order_by": "date_updated"}
            async with session.get(f"{server.base_url}/opportunity/", params=params) as resp:
                resp.raise_for_status()
                body = json.loads(await resp.read())
            count += len(body["data"])
            skip += page_size
            if not body["has_more"]:
                return count


async def adapter_list(server: Server, page_size: int, concurrency: int) -> int:
    """close-opps: decoded, normalized Opportunity records."""
    async with CloseAdapter(
        server.api_key, base_url=server.base_url, page_size=page_size, concurrency=concurrency
    ) as close:
        return sum([1 async for _ in close.list()])


async def timed(run: Callable[[], Awaitable[int]], expected: int) -> float:
    started = time.perf_counter()
    count = await run()
    elapsed = time.perf_counter() - started
    if count != expected:
        raise SystemExit(f"read {count} records, expected {expected}")
    return elapsed


async def measure(args: argparse.Namespace, server: Server) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {
        "sequential loop": [],
        f"close-opps list(), concurrency={args.concurrency}": [],
        "close-opps list(), concurrency=1": [],
    }
    for _ in range(args.repeat):  # alternate, so every contender sees the same machine state
        runs["sequential loop"].append(
            await timed(lambda: sequential_loop(server, args.page_size), args.records)
        )
        runs[f"close-opps list(), concurrency={args.concurrency}"].append(
            await timed(
                lambda: adapter_list(server, args.page_size, args.concurrency), args.records
            )
        )
        runs["close-opps list(), concurrency=1"].append(
            await timed(lambda: adapter_list(server, args.page_size, 1), args.records)
        )
    return runs


def main(args: argparse.Namespace) -> None:
    with emulator_process(args.records, args.latency) as server:
        runs = asyncio.run(measure(args, server))

    pages = -(-args.records // args.page_size)
    print(
        f"{args.records} records, {pages} pages of {args.page_size}, "
        f"{args.latency * 1000:.0f} ms injected latency per request, "
        f"concurrency {args.concurrency}, median of {args.repeat} alternating runs"
    )
    baseline = statistics.median(runs["sequential loop"])
    for name, times in runs.items():
        median = statistics.median(times)
        print(
            f"  {name:<34} {median:7.3f} s  {args.records / median:10,.0f} records/s  "
            f"x{baseline / median:5.2f} vs sequential loop"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
