"""The adapter contract, written once and run against every adapter.

Each adapter talks to its vendor's emulator (close_opps.sandbox) on 127.0.0.1: real sockets,
real retries. A new adapter proves itself by adding its case to ``CASES`` and passing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

import close_opps
from close_opps import (
    AuthenticationError,
    BaseAdapter,
    DecodeError,
    NotFoundError,
    Opportunity,
    OpportunityStatus,
)
from close_opps.sandbox import Fault, Sandbox, VendorServer

RECORDS = 57


@attrs.frozen
class Case:
    provider: str
    #: an id the vendor's server answers 404 for (Getraze answers 500 to a non-UUID id)
    unknown_id: str


CASES = [
    Case("close", "oppo_0000000000000000000000000000000000000000000"),
    Case("getraze", "00000000-0000-4000-8000-000000000000"),
    Case("reevo", "00000000-0000-4000-8000-000000000000"),
]


@pytest.fixture(params=CASES, ids=[c.provider for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def server(case: Case) -> AsyncIterator[VendorServer]:
    async with Sandbox(seed=11, records=RECORDS, vendors=[case.provider]) as sb:  # type: ignore[list-item]
        yield sb[case.provider]


def connect(case: Case, server: VendorServer, **options: Any) -> BaseAdapter:
    options.setdefault("api_key", server.api_key)
    return close_opps.connect(case.provider, base_url=server.base_url, **options)


async def everything(adapter: BaseAdapter, **filters: Any) -> list[Opportunity]:
    return [opp async for opp in adapter.list(**filters)]


async def test_list_returns_every_record_exactly_once(case: Case, server: VendorServer) -> None:
    async with connect(case, server, page_size=8) as adapter:
        got = await everything(adapter)
    ids = [o.id for o in got]
    assert len(ids) == len(set(ids)) == RECORDS
    assert set(ids) == set(server.ids)
    assert {o.provider for o in got} == {case.provider}
    assert server.request_count > 1  # it really paged


async def test_get_maps_the_same_record(case: Case, server: VendorServer) -> None:
    async with connect(case, server) as adapter:
        listed = {o.id: o for o in await everything(adapter)}
        for record_id in server.ids[:3]:
            one = await adapter.get(record_id)
            assert isinstance(one, Opportunity)
            assert (one.provider, one.id) == (case.provider, record_id)
            same = listed[record_id]
            assert (one.created_at, one.updated_at) == (same.created_at, same.updated_at)
            assert (one.status, one.amount, one.name) == (same.status, same.amount, same.name)
            assert one.created_at.tzinfo is not None
            assert one.raw


async def test_updated_since_is_honoured(case: Case, server: VendorServer) -> None:
    async with connect(case, server, page_size=10) as adapter:
        full = await everything(adapter)
        bound = sorted(o.updated_at for o in full)[RECORDS // 2]
        recent = await everything(adapter, updated_since=bound)
    expected = {o.id for o in full if o.updated_at >= bound}
    assert {o.id for o in recent} == expected
    assert len(recent) == len(expected)
    assert any(o.updated_at == bound for o in recent)  # inclusive


async def test_status_and_limit(case: Case, server: VendorServer) -> None:
    async with connect(case, server, page_size=10) as adapter:
        full = await everything(adapter)
        won = await everything(adapter, status=OpportunityStatus.WON)
        first = await everything(adapter, limit=5)
    assert {o.id for o in won} == {o.id for o in full if o.status is OpportunityStatus.WON}
    assert won  # the seeded data has won deals
    assert len(first) == 5


async def test_not_found(case: Case, server: VendorServer) -> None:
    async with connect(case, server) as adapter:
        with pytest.raises(NotFoundError) as info:
            await adapter.get(case.unknown_id)
    assert info.value.status == 404
    assert info.value.provider == case.provider


async def test_bad_key(case: Case, server: VendorServer) -> None:
    wrong = "wrong-key-0123456789"
    async with connect(case, server, api_key=wrong) as adapter:
        with pytest.raises(AuthenticationError) as info:
            await adapter.get(server.ids[0])
        with pytest.raises(AuthenticationError):
            await everything(adapter)
    assert info.value.status == 401
    assert wrong not in str(info.value)
    assert wrong not in repr(info.value)


async def test_429_is_honoured_then_succeeds(case: Case, server: VendorServer) -> None:
    server.script(Fault.rate_limit(0.01))
    async with connect(case, server) as adapter:
        opp = await adapter.get(server.ids[0])
        assert adapter.rate_limit is not None or case.provider == "reevo"
    assert opp.id == server.ids[0]
    assert [r.fault for r in server.requests] == ["rate_limit", None]


async def test_listing_survives_faults_exactly_once(case: Case, server: VendorServer) -> None:
    server.script(Fault.ok(), Fault.rate_limit(0.01), Fault.server_error(503), Fault.drop())
    async with connect(case, server, page_size=10) as adapter:
        got = await everything(adapter)
    assert sorted(o.id for o in got) == sorted(server.ids)


async def test_non_json_body_is_a_decode_error(case: Case, server: VendorServer) -> None:
    server.script(Fault.malformed("html"))
    async with connect(case, server) as adapter:
        with pytest.raises(DecodeError) as info:
            await adapter.get(server.ids[0])
    assert info.value.provider == case.provider


async def test_the_key_never_leaks(
    case: Case, server: VendorServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = server.api_key
    server.script(Fault.rate_limit(0.01), Fault.server_error(500), Fault.malformed("html"))
    with caplog.at_level(logging.DEBUG, logger="close_opps"):
        async with connect(case, server, max_retries=3) as adapter:
            assert key not in repr(adapter)
            assert key not in str(adapter)
            with pytest.raises(DecodeError) as info:
                await adapter.get(server.ids[0])
            await everything(adapter, limit=3)
    assert key not in str(info.value)
    assert key not in caplog.text
    assert "retrying" in caplog.text
