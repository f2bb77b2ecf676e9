"""CloseAdapter against a real local server (the sandbox's Close emulator on 127.0.0.1).

The real network stack runs here: sockets, timeouts, dropped connections, retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from close_opps import (
    APITimeoutError,
    AuthenticationError,
    CloseAdapter,
    DecodeError,
    NotFoundError,
    TransportError,
)
from close_opps.sandbox import CloseOptions, Fault, Sandbox, VendorServer


@pytest.fixture
async def close_server() -> AsyncIterator[VendorServer]:
    async with Sandbox(seed=3, vendors=["close"], close=CloseOptions(records=230)) as sb:
        yield sb.close


def adapter(server: VendorServer, **options: Any) -> CloseAdapter:
    return CloseAdapter(server.api_key, base_url=server.base_url, **options)


async def test_several_pages_every_record_once(close_server: VendorServer) -> None:
    async with adapter(close_server, page_size=25, concurrency=4) as close:
        ids = [opp.id async for opp in close.list()]
    assert sorted(ids) == sorted(close_server.ids)
    assert len(ids) == len(set(ids)) == 230
    skips = sorted(int(r.query["_skip"]) for r in close_server.requests)
    assert skips == list(range(0, 250, 25))


async def test_updated_since_is_inclusive_and_sent(close_server: VendorServer) -> None:
    async with adapter(close_server) as close:
        everything = [opp async for opp in close.list()]
        bound = sorted(o.updated_at for o in everything)[100]
        recent = [opp async for opp in close.list(updated_since=bound)]
    assert {o.id for o in recent} == {o.id for o in everything if o.updated_at >= bound}
    assert "date_updated__gte" in close_server.requests[-1].query


async def test_skip_limit_reached_mid_listing() -> None:
    options = CloseOptions(records=230, max_skip=60)
    async with Sandbox(seed=5, vendors=["close"], close=options) as sb:
        async with adapter(sb.close, page_size=20, concurrency=3) as close:
            got = [opp async for opp in close.list()]
        refused = [r for r in sb.close.requests if int(r.query["_skip"]) > 60]
        resumed = [r for r in sb.close.requests if "date_created__gte" in r.query]
        assert sorted(o.id for o in got) == sorted(sb.close.ids)
    assert len(got) == 230
    assert refused  # the server's 400 was met and got past
    assert resumed
    assert [o.created_at for o in got] == sorted(o.created_at for o in got)


async def test_429_with_ratelimit_then_success(close_server: VendorServer) -> None:
    record_id = close_server.ids[0]
    close_server.script(Fault.rate_limit(0.01))
    async with adapter(close_server) as close:
        opp = await close.get(record_id)
        assert close.rate_limit is not None
        assert close.rate_limit.limit is not None
    assert opp.id == record_id
    assert [r.fault for r in close_server.requests] == ["rate_limit", None]


async def test_503_then_success(close_server: VendorServer) -> None:
    close_server.script(Fault.server_error(503))
    async with adapter(close_server, page_size=100) as close:
        got = [opp async for opp in close.list(limit=150)]
    assert len(got) == 150
    assert close_server.requests[0].fault == "server_error"


async def test_dropped_connection_is_retried(close_server: VendorServer) -> None:
    close_server.script(Fault.drop(), Fault.incomplete())
    async with adapter(close_server) as close:
        opp = await close.get(close_server.ids[1])
    assert opp.id == close_server.ids[1]
    assert close_server.request_count == 3


async def test_dropped_connection_without_retries(close_server: VendorServer) -> None:
    # aiohttp itself resends an idempotent request once when the server closes the
    # connection before answering (RFC 9112 9.3.1); our retries are off, so two drops fail.
    close_server.script(Fault.drop(), Fault.drop())
    async with adapter(close_server, max_retries=0) as close:
        with pytest.raises(TransportError) as info:
            await close.get(close_server.ids[1])
    assert info.value.provider == "close"
    assert close_server.request_count == 2


async def test_timeout(close_server: VendorServer) -> None:
    close_server.script(Fault.delay(0.5))
    async with adapter(close_server, timeout=0.1, max_retries=0) as close:
        with pytest.raises(APITimeoutError, match=r"timed out after 0\.1 s"):
            await close.get(close_server.ids[2])


async def test_timeout_then_success(close_server: VendorServer) -> None:
    close_server.script(Fault.delay(0.5))
    async with adapter(close_server, timeout=0.1) as close:
        opp = await close.get(close_server.ids[2])
    assert opp.id == close_server.ids[2]


@pytest.mark.parametrize("form", ["html", "truncated_json"])
async def test_non_json_body(close_server: VendorServer, form: str) -> None:
    close_server.script(Fault.malformed(form))  # type: ignore[arg-type]
    async with adapter(close_server) as close:
        with pytest.raises(DecodeError, match="not JSON"):
            await close.get(close_server.ids[0])


async def test_bad_key_and_unknown_id(close_server: VendorServer) -> None:
    async with CloseAdapter("wrong-key", base_url=close_server.base_url) as close:
        with pytest.raises(AuthenticationError) as info:
            await close.get(close_server.ids[0])
    assert "wrong-key" not in str(info.value)
    async with adapter(close_server) as close:
        with pytest.raises(NotFoundError):
            await close.get("oppo_does_not_exist")
        with pytest.raises(NotFoundError):
            await close.get("../../me")
    # the id stayed one segment (decoded here by the server), not a walk up to /api/me
    assert close_server.requests[-1].path == "/api/v1/opportunity/../../me/"
