"""Benchmark: turning list pages into records, on one core, against parsing the JSON alone.

Takes real list bodies from the three emulators (fetched once over 127.0.0.1), then, with no
network, times per provider in one run:

- ``json.loads`` of the bodies (what any client must do),
- ``orjson.loads`` of the same bytes (the fastest parse there is),
- close-opps: ``decipher_response`` and the provider's pure page parser, that is JSON to
  typed, exact ``Opportunity`` records, as a listing does,

and prints records/s for each and close-opps' rate as a share of ``json.loads``.

With ``--against PATH`` (another checkout of close-opps, such as the first release), it also
times, alternating in fresh interpreters, the same work in both versions on the same bytes:
each version's JSON parsing and its public mapping function (``close_to_opportunity``,
``getraze_to_opportunity``, ``reevo_to_opportunity``) for every record, and prints the
ratio. Run::

    python bench/decode_throughput.py
    python bench/decode_throughput.py --records 2000 --repeat 7
    git worktree add /tmp/close-opps-first b19ac54     # the first release
    python bench/decode_throughput.py --against /tmp/close-opps-first
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import pickle
import statistics
import subprocess
import sys
import tempfile
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


#: Run in a fresh interpreter with a checkout first on ``sys.path``: that version's JSON
#: parsing and mapping of every record, best rate of ``repeat`` rounds, as JSON.
VERSION_RUN = """
import json, pickle, sys, time
from decimal import Decimal
sys.path.insert(0, sys.argv[1])
import close_opps.http as http
from close_opps.adapters.close import close_to_opportunity
from close_opps.adapters.getraze import getraze_to_opportunity
from close_opps.adapters.reevo import reevo_to_opportunity
assert http.__file__.startswith(sys.argv[1]), http.__file__
load = getattr(http, "load_json", None) or (lambda body: json.loads(body, parse_float=Decimal))
mappers = {"close": close_to_opportunity, "getraze": getraze_to_opportunity,
           "reevo": reevo_to_opportunity}
pages = pickle.load(open(sys.argv[2], "rb"))
rates = {}
for provider, mapper in mappers.items():
    best = 0.0
    for _ in range(int(sys.argv[3])):
        started = time.process_time()
        count = sum(1 for body in pages[provider] for raw in load(body)["data"] if mapper(raw))
        best = max(best, count / (time.process_time() - started))
    rates[provider] = best
print(json.dumps(rates))
"""


def version_rates(checkout: str, pages_file: str, repeat: int) -> dict[str, float]:
    """Records/s of ``checkout``'s parsing and mapping, per provider, in a fresh interpreter."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", VERSION_RUN, checkout, pages_file, str(repeat)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": checkout},
    )
    rates: dict[str, float] = json.loads(done.stdout)
    return rates


def compare_versions(pages: dict[str, list[bytes]], against: str, repeat: int, rounds: int) -> None:
    here = str(pathlib.Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        pages_file = str(pathlib.Path(tmp) / "pages.pickle")
        with open(pages_file, "wb") as out:
            pickle.dump(pages, out)
        ours: dict[str, list[float]] = {}
        theirs: dict[str, list[float]] = {}
        for _ in range(rounds):  # alternating, so that a busy moment hits both
            for provider, rate in version_rates(here, pages_file, repeat).items():
                ours.setdefault(provider, []).append(rate)
            for provider, rate in version_rates(against, pages_file, repeat).items():
                theirs.setdefault(provider, []).append(rate)
    print(
        f"this checkout against {against} (parsing + mapping; median of {rounds} alternating "
        "runs, and the range of the ratios of each pair of runs)"
    )
    for provider in ours:
        now, then = statistics.median(ours[provider]), statistics.median(theirs[provider])
        pairs = sorted(a / b for a, b in zip(ours[provider], theirs[provider], strict=True))
        print(
            f"  {provider:<8} this {now:9,.0f}/s   that {then:9,.0f}/s   (x{now / then:4.2f};"
            f" pairs x{pairs[0]:4.2f} to x{pairs[-1]:4.2f})"
        )


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
    if args.against:
        compare_versions(pages, args.against, args.repeat, args.rounds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--against", metavar="PATH", help="another checkout of close-opps to compare with"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs per version")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
