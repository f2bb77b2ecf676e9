"""The adapter contract as a test suite, for plugin authors (needs pytest and pytest-asyncio).

Subclass :class:`AdapterContract` in your tests and provide a ``contract_server`` fixture
that yields a :class:`ContractServer`: a server (your emulator on 127.0.0.1, or a test
account) holding known records, and how to connect an adapter to it. Every test of the
class then runs against your adapter: the same contract the built-in adapters pass::

    import pytest_asyncio
    from close_opps.testing import AdapterContract, ContractServer

    class TestMyCrm(AdapterContract):
        @pytest_asyncio.fixture
        async def contract_server(self):
            async with my_emulator(records=57) as server:
                yield ContractServer(
                    connect=lambda **options: MyCrmAdapter(
                        **{"api_key": server.key, "base_url": server.url, **options}
                    ),
                    ids=server.ids,
                    unknown_id="no-such-id",
                    api_key=server.key,
                )

The server needs at least 20 records, some of them won, with distinct ``updated_at``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

import attrs
import pytest

from close_opps.adapters.base import BaseAdapter
from close_opps.changes import ChangeKind
from close_opps.errors import AuthenticationError, CloseOppsError, NotFoundError
from close_opps.model import FrozenDict, FrozenList, Opportunity, OpportunityStatus

__all__ = ["AdapterContract", "ContractServer"]


@attrs.frozen(kw_only=True)
class ContractServer:
    """A server holding known records, and how to reach it.

    Attributes:
        connect: ``connect(**options)`` returns an adapter talking to the server; the options
            are the adapter's own (``api_key``, ``page_size``, ``max_retries``, ...).
        ids: the id of every record the server holds.
        unknown_id: an id the server answers "no such record" for.
        api_key: the key the server accepts (the suite checks it never leaks).
    """

    connect: Callable[..., BaseAdapter]
    ids: Collection[str]
    unknown_id: str
    api_key: str


async def _everything(adapter: BaseAdapter, **arguments: Any) -> list[Opportunity]:
    return [opp async for opp in adapter.list(**arguments)]


@pytest.mark.asyncio
def _first_mutable(value: Any, where: str) -> str | None:
    """The path of the first container inside ``value`` that can be changed, if any."""
    if isinstance(value, (dict, list, set)) and not isinstance(value, (FrozenDict, FrozenList)):
        return where
    if isinstance(value, Mapping):
        children: list[tuple[str, Any]] = [(f"{where}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, frozenset)):
        children = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    elif attrs.has(type(value)):
        children = [
            (f"{where}.{f.name}", getattr(value, f.name)) for f in attrs.fields(type(value))
        ]
    else:
        return None
    for path, child in children:
        found: str | None = _first_mutable(child, path)
        if found is not None:
            return found
    return None


class AdapterContract:
    """The contract every adapter satisfies; subclass it and provide ``contract_server``."""

    async def test_list_returns_every_record_exactly_once(
        self, contract_server: ContractServer
    ) -> None:
        async with contract_server.connect(page_size=8) as adapter:
            got = await _everything(adapter)
        ids = [o.id for o in got]
        assert len(ids) == len(set(ids)), "a record was yielded twice"
        assert set(ids) == set(contract_server.ids)
        assert len({o.provider for o in got}) == 1
        assert all(isinstance(o, Opportunity) for o in got)

    async def test_the_change_feed_delivers_every_record_then_nothing(
        self, contract_server: ContractServer
    ) -> None:
        async with contract_server.connect(page_size=8) as adapter:
            first = adapter.changes()
            changes = [change async for change in first]
            assert first.full_resync
            assert first.cursor is not None, "a feed run to its end has a cursor"
            assert all(c.kind is ChangeKind.UPSERT for c in changes)
            assert sorted(c.id for c in changes) == sorted(contract_server.ids)
            again = adapter.changes(since=first.cursor)
            assert [change async for change in again] == [], "nothing changed"
            assert again.cursor is not None

    async def test_pages_carry_the_same_records(self, contract_server: ContractServer) -> None:
        async with contract_server.connect(page_size=8) as adapter:
            pages = [page async for page in adapter.pages()]
        ids = [o.id for page in pages for o in page]
        assert len(pages) > 1, "a listing of 8 records per page must page"
        assert sorted(ids) == sorted(contract_server.ids)

    async def test_get_maps_the_same_record_as_list(self, contract_server: ContractServer) -> None:
        async with contract_server.connect() as adapter:
            listed = {o.id: o for o in await _everything(adapter)}
            for record_id in list(contract_server.ids)[:3]:
                one = await adapter.get(record_id)
                same = listed[record_id]
                assert (one.provider, one.id) == (same.provider, record_id)
                assert (one.created_at, one.updated_at) == (same.created_at, same.updated_at)
                assert (one.status, one.amount) == (same.status, same.amount)
                assert one.created_at.utcoffset() is not None
                assert one.raw

    async def test_records_are_read_only_all_the_way_down(
        self, contract_server: ContractServer
    ) -> None:
        async with contract_server.connect() as adapter:
            records = await _everything(adapter)
            records.append(await adapter.get(records[0].id))
        for opp in records:
            for where, value in (("raw", opp.raw), ("custom_fields", opp.custom_fields)):
                mutable = _first_mutable(value, where)
                assert mutable is None, f"record {opp.id}: {mutable} can be changed"

    async def test_updated_since_is_inclusive_and_exact(
        self, contract_server: ContractServer
    ) -> None:
        async with contract_server.connect(page_size=10) as adapter:
            full = await _everything(adapter)
            bound = sorted(o.updated_at for o in full)[len(full) // 2]
            recent = await _everything(adapter, updated_since=bound)
        expected = {o.id for o in full if o.updated_at >= bound}
        assert sorted(o.id for o in recent) == sorted(expected)

    async def test_status_and_limit(self, contract_server: ContractServer) -> None:
        async with contract_server.connect(page_size=10) as adapter:
            full = await _everything(adapter)
            won = await _everything(adapter, status=OpportunityStatus.WON)
            first = await _everything(adapter, limit=5)
        assert {o.id for o in won} == {o.id for o in full if o.status is OpportunityStatus.WON}
        assert won, "the server must hold won records for this test"
        assert len(first) == 5

    async def test_arguments_are_checked_at_the_call(self, contract_server: ContractServer) -> None:
        async with contract_server.connect() as adapter:
            for listing in (adapter.list, adapter.pages):
                with pytest.raises(ValueError, match="limit"):
                    listing(limit=-1)
                with pytest.raises(ValueError, match="timezone-aware"):
                    listing(updated_since=datetime(2026, 1, 1))
                with pytest.raises(ValueError, match="status"):
                    listing(status="pending")

    async def test_leaving_a_listing_early_is_clean(self, contract_server: ContractServer) -> None:
        async with contract_server.connect(page_size=5) as adapter:
            async with contextlib.aclosing(adapter.list()) as items:
                async for _ in items:
                    break
            assert len(await _everything(adapter, limit=3)) == 3

    async def test_not_found(self, contract_server: ContractServer) -> None:
        async with contract_server.connect() as adapter:
            with pytest.raises(NotFoundError) as info:
                await adapter.get(contract_server.unknown_id)
        assert info.value.provider == adapter.provider

    async def test_bad_key_is_an_authentication_error_that_never_shows_a_key(
        self, contract_server: ContractServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        wrong = "wrong-key-0123456789"
        with caplog.at_level(logging.DEBUG, logger="close_opps"):
            async with contract_server.connect(api_key=wrong, max_retries=0) as adapter:
                assert wrong not in repr(adapter)
                with pytest.raises(AuthenticationError) as info:
                    await adapter.get(next(iter(contract_server.ids)))
                with pytest.raises(AuthenticationError):
                    await _everything(adapter)
        assert wrong not in str(info.value)
        assert wrong not in repr(info.value)
        assert wrong not in caplog.text

    async def test_every_failure_is_a_close_opps_error(
        self, contract_server: ContractServer
    ) -> None:
        async with contract_server.connect(max_retries=0) as adapter:
            with pytest.raises(CloseOppsError):
                await adapter.get(contract_server.unknown_id)
            with pytest.raises(ValueError, match="id"):
                await adapter.get("..")  # never a path of its own
