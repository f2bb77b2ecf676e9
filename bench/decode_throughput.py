"""Benchmark: turning list pages into records, on one core, against parsing the JSON alone.

Takes real list bodies from the three emulators (fetched once over 127.0.0.1), then, with no
network, times per provider in one run:

- ``json.loads`` of the bodies (what any client must do),
- ``orjson.loads`` of the same bytes (the fastest parse there is),
- close-opps: ``decipher_response`` and the provider's pure page parser, that is JSON to
  typed, exact ``Opportunity`` records, as a listing does,

and prints records/s for each and close-opps' rate as a share of ``json.loads``. Run::

    python bench/decode_throughput.py
    python bench/decode_throughput.py --records 2000 --repeat 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from close_opps.adapters.base import ListQuery
from close_opps.adapters.close import CloseDialect, ClosePaging
from close_opps.adapters.getraze import GetrazeDialect, GetrazePaging
from close_opps.adapters.reevo import ReevoDialect, ReevoPaging
from close_opps.http import Dialect, Response, decipher_response
from close_opps.paging import PageRequest, PagingPolicy
from close_opps.sandbox import Sandbox

PAGE = 100


async def bodies(records: int) -> dict[str, list[bytes]]:
    """Every list page of each emulator, as the raw bytes the server sent."""
    out: dict[str, list[bytes]] = {"close": [], "getraze": [], "reevo": []}
    async with Sandbox(seed=2, records=records) as sb, aiohttp.ClientSession() as session:
        for skip in range(0, records, PAGE):
            url = f"{sb.close.base_url}/opportunity/"
            params = {"_skip": str(skip), "_limit": str(PAGE)}
            async with session.get(url, params=params, headers=sb.close.auth_headers) as r:
                out["close"].append(await r.read())
            url = f"{sb.getraze.base_url}/opportunities"
            params = {"page": str(skip // PAGE + 1), "limit": str(PAGE)}
            async with session.get(url, params=params, headers=sb.getraze.auth_headers) as r:
                out["getraze"].append(await r.read())
        cursor = None
        while True:
            body: dict[str, Any] = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            url = f"{sb.reevo.base_url}/opportunity/_query"
            async with session.post(url, json=body, headers=sb.reevo.auth_headers) as r:
                raw = await r.read()
            out["reevo"].append(raw)
            cursor = json.loads(raw).get("next_cursor")
            if not cursor:
                break
    return out


def close_opps_decoder(dialect: Dialect, policy: PagingPolicy) -> Callable[[list[bytes]], int]:
    headers: CIMultiDict[str] = CIMultiDict()

    def run(pages: list[bytes]) -> int:
        count = 0
        for number, body in enumerate(pages):
            data = decipher_response(dialect, 200, headers, body)
            request = PageRequest(offset=number * PAGE, size=PAGE)
            parsed = policy.parse(Response(status=200, headers=headers, data=data), request)
            count += len(parsed.records)
        return count

    return run


def best_rate(run: Callable[[list[bytes]], int], pages: list[bytes], repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        count = run(pages)
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def count_json(pages: list[bytes], key: str) -> int:
    total = 0
    for body in pages:
        data = json.loads(body, parse_float=Decimal)
        total += len(data["data"])
    return total


def count_orjson(pages: list[bytes]) -> int:
    return sum(len(orjson.loads(body)["data"]) for body in pages)


def main(args: argparse.Namespace) -> None:
    pages = asyncio.run(bodies(args.records))
    query = ListQuery()
    decoders = {
        "close": close_opps_decoder(CloseDialect(), ClosePaging(query)),
        "getraze": close_opps_decoder(GetrazeDialect(), GetrazePaging(query)),
        "reevo": close_opps_decoder(ReevoDialect(), ReevoPaging(query)),
    }
    print(f"{args.records} records per provider in pages of {PAGE}; median of {args.repeat}")
    for provider, decode in decoders.items():
        size = sum(len(b) for b in pages[provider]) / args.records
        plain = best_rate(lambda p: count_json(p, "data"), pages[provider], args.repeat)
        fast = best_rate(count_orjson, pages[provider], args.repeat)
        ours = best_rate(decode, pages[provider], args.repeat)
        print(
            f"  {provider:<8} {size:6.0f} B/record   json.loads {plain:9,.0f}/s   "
            f"orjson {fast:9,.0f}/s   close-opps {ours:9,.0f}/s   "
            f"(x{ours / plain:4.2f} of json.loads)"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
