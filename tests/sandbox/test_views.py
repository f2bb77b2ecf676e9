"""The emulators' sorted views: built once, kept right (and cheap) across changes."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from close_opps.sandbox import GetrazeOptions, ManualClock, Sandbox, VendorServer
from close_opps.sandbox import _common as common

from ._support import call


async def _close_all(server: VendorServer, http: aiohttp.ClientSession, **params: Any) -> Any:
    records: list[Any] = []
    skip = 0
    while True:
        reply = await call(
            http,
            "GET",
            f"{server.base_url}/opportunity/",
            headers=server.auth_headers,
            params={"_skip": skip, "_limit": 25, **params},
        )
        body = reply.json()
        records += body["data"]
        if not body["has_more"]:
            return records, body
        skip += 25


async def _getraze_all(server: VendorServer, http: aiohttp.ClientSession, **params: Any) -> Any:
    records: list[Any] = []
    page = 1
    while True:
        reply = await call(
            http,
            "GET",
            f"{server.base_url}/opportunities",
            headers=server.auth_headers,
            params={"page": page, "limit": 25, **params},
        )
        body = reply.json()
        records += body["data"]
        if not body["pagination"]["has_next"]:
            return records
        page += 1


async def _reevo_all(server: VendorServer, http: aiohttp.ClientSession, query: Any) -> Any:
    records: list[Any] = []
    cursor = None
    while True:
        body = {**query, "limit": 25, **({"cursor": cursor} if cursor else {})}
        reply = await call(
            http,
            "POST",
            f"{server.base_url}/opportunity/_query",
            headers=server.auth_headers,
            json_body=body,
        )
        data = reply.json()
        records += data["data"]
        cursor = data["next_cursor"]
        if cursor is None:
            return records


def _mutate(server: VendorServer, rng: random.Random, clock: ManualClock) -> None:
    """A few random creations, edits (new update times, new amounts) and deletions."""
    for _ in range(6):
        clock.advance(minutes=rng.randint(0, 3))  # 0: edits sharing a timestamp
        roll = rng.random()
        if roll < 0.3:
            server.create(amount=Decimal(rng.randint(1, 900) * 100))
        elif roll < 0.8:
            server.edit(rng.choice(server.ids), amount=Decimal(rng.randint(1, 900) * 100))
        else:
            server.delete(rng.choice(server.ids))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the sorted views built."""
    count = [0]
    original = common.SortedView.__init__

    def counting(self: common.SortedView, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(common.SortedView, "__init__", counting)
    return count


async def test_close_listings_stay_right_across_changes(
    http: aiohttp.ClientSession, built: list[int]
) -> None:
    clock = ManualClock(datetime(2026, 7, 1, tzinfo=UTC))
    rng = random.Random(1)
    async with Sandbox(seed=2, records=80, vendors=["close"], clock=clock) as sb:
        server = sb.close
        for _ in range(5):
            listed, body = await _close_all(server, http, _order_by="-date_updated,value")
            expected = sorted(server.records, key=lambda r: r["id"])
            expected.sort(key=lambda r: r["value"])
            expected.sort(key=lambda r: r["date_updated"], reverse=True)
            assert [r["id"] for r in listed] == [r["id"] for r in expected]
            assert body["total_results"] == len(server.records)
            one_time = [r for r in server.records if r["value_period"] == "one_time"]
            assert body["total_value_one_time"] == sum(r["value"] for r in one_time)
            assert body["count_by_value_period"]["one_time"] == len(one_time)
            filtered, _ = await _close_all(server, http, value_period="monthly")
            assert sorted(r["id"] for r in filtered) == sorted(
                r["id"] for r in server.records if r["value_period"] == "monthly"
            )
            _mutate(server, rng, clock)
    assert built[0] == 2  # one per query shape: every change was applied in place


async def test_getraze_listings_stay_right_across_changes(
    http: aiohttp.ClientSession, built: list[int]
) -> None:
    clock = ManualClock(datetime(2026, 7, 1, tzinfo=UTC))
    rng = random.Random(2)
    options = GetrazeOptions(tie_order="stable")
    async with Sandbox(seed=2, records=80, vendors=["getraze"], clock=clock, getraze=options) as sb:
        server = sb.getraze
        for _ in range(5):
            listed = await _getraze_all(server, http, sort_by="updated_at", sort_order="desc")
            expected = sorted(server.records, key=lambda r: r["id"])
            expected.sort(key=lambda r: r["updated_at"], reverse=True)
            assert [r["id"] for r in listed] == [r["id"] for r in expected]
            by_value = await _getraze_all(server, http, sort_by="value", sort_order="asc")
            values = [Decimal(r["value"]) for r in by_value]
            assert values == sorted(values) and len(values) == len(server.records)
            _mutate(server, rng, clock)
    assert built[0] == 2


async def test_getraze_ties_are_drawn_from_the_current_records(
    http: aiohttp.ClientSession,
) -> None:
    clock = ManualClock(datetime(2026, 7, 1, tzinfo=UTC))
    async with Sandbox(seed=2, records=60, vendors=["getraze"], clock=clock) as sb:
        server = sb.getraze
        server.share_timestamp(clock.now)
        await _getraze_all(server, http)
        gone = server.ids[:10]
        for record_id in gone:
            server.delete(record_id)
        added = [server.create()["id"] for _ in range(5)]  # created at the tied instant
        listed = {r["id"] for r in await _getraze_all(server, http, limit=100)}
        assert listed == set(server.ids)
        assert not listed & set(gone) and set(added) <= listed


async def test_reevo_queries_stay_right_across_changes(
    http: aiohttp.ClientSession, built: list[int]
) -> None:
    clock = ManualClock(datetime(2026, 7, 1, tzinfo=UTC))
    rng = random.Random(3)
    query = {
        "sort": [{"field": "updated_at", "direction": "desc"}],
        "filters": [{"field": "updated_at", "operator": "gte", "value": "2025-06-01T00:00:00Z"}],
    }
    async with Sandbox(seed=2, records=80, vendors=["reevo"], clock=clock) as sb:
        server = sb.reevo
        for _ in range(5):
            listed = await _reevo_all(server, http, query)
            expected = sorted(
                (r for r in server.records if r["updated_at"] >= "2025-06-01T00:00:00Z"),
                key=lambda r: r["id"],
            )
            expected.sort(key=lambda r: r["updated_at"], reverse=True)
            assert [r["id"] for r in listed] == [r["id"] for r in expected]
            _mutate(server, rng, clock)
    assert built[0] == 1


async def test_a_bulk_seeding_rebuilds_the_views(
    http: aiohttp.ClientSession, built: list[int]
) -> None:
    async with Sandbox(seed=2, records=30, vendors=["getraze"]) as sb:
        await _getraze_all(sb.getraze, http)
        later = datetime(2027, 1, 1, tzinfo=UTC)
        sb.getraze.share_timestamp(later, sb.getraze.ids[:5], created=True)
        listed = await _getraze_all(sb.getraze, http, limit=100)
        assert {r["id"] for r in listed[:5]} == set(sb.getraze.ids[:5])  # newest created
        assert built[0] == 2
