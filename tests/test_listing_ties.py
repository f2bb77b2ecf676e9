"""Ties: a server that orders records sharing a sort key afresh on every request.

Getraze's own server sorts on one timestamp with no tie-breaker and pages by offset, so the
records sharing it move between pages from one request to the next (see the vendor notes).
A listing yields every record exactly once, or raises IncompleteListingError: never fewer
in silence.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from close_opps import GetrazeAdapter, IncompleteListingError, Opportunity
from close_opps.paging import Pager
from close_opps.sandbox import GetrazeOptions, RateLimitPolicy, Sandbox, VendorServer
from close_opps.sync import SyncError, SyncStore, sync

RECORDS = 300
TIE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: Both directions over every page size; the updated_at orders over a spread of sizes.
SWEEP = [(order, size) for order in (None, "-created_at") for size in range(1, 101)] + [
    (order, size)
    for order in ("updated_at", "-updated_at")
    for size in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 100)
]


def _sandbox(tie_seed: int = 1) -> Sandbox:
    options = GetrazeOptions(
        records=RECORDS, tie_seed=tie_seed, rate_limit=RateLimitPolicy(limit=10**9, window=3600.0)
    )
    return Sandbox(seed=3, vendors=["getraze"], getraze=options)


def _adapter(server: VendorServer) -> GetrazeAdapter:
    return GetrazeAdapter(server.api_key, base_url=server.base_url, max_retries=0)


async def _list(adapter: GetrazeAdapter, **arguments: object) -> list[Opportunity]:
    return [o async for o in adapter.list(**arguments)]  # type: ignore[arg-type]


async def test_every_order_and_page_size_yields_each_record_once_or_raises() -> None:
    outcomes: Counter[str] = Counter()
    async with _sandbox() as sb:
        sb.getraze.share_timestamp(TIE)
        expected = set(sb.getraze.ids)
        async with _adapter(sb.getraze) as getraze:
            for order, page_size in SWEEP:
                before = sb.getraze.request_count
                try:
                    got = await _list(getraze, order_by=order, page_size=page_size)
                except IncompleteListingError as exc:
                    incomplete = exc
                    assert (incomplete.expected, incomplete.provider) == (RECORDS, "getraze")
                    assert incomplete.received < incomplete.expected
                    outcomes["incomplete (raised)"] += 1
                    continue
                finally:
                    pages = -(-RECORDS // page_size)
                    outcomes["requests"] += sb.getraze.request_count - before
                    outcomes["requests of one read"] += pages
                ids = [o.id for o in got]
                assert len(ids) == len(set(ids)), (order, page_size)
                assert set(ids) == expected, (order, page_size)
                outcomes["complete"] += 1
    print(dict(outcomes))  # the figures quoted in the closing note (pytest -s)
    assert outcomes["complete"] + outcomes["incomplete (raised)"] == len(SWEEP)
    # Re-reading finds what one read of each page misses: nearly every listing completes.
    assert outcomes["complete"] >= len(SWEEP) * 0.95


async def test_incremental_listing_is_exact_under_ties() -> None:
    since = datetime(2026, 2, 1, tzinfo=UTC)
    async with _sandbox(tie_seed=5) as sb:
        half = sb.getraze.ids[: RECORDS // 2]
        sb.getraze.share_timestamp(TIE, half)  # 150 records share one updated_at >= since
        async with _adapter(sb.getraze) as getraze:
            everything = await _list(getraze)
            wanted = {o.id for o in everything if o.updated_at >= since}
            for page_size in (1, 7, 20, 50, 100):
                got = await _list(getraze, updated_since=since, page_size=page_size)
                ids = [o.id for o in got]
                assert len(ids) == len(set(ids))
                assert set(ids) == wanted, page_size


async def test_one_read_of_each_page_loses_records_and_the_accounting_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With re-reading turned off, the same listing raises instead of ending short."""

    async def no_rereads(self: Pager, *args: object) -> object:
        return
        yield

    monkeypatch.setattr(Pager, "_reread_ties", no_rereads)
    monkeypatch.setattr("close_opps.paging.FULL_REREADS", 0)
    async with _sandbox(tie_seed=2) as sb:
        sb.getraze.share_timestamp(TIE)
        async with _adapter(sb.getraze) as getraze:
            yielded: list[Opportunity] = []

            async def consume() -> None:
                async for opp in getraze.list(page_size=20):
                    yielded.append(opp)

            with pytest.raises(IncompleteListingError) as info:
                await consume()
    assert info.value.expected == RECORDS
    assert info.value.received == len(yielded) < RECORDS  # what was found was yielded first


async def test_stable_ties_need_no_rereads() -> None:
    options = GetrazeOptions(records=RECORDS, tie_order="stable")
    async with Sandbox(seed=3, vendors=["getraze"], getraze=options) as sb:
        sb.getraze.share_timestamp(TIE)
        async with _adapter(sb.getraze) as getraze:
            got = await _list(getraze, page_size=7)
        assert len({o.id for o in got}) == RECORDS
        assert sb.getraze.request_count == -(-RECORDS // 7)


async def test_rereads_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with _sandbox(tie_seed=4) as sb:
        sb.getraze.share_timestamp(TIE)
        async with _adapter(sb.getraze) as getraze:
            with caplog.at_level(logging.INFO, logger="close_opps.paging"):
                got = await _list(getraze, page_size=40)
    assert len(got) == RECORDS
    assert "share a sort key across page boundaries" in caplog.text


async def test_sync_never_moves_a_watermark_after_an_incomplete_listing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def no_rereads(self: Pager, *args: object) -> object:
        return
        yield

    monkeypatch.setattr(Pager, "_reread_ties", no_rereads)
    monkeypatch.setattr("close_opps.paging.FULL_REREADS", 0)
    async with _sandbox(tie_seed=2) as sb, SyncStore(tmp_path / "copy.db") as store:
        sb.getraze.share_timestamp(TIE)
        async with _adapter(sb.getraze) as getraze:
            with pytest.raises(SyncError) as info:
                await sync([getraze], store, batch_size=20)
        assert isinstance(info.value.errors["getraze"], IncompleteListingError)
        assert await store.watermark("getraze") is None  # the next run reads it all again
        assert 0 < await store.count("getraze") < RECORDS  # what was found is kept
