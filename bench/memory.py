"""Benchmark: what a held Opportunity costs, and memory while listing without holding.

The emulators run in their own process on 127.0.0.1 (their data and caches are not ours);
everything is measured with ``tracemalloc`` (Python allocations) in this process:

1. **Bytes per held record**, per provider: after an untimed listing (one-time caches),
   ``adapter.list()`` of N records (default 1000) appended to a list; the memory still
   allocated once the listing has ended, the adapter is closed and garbage collected,
   divided by N. Printed beside it: the share of the records' ``raw`` (what stays
   allocated when only the ``raw`` of each record is kept), what the same records cost held
   as parsed JSON alone (``json.loads`` of the same bodies, numbers with a fraction as
   ``Decimal``, as close-opps parses them) and their size on the wire. The raw form is
   held once (no second copy) when its share is the parsed JSON's cost.
2. **Peak while listing without holding**: ``async for opp in adapter.list(): count += 1``
   over 10,000 and 100,000 Close records (``--listing``), ``tracemalloc``'s peak during
   each, and the process's peak RSS. Bounded means the 100,000 peak is not ten times the
   10,000 one: pages are read, decoded and dropped; what grows is the pager's set of the
   ids seen (it delivers each record once and checks the server's total). The first
   release (``b19ac54``, extracted with ``git archive``) lists the same records at the same
   time in a subprocess, measured alike (memory is per process).

Run::

    PYTHONPATH=. python bench/memory.py
    PYTHONPATH=. python bench/memory.py --records 5000 --listing 10000 100000 200000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import aiohttp
from sync_side_by_side import OLD_COMMIT, old_tree  # the first release, from git history

import close_opps
from close_opps import Opportunity
from close_opps.sandbox import CloseOptions, GetrazeOptions, ReevoOptions, Sandbox, VendorName

PROVIDERS = ("close", "getraze", "reevo")
PAGE = 100


def serve(conn: Connection, vendor: str, records: int) -> None:
    """The child process: one emulator, no rate limit, until the parent closes the pipe."""

    async def run() -> None:
        close = CloseOptions(records=records, rate_limit=None)
        getraze = GetrazeOptions(records=records, rate_limit=None)
        reevo = ReevoOptions(records=records, rate_limit=None)
        chosen = [cast("VendorName", vendor)]
        async with Sandbox(seed=3, vendors=chosen, close=close, getraze=getraze, reevo=reevo) as sb:
            server = sb[vendor]
            conn.send((server.base_url, server.api_key, dict(server.auth_headers)))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)

    with contextlib.suppress(EOFError):
        asyncio.run(run())


@contextlib.contextmanager
def emulator(vendor: str, records: int) -> Any:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve, args=(child, vendor, records), daemon=True)
    process.start()
    try:
        yield parent.recv()
    finally:
        parent.close()
        process.join(timeout=10)


async def bodies(vendor: str, base_url: str, headers: dict[str, str], n: int) -> list[bytes]:
    """The list pages' bytes, as the server sends them (to size the JSON)."""
    out: list[bytes] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        if vendor == "reevo":
            cursor = None
            while True:
                body: dict[str, Any] = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
                async with session.post(f"{base_url}/opportunity/_query", json=body) as r:
                    out.append(await r.read())
                cursor = json.loads(out[-1]).get("next_cursor")
                if not cursor:
                    return out
        for skip in range(0, n, PAGE):
            if vendor == "close":
                url, params = f"{base_url}/opportunity/", {"_skip": skip, "_limit": PAGE}
            else:
                url, params = f"{base_url}/opportunities", {"page": skip // PAGE + 1, "limit": PAGE}
            async with session.get(url, params={k: str(v) for k, v in params.items()}) as r:
                out.append(await r.read())
    return out


def records_of(vendor: str, page: Any) -> list[Any]:
    data = page["data"]
    return list(data) if isinstance(data, list) else []


async def listed(vendor: str, base_url: str, api_key: str, hold: bool) -> tuple[list[Any], int]:
    held: list[Opportunity] = []
    count = 0
    adapter = close_opps.connect(vendor, api_key=api_key, base_url=base_url)
    async with adapter:
        async for opp in adapter.list():
            count += 1
            if hold:
                held.append(opp)
    return held, count


def settled() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def held_cost(vendor: str, n: int) -> None:
    with emulator(vendor, n) as (base_url, api_key, headers):
        pages = asyncio.run(bodies(vendor, base_url, headers, n))
        wire = sum(len(b) for b in pages)
        count = sum(len(records_of(vendor, json.loads(b))) for b in pages)

        asyncio.run(listed(vendor, base_url, api_key, hold=False))  # warm up: one-time caches
        tracemalloc.start()
        before = settled()
        parsed = [json.loads(b, parse_float=Decimal) for b in pages]
        raw_only = [r for page in parsed for r in records_of(vendor, page)]
        del parsed
        json_cost = settled() - before
        del raw_only
        before = settled()
        held, got = asyncio.run(listed(vendor, base_url, api_key, hold=True))
        record_cost = settled() - before
        raws = [opp.raw for opp in held]
        del held  # the raw records stay: what remains is their share
        raw_cost = settled() - before
        del raws
        tracemalloc.stop()
    if got != count:
        raise SystemExit(f"{vendor}: listed {got}, expected {count}")
    print(
        f"  {vendor:<8} {record_cost / got:7,.0f} B per held Opportunity, of which its raw "
        f"{raw_cost / got:7,.0f} B (parsed JSON alone: {json_cost / got:7,.0f} B; "
        f"on the wire: {wire / got:6,.0f} B); held / parsed JSON {record_cost / json_cost:4.2f}"
    )


#: The old release's listing, in its own process (same measurement).
OLD_SCRIPT = r"""
import asyncio, gc, json, sys, tracemalloc
from close_opps.adapters.close import CloseAdapter

async def run(base_url, api_key):
    count = 0
    async with CloseAdapter(api_key, base_url=base_url) as adapter:
        async for _ in adapter.list():
            count += 1
    return count

gc.collect()
tracemalloc.start()
count = asyncio.run(run(sys.argv[1], sys.argv[2]))
print(json.dumps([tracemalloc.get_traced_memory()[1], count]))
"""


def listing_peak(n: int, old: str | None) -> tuple[int, int, float, int | None]:
    """The peak while listing ``n`` records (and the old release's, when ``old`` is its tree)."""
    with emulator("close", n) as (base_url, api_key, _):
        # the old release lists meanwhile, in its own process (memory is per process; this
        # halves the wall time, and the emulator serves both)
        other = None
        if old is not None:
            other = subprocess.Popen(  # noqa: S603
                [sys.executable, "-c", OLD_SCRIPT, base_url, api_key],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=old,
                env={**os.environ, "PYTHONPATH": old},
            )
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        _, got = asyncio.run(listed("close", base_url, api_key, hold=False))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        old_peak = None
        if other is not None:
            out, err = other.communicate()
            if other.returncode != 0:
                raise SystemExit(f"the old release failed: {err.strip()[-500:]}")
            old_peak, old_got = json.loads(out.strip().splitlines()[-1])
            if old_got != n:
                raise SystemExit(f"the old release listed {old_got}, expected {n}")
    if got != n:
        raise SystemExit(f"listed {got}, expected {n}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return peak, rss, elapsed, old_peak


def main(args: argparse.Namespace) -> None:
    print(f"close_opps from {Path(close_opps.__file__).parent}, Python {sys.version.split()[0]}")
    print(f"1. {args.records} records held per provider (tracemalloc, after gc):")
    for vendor in args.providers:
        held_cost(vendor, args.records)
    print("2. listing Close records without holding them (tracemalloc peak during the listing):")
    peaks, old_peaks = [], []
    with tempfile.TemporaryDirectory(prefix="close-opps-bench-") as tmp:
        old = None if args.no_old else old_tree(args.old_commit, tmp)
        for n in args.listing:
            peak, rss, elapsed, old_peak = listing_peak(n, old)
            peaks.append(peak)
            before = ""
            if old_peak is not None:
                old_peaks.append(old_peak)
                before = f"; {args.old_commit}: {old_peak / 2**20:5.1f} MiB"
            print(
                f"  {n:>8,} records: peak {peak / 2**20:6.1f} MiB traced "
                f"({peak / n:5,.0f} B per record listed{before}), process peak RSS so far "
                f"{rss / 2**20:6.1f} MiB, {elapsed:5.1f} s under tracemalloc"
            )
    if len(peaks) > 1:
        grow = args.listing[-1] / args.listing[0]
        print(f"  peak grew x{peaks[-1] / peaks[0]:.2f} for x{grow:.0f} the records", end="")
        if len(old_peaks) > 1:
            print(f" ({args.old_commit}: x{old_peaks[-1] / old_peaks[0]:.2f})", end="")
        print()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000, help="records held per provider")
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--listing", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="the release to compare")
    parser.add_argument("--no-old", action="store_true", help="skip the old release")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
