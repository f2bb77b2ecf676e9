"""Benchmark: what the sandbox's emulators spend per request over a large listing.

Serves N records per vendor and reads every page of each with a plain aiohttp loop, with
and without an edit between pages (an edit invalidates the emulator's cached views), and
prints the server-side time per request for the first and the last tenth of the pages. A
server whose cost does not grow with the page number (as a real server's indexes keep it)
shows about the same figure for both. Run::

    python bench/sandbox_listing.py                 # 20,000 records
    python bench/sandbox_listing.py --records 5000 --vendors close getraze
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from close_opps.sandbox import (
    HOST,
    CloseOptions,
    GetrazeOptions,
    ReevoOptions,
    VendorServer,
    make_close_app,
    make_getraze_app,
    make_reevo_app,
)

Fetch = Callable[[aiohttp.ClientSession, VendorServer, Any], Awaitable[tuple[list[Any], Any]]]


async def _close_page(
    http: aiohttp.ClientSession, server: VendorServer, skip: Any
) -> tuple[list[Any], Any]:
    skip = skip or 0
    async with http.get(
        f"{server.base_url}/opportunity/",
        headers=server.auth_headers,
        params={"_skip": skip, "_limit": 100, "_order_by": "date_created"},
    ) as response:
        body = await response.json()
    return body["data"], (skip + 100 if body["has_more"] else None)


async def _getraze_page(
    http: aiohttp.ClientSession, server: VendorServer, page: Any
) -> tuple[list[Any], Any]:
    page = page or 1
    async with http.get(
        f"{server.base_url}/opportunities",
        headers=server.auth_headers,
        params={"page": page, "limit": 100, "sort_by": "updated_at", "sort_order": "asc"},
    ) as response:
        body = await response.json()
    return body["data"], (page + 1 if body["pagination"]["has_next"] else None)


async def _reevo_page(
    http: aiohttp.ClientSession, server: VendorServer, cursor: Any
) -> tuple[list[Any], Any]:
    query: dict[str, Any] = {"limit": 200, "sort": [{"field": "created_at", "direction": "asc"}]}
    if cursor:
        query["cursor"] = cursor
    async with http.post(
        f"{server.base_url}/opportunity/_query", headers=server.auth_headers, json=query
    ) as response:
        body = await response.json()
    return body["data"], body["next_cursor"]


FETCHERS: dict[str, Fetch] = {
    "close": _close_page,
    "getraze": _getraze_page,
    "reevo": _reevo_page,
}


_SERVER_TIMES: list[float] = []


@web.middleware
async def _timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time spent in the emulator (auth, limiter, faults, the handler) per request."""
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        _SERVER_TIMES.append(time.perf_counter() - started)


async def _serve(name: str, records: int) -> VendorServer:
    if name == "close":
        app = make_close_app(CloseOptions(records=records), seed=1)
    elif name == "getraze":
        app = make_getraze_app(GetrazeOptions(records=records, tie_order="stable"), seed=1)
    else:
        app = make_reevo_app(ReevoOptions(records=records), seed=1)
    app.middlewares.insert(0, _timed)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return VendorServer(name, app, runner, int(runner.addresses[0][1]))  # type: ignore[arg-type]


async def _run(server: VendorServer, edit_every: int) -> tuple[int, float, float, float]:
    fetch = FETCHERS[server.name]
    records = 0
    token: Any = None
    _SERVER_TIMES.clear()
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        number = 0
        while True:
            page, token = await fetch(http, server, token)
            records += len(page)
            number += 1
            if edit_every and number % edit_every == 0:
                # an edit that keeps the listing's order: every cached view is dropped
                server.update(server.ids[0], note=f"edit {number}")
            if token is None:
                break
    total = time.perf_counter() - started
    times = _SERVER_TIMES[1:]  # the first request builds the views
    tenth = max(1, len(times) // 10)
    first = statistics.mean(times[:tenth]) * 1000
    last = statistics.mean(times[-tenth:]) * 1000
    return records, total, first, last


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--vendors", nargs="*", default=["close", "getraze", "reevo"])
    args = parser.parse_args()
    for name in args.vendors:
        server = await _serve(name, args.records)
        try:
            for edit_every in (0, 10, 1):
                records, total, first, last = await _run(server, edit_every)
                edits = f"an edit every {edit_every} page(s)" if edit_every else "no edits"
                print(
                    f"{name:8} {edits:24} {records:6} records in {total:5.2f} s; emulator ms "
                    f"per request: first tenth {first:6.2f}, last tenth {last:6.2f}"
                )
        finally:
            await server.runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
