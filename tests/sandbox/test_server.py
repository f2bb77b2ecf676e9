"""The Sandbox context manager: ports, base URLs, choosing vendors, data changes, serving."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import aiohttp
import pytest

from close_opps.sandbox import CloseOptions, Sandbox, serve_forever

from ._support import call


async def test_base_urls_and_keys(sandbox: Sandbox) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1", sandbox.close.base_url)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/external/v1", sandbox.getraze.base_url)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v2", sandbox.reevo.base_url)
    ports = {sandbox[name].port for name in ("close", "getraze", "reevo")}
    assert len(ports) == 3
    assert sandbox.close.api_key == "sandbox-close-key"
    assert sandbox.getraze.api_key == "sandbox-getraze-key"
    assert sandbox.reevo.api_key == "sandbox-reevo-key"
    for server in sandbox.servers.values():
        assert {address[0] for address in server.runner.addresses} == {"127.0.0.1"}
    assert sandbox.describe()["reevo"] == {
        "base_url": sandbox.reevo.base_url,
        "api_key": "sandbox-reevo-key",
    }


async def test_one_vendor_only(http: aiohttp.ClientSession) -> None:
    async with Sandbox(vendors=["reevo"]) as sb:
        assert list(sb.servers) == ["reevo"]
        with pytest.raises(LookupError, match="not among the chosen"):
            _ = sb.close
    with pytest.raises(ValueError, match="unknown vendors"):
        Sandbox(vendors=["hubspot"])  # type: ignore[list-item]


async def test_stops_cleanly(http: aiohttp.ClientSession) -> None:
    sb = Sandbox(vendors=["close"])
    async with sb:
        url = f"{sb.close.base_url}/opportunity/"
        assert (await call(http, "GET", url, headers=sb.close.auth_headers)).status == 200
        with pytest.raises(RuntimeError, match="already running"):
            await sb.start()
    assert sb.servers == {}
    with pytest.raises(LookupError, match="not started"):
        _ = sb.close
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "GET", url)


async def test_options_precedence() -> None:
    async with Sandbox(
        seed=3, records=5, latency=0.0, vendors=["close", "getraze"], close=CloseOptions(records=3)
    ) as sb:
        assert len(sb.close.records) == 3
        assert len(sb.getraze.records) == 5
        assert sb.options["reevo"].records == 5


async def test_same_seed_same_data_different_seed_other_data() -> None:
    async with Sandbox(seed=1) as one, Sandbox(seed=1) as two, Sandbox(seed=2) as three:
        for name in ("close", "getraze", "reevo"):
            assert one[name].records == two[name].records
            assert one[name].ids != three[name].ids


async def test_touch_and_remove(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    server = sandbox.close
    target = server.ids[10]
    later = datetime(2026, 7, 1, 12, tzinfo=UTC)
    touched = server.touch(target, later)
    assert touched["date_updated"] == "2026-07-01T12:00:00.000000+00:00"
    url = f"{server.base_url}/opportunity/"
    reply = await call(
        http, "GET", url, headers=server.auth_headers, params={"_order_by": "-date_updated"}
    )
    assert reply.json()["data"][0]["id"] == target
    server.remove(target)
    assert target not in server.ids
    gone = await call(http, "GET", f"{url}{target}/", headers=server.auth_headers)
    assert gone.status == 404
    listed = await call(http, "GET", url, headers=server.auth_headers)
    assert listed.json()["total_results"] == 59
    # the other vendors re-render in their own forms
    getraze_id = sandbox.getraze.ids[0]
    assert sandbox.getraze.touch(getraze_id, later)["updated_at"] == "2026-07-01 12:00:00+00"
    assert sandbox.getraze.record(getraze_id)["updated_at"] == "2026-07-01 12:00:00+00"
    reevo_id = sandbox.reevo.ids[0]
    record = sandbox.reevo.touch(reevo_id, later)
    assert (
        record["updated_at"]
        == record["attributes"]["updated_at"]["value"]
        == "2026-07-01T12:00:00Z"
    )


async def test_serve_forever(http: aiohttp.ClientSession) -> None:
    ready: asyncio.Queue[Sandbox] = asyncio.Queue()
    task = asyncio.create_task(
        serve_forever(Sandbox(vendors=["getraze"]), on_ready=ready.put_nowait)
    )
    sb = await asyncio.wait_for(ready.get(), timeout=5)
    url = f"{sb.getraze.base_url}/opportunities"
    assert (await call(http, "GET", url, headers=sb.getraze.auth_headers)).status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sb.servers == {}
