"""Benchmark: CloseAdapter.list() against the fastest hand-written client and the official one.

Serves N Close records from the sandbox's Close emulator, in its own process on 127.0.0.1,
with an injected latency per request. Then, in one run and alternating, reads them all with:

- **raw, 8 concurrent**: a hand-written aiohttp loop that asks for the first page, then
  keeps 8 requests in flight until every page is read, and only counts the records
  (``orjson.loads``: no decoding into records, no retries, no checks);
- **close-opps**: ``CloseAdapter.list()`` with default settings (typed, exact records);
- **closeio**: the official synchronous client (``closeio`` on PyPI), page after page, as
  its users write it (run in a worker thread).

It prints each reader's median time and records/s, and the ratios the targets speak of:
close-opps' time over the raw loop's, and closeio's time over close-opps'. Run::

    pip install -e ".[bench]"
    python bench/list_side_by_side.py                          # 5000 records, 20 ms
    python bench/list_side_by_side.py --records 20000 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from list_throughput import Server, emulator_process, timed  # shared: emulator, timing

from close_opps import CloseAdapter

PAGE = 100


async def raw_concurrent(server: Server, in_flight: int = 8) -> int:
    """The fastest hand-written reader: 8 requests in flight, records only counted."""
    url = f"{server.base_url}/opportunity/"
    async with aiohttp.ClientSession(headers=server.auth_headers) as session:

        async def page(skip: int) -> dict[str, object]:
            params = {"_skip": str(skip), "_limit": str(PAGE), "_order_by": "date_created"}
            async with session.get(url, params=params) as resp:
                resp.raise_for_status()
                body: dict[str, object] = orjson.loads(await resp.read())
                return body

        first = await page(0)
        total = first["total_results"]
        assert isinstance(total, int)
        count = len(first["data"])  # type: ignore[arg-type]
        gate = asyncio.Semaphore(in_flight)

        async def gated(skip: int) -> int:
            async with gate:
                return len((await page(skip))["data"])  # type: ignore[arg-type]

        counts = await asyncio.gather(*(gated(skip) for skip in range(PAGE, total, PAGE)))
        return count + sum(counts)


async def close_opps_list(server: Server) -> int:
    """close-opps with its defaults."""
    async with CloseAdapter(server.api_key, base_url=server.base_url) as close:
        return sum([1 async for _ in close.list()])


def closeio_sync(server: Server) -> int:
    """The official client, as its documentation pages through a listing."""
    from closeio_api import Client  # a benchmark-only dependency

    api = Client(server.api_key)
    api.base_url = server.base_url + "/"
    count, skip = 0, 0
    while True:
        body = api.get("opportunity", params={"_skip": skip, "_limit": PAGE})
        count += len(body["data"])
        skip += PAGE
        if not body["has_more"]:
            return count


async def measure(args: argparse.Namespace, server: Server) -> dict[str, list[float]]:
    readers: dict[str, Callable[[], Awaitable[int]]] = {
        "raw aiohttp, 8 in flight": lambda: raw_concurrent(server),
        "close-opps list() (defaults)": lambda: close_opps_list(server),
    }
    if not args.skip_closeio:
        readers["closeio (official, sync)"] = lambda: asyncio.to_thread(closeio_sync, server)
    runs: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.repeat):  # alternate, so every reader sees the same machine state
        for name, read in readers.items():
            runs[name].append(await timed(read, args.records))
    return runs


def main(args: argparse.Namespace) -> None:
    with emulator_process(args.records, args.latency) as server:
        runs = asyncio.run(measure(args, server))

    print(
        f"{args.records} Close records, pages of {PAGE}, {args.latency * 1000:.0f} ms per "
        f"request, median of {args.repeat} alternating runs"
    )
    medians = {name: statistics.median(times) for name, times in runs.items()}
    for name, median in medians.items():
        print(f"  {name:<30} {median:7.3f} s  {args.records / median:10,.0f} records/s")
    ours = medians["close-opps list() (defaults)"]
    raw = medians["raw aiohttp, 8 in flight"]
    print(f"  close-opps time / raw 8-in-flight time: {ours / raw:5.2f}  (target <= 1.3)")
    if "closeio (official, sync)" in medians:
        official = medians["closeio (official, sync)"]
        print(f"  closeio time / close-opps time:         {official / ours:5.2f}  (target >= 5)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-closeio", action="store_true", help="no official client")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
