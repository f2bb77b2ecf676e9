"""The adapter contract, written once and run against every adapter.

Each adapter talks to its vendor's emulator (close_opps.sandbox) on 127.0.0.1: real sockets,
real retries. The contract itself ships as ``close_opps.testing.AdapterContract``; the tests
below it use the emulators' scripted faults.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

import close_opps
from close_opps import BaseAdapter, DecodeError, Opportunity
from close_opps.sandbox import Fault, Sandbox, VendorServer
from close_opps.testing import AdapterContract, ContractServer

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


# The shipped contract (close_opps.testing), run against each built-in adapter as a plugin
# author runs it against theirs.


class _OverTheSandbox(AdapterContract):
    provider: str

    @pytest.fixture
    async def contract_server(self) -> AsyncIterator[ContractServer]:
        case = next(c for c in CASES if c.provider == self.provider)
        async with Sandbox(seed=11, records=RECORDS, vendors=[case.provider]) as sb:  # type: ignore[list-item]
            server = sb[case.provider]
            yield ContractServer(
                connect=lambda **options: connect(case, server, **options),
                ids=server.ids,
                unknown_id=case.unknown_id,
                api_key=server.api_key,
            )


class TestCloseContract(_OverTheSandbox):
    provider = "close"


class TestGetrazeContract(_OverTheSandbox):
    provider = "getraze"


class TestReevoContract(_OverTheSandbox):
    provider = "reevo"


# What only the emulators can show: scripted faults.


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
