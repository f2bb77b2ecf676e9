"""The one pager, driven by an in-memory adapter: no HTTP, only the paging logic."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aioresponses import aioresponses

from close_opps import (
    CloseAdapter,
    GetrazeAdapter,
    IncompleteListingError,
    Opportunity,
    PaginationError,
    ReevoAdapter,
)
from close_opps.adapters.base import BaseAdapter, ListQuery
from close_opps.http import Dialect, Request, Response
from close_opps.hub import OpportunityHub
from close_opps.paging import Pager, PageRequest, PagingPolicy, ParsedPage, _PageEdges, _Run

T0 = datetime(2026, 1, 1, tzinfo=UTC)

#: Answers a page: (offset, size, cursor) -> (records, total, has_more, next_cursor).
Server = Callable[[PageRequest], tuple[list[Opportunity], int | None, bool, str | None]]


def opp(index: int, *, at: datetime | None = None) -> Opportunity:
    moment = at if at is not None else T0 + timedelta(minutes=index)
    return Opportunity(provider="mem", id=f"o{index:04d}", created_at=moment, updated_at=moment)


class MemoryPaging(PagingPolicy):
    def __init__(self, *, random_access: bool = True, keyed: bool = True) -> None:
        self.random_access = random_access
        self._keyed = keyed

    def request(self, page: PageRequest) -> Request:
        return Request(
            path="/list", params={"offset": page.offset, "size": page.size, "cursor": page.cursor}
        )

    def parse(self, response: Response, page: PageRequest) -> ParsedPage:
        records, total, has_more, cursor = response.data
        return ParsedPage(records=records, total=total, has_more=has_more, next_cursor=cursor)

    def sort_key(self, record: Opportunity) -> Any:
        return record.created_at if self._keyed else None


class MemoryAdapter(BaseAdapter):
    provider = "mem"
    default_base_url = "https://mem.example"
    dialect_class = Dialect
    max_page_size = 100

    def __init__(self, server: Server, policy: MemoryPaging, **kwargs: Any) -> None:
        super().__init__("key", **kwargs)
        self.server = server
        self.policy = policy
        self.requests: list[PageRequest] = []

    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        raise NotImplementedError

    def paging_policy(self, query: ListQuery) -> PagingPolicy:
        return self.policy

    async def _send(self, request: Request) -> Response:
        params: Mapping[str, Any] = request.params
        page = PageRequest(offset=params["offset"], size=params["size"], cursor=params["cursor"])
        self.requests.append(page)
        return Response(status=200, headers={}, data=self.server(page))


def slicing(records: list[Opportunity]) -> Server:
    def answer(page: PageRequest) -> tuple[list[Opportunity], int | None, bool, str | None]:
        chunk = records[page.offset : page.offset + page.size]
        return chunk, len(records), page.offset + page.size < len(records), None

    return answer


async def collect(adapter: BaseAdapter, **arguments: Any) -> list[Opportunity]:
    return [o async for o in adapter.list(**arguments)]


async def test_pages_are_fetched_concurrently_and_yielded_in_order() -> None:
    records = [opp(i) for i in range(95)]
    adapter = MemoryAdapter(slicing(records), MemoryPaging(), concurrency=4)
    got = await collect(adapter, page_size=10)
    assert got == records
    assert sorted(r.offset for r in adapter.requests) == list(range(0, 95, 10))


async def test_limit_fetches_no_page_more_than_needed() -> None:
    adapter = MemoryAdapter(slicing([opp(i) for i in range(95)]), MemoryPaging())
    got = await collect(adapter, page_size=10, limit=25)
    assert len(got) == 25
    assert sorted(r.offset for r in adapter.requests) == [0, 10, 20]


async def test_fewer_records_than_the_total_reads_again_then_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = [opp(i) for i in range(30)]

    def short(page: PageRequest) -> tuple[list[Opportunity], int | None, bool, str | None]:
        chunk = [r for r in records[page.offset : page.offset + page.size] if r.id != "o0017"]
        return chunk, 30, page.offset + page.size < 30, None

    adapter = MemoryAdapter(short, MemoryPaging())
    yielded: list[Opportunity] = []

    async def consume() -> None:
        async for item in adapter.list(page_size=10):
            yielded.append(item)

    with pytest.raises(IncompleteListingError) as info:
        await consume()
    assert (info.value.expected, info.value.received) == (30, 29)
    assert len(yielded) == 29  # everything found was yielded first
    assert len(adapter.requests) == 6  # one pass, then one pass again
    assert "reading it again" in caplog.text
    assert "did not honour" not in caplog.text  # the second pass starts its order check anew


async def test_a_total_that_shrinks_is_a_deletion_not_a_loss() -> None:
    records = [opp(i) for i in range(30)]
    calls = 0

    def deleting(page: PageRequest) -> tuple[list[Opportunity], int | None, bool, str | None]:
        nonlocal calls
        calls += 1
        if calls == 2:
            del records[5]  # deleted while the listing runs: the rest shift back by one
        chunk = records[page.offset : page.offset + page.size]
        return chunk, len(records), page.offset + page.size < len(records), None

    adapter = MemoryAdapter(deleting, MemoryPaging(), concurrency=1)
    got = await collect(adapter, page_size=10)  # no IncompleteListingError: 29 exist now
    # The record that shifted onto an already-read page was found by a second pass.
    assert {o.id for o in records} <= {o.id for o in got}
    assert len(adapter.requests) == 3 + 3


async def test_repeated_pages_stop_with_pagination_error() -> None:
    same = [opp(i) for i in range(10)]
    adapter = MemoryAdapter(lambda page: (same, None, True, None), MemoryPaging())
    with pytest.raises(PaginationError, match="no record not seen before"):
        await collect(adapter, page_size=10)
    assert len(adapter.requests) == 1 + 5  # at least 3 pages and 50 records of nothing new


async def test_a_huge_total_with_repeated_pages_stops_too() -> None:
    same = [opp(i) for i in range(10)]
    adapter = MemoryAdapter(lambda page: (same, 10**12, True, None), MemoryPaging())
    with pytest.raises(PaginationError):
        await collect(adapter, page_size=10)
    assert len(adapter.requests) < 20


async def test_empty_pages_that_say_more_follow_stop() -> None:
    adapter = MemoryAdapter(lambda page: ([], None, True, None), MemoryPaging())
    with pytest.raises(PaginationError):
        await collect(adapter, page_size=100)


async def test_a_cursor_that_changes_over_the_same_records_stops() -> None:
    same = [opp(i) for i in range(5)]
    counter = iter(range(10**6))
    adapter = MemoryAdapter(
        lambda page: (same, None, True, f"c{next(counter)}"), MemoryPaging(random_access=False)
    )
    with pytest.raises(PaginationError):
        await collect(adapter, page_size=5)
    assert len(adapter.requests) < 20


async def test_a_small_page_size_waits_longer_before_calling_it_no_progress() -> None:
    """Page size 1 over shuffled ties repeats records often; that is not a stuck server."""
    same = [opp(0)]
    adapter = MemoryAdapter(lambda page: (same, None, True, None), MemoryPaging())
    with pytest.raises(PaginationError):
        await collect(adapter, page_size=1)
    assert len(adapter.requests) == 1 + 50


def test_tie_groups_across_page_boundaries() -> None:
    a, b, c = T0, T0 + timedelta(1), T0 + timedelta(2)
    edges = [
        _PageEdges(offset=0, count=3, head=_Run(a, ["1"]), tail=_Run(b, ["2", "3"])),
        _PageEdges(offset=3, count=3, head=_Run(b, ["4", "2", "5"]), tail=_Run(b, ["4", "2", "5"])),
        _PageEdges(offset=6, count=3, head=_Run(b, ["6"]), tail=_Run(c, ["7", "8"])),
        _PageEdges(offset=9, count=1, head=_Run(c, ["9"]), tail=_Run(c, ["9"])),
    ]
    pager = Pager(MemoryAdapter(slicing([]), MemoryPaging()), MemoryPaging(), ListQuery())
    groups = list(pager._tie_groups(edges))
    assert [(g.key, g.start, g.size, g.found) for g in groups] == [
        (b, 1, 6, {"2", "3", "4", "5", "6"}),  # positions 1-6 hold b; "2" was read twice
        (c, 7, 3, {"7", "8", "9"}),
    ]


# --------------------------------------------------- every provider, a server ignoring paging


async def test_close_same_page_with_has_more_stops() -> None:
    body = {"data": [close_record(i) for i in range(100)], "has_more": True}
    with aioresponses() as mocked:
        mocked.get(CLOSE_LIST, status=200, body=json.dumps(body), repeat=True)
        async with CloseAdapter("k", max_retries=0) as close:
            with pytest.raises(PaginationError):
                await collect(close)
        assert sum(len(v) for v in mocked.requests.values()) <= 4


async def test_getraze_pages_without_a_page_field_stop() -> None:
    body = {
        "success": True,
        "data": [getraze_record(i) for i in range(2)],
        "pagination": {"per_page": 2, "has_next": True},
    }
    with aioresponses() as mocked:
        mocked.get(GETRAZE_LIST, status=200, body=json.dumps(body), repeat=True)
        async with GetrazeAdapter("k", max_retries=0) as getraze:
            with pytest.raises(PaginationError):
                await collect(getraze, page_size=2)
        assert sum(len(v) for v in mocked.requests.values()) <= 30


async def test_reevo_new_cursors_over_the_same_records_stop() -> None:
    counter = iter(range(10**6))

    def answer(url: Any, **kwargs: Any) -> Any:
        from aioresponses import CallbackResult

        body = {"data": [reevo_record(i) for i in range(3)], "next_cursor": f"c{next(counter)}"}
        return CallbackResult(status=200, body=json.dumps(body))

    with aioresponses() as mocked:
        mocked.post(REEVO_QUERY, callback=answer, repeat=True)
        async with ReevoAdapter("k", max_retries=0) as reevo:
            with pytest.raises(PaginationError):
                await collect(reevo, page_size=3)
        assert sum(len(v) for v in mocked.requests.values()) <= 30


CLOSE_LIST = __import__("re").compile(r"^https://api\.close\.com/api/v1/opportunity/\?.*$")
GETRAZE_LIST = __import__("re").compile(r"^https://app\.getraze\.com/external/v1/opportunities.*$")
REEVO_QUERY = "https://api.reevo.ai/api/v2/opportunity/_query"


def close_record(i: int) -> dict[str, Any]:
    stamp = (T0 + timedelta(minutes=i)).isoformat()
    return {"id": f"oppo_{i}", "date_created": stamp, "date_updated": stamp}


def getraze_record(i: int) -> dict[str, Any]:
    stamp = (T0 + timedelta(minutes=i)).isoformat()
    return {"id": f"ffffffff-0000-0000-0000-{i:012d}", "created_at": stamp, "updated_at": stamp}


def reevo_record(i: int) -> dict[str, Any]:
    stamp = (T0 + timedelta(minutes=i)).isoformat()
    return {"id": f"r{i}", "created_at": stamp, "updated_at": stamp, "attributes": {}}


# ------------------------------------------------------------- arguments, checked at the call

RESERVED = {"close": "_skip", "getraze": "page", "reevo": "cursor"}


@pytest.mark.parametrize("cls", [CloseAdapter, GetrazeAdapter, ReevoAdapter])
def test_every_argument_is_checked_at_the_call(cls: type[BaseAdapter]) -> None:
    adapter = cls("k")
    reserved: dict[str, Any] = {RESERVED[cls.provider]: 1}
    for listing in (adapter.list, adapter.pages):
        with pytest.raises(ValueError, match="managed by the adapter"):
            listing(**reserved)
        with pytest.raises(ValueError, match="limit"):
            listing(limit=-1)
        with pytest.raises(ValueError, match="timezone-aware"):
            listing(updated_since=datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="status"):
            listing(status="pending")
    hub = OpportunityHub([adapter])
    with pytest.raises(ValueError, match="managed by the adapter"):
        hub.list(**reserved)


async def test_list_is_an_async_generator_that_aclosing_accepts() -> None:
    adapter = MemoryAdapter(slicing([opp(i) for i in range(30)]), MemoryPaging())
    async with contextlib.aclosing(adapter.list(page_size=10)) as items:
        async for item in items:
            assert item.id == "o0000"
            break
    async with contextlib.aclosing(adapter.pages(page_size=10)) as pages:
        first = await anext(pages)
    assert len(first) == 10
    assert len(adapter.requests) <= 1 + adapter.concurrency


async def test_clone_has_the_same_settings_and_its_own_life() -> None:
    adapter = CloseAdapter("k_clone", base_url="http://127.0.0.1:9", page_size=7, concurrency=3)
    await adapter.aclose()
    clone = adapter.clone()
    assert clone is not adapter
    assert (clone.base_url, clone.concurrency) == (adapter.base_url, 3)
    assert clone.list_query().page_size == 7
    assert not clone._transport.closed  # the original is closed, the clone is not
    assert "k_clone" not in repr(clone)


async def test_a_record_shifted_onto_the_next_page_is_not_taken_for_a_tie() -> None:
    """The same record at the end of one page and the start of the next, with a total that
    the listing meets: a record moved (one was added or deleted), nothing to re-read."""
    records = [opp(i) for i in range(4)]
    pages = {0: records[0:2], 2: records[1:3], 4: records[3:4]}
    adapter = MemoryAdapter(
        lambda page: (pages[page.offset], 4, page.offset < 4, None), MemoryPaging()
    )
    got = await collect(adapter, page_size=2)
    assert [o.id for o in got] == [o.id for o in records]
    assert len(adapter.requests) == 3  # no re-read, no second pass
