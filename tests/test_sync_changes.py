"""sync keeps the copy true: deletions as tombstones, revival, the guard, the migration.

A copy kept by repeated ``sync`` runs equals the emulator's state after random creations,
edits and deletions between runs and while a run is going. Every test shares a ManualClock
between the sandbox and the feeds: no test sleeps.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from close_opps import BaseAdapter, IncompleteListingError, MassDeletionError, connect
from close_opps.paging import Pager
from close_opps.sandbox import GetrazeOptions, ManualClock, Sandbox
from close_opps.serialize import opportunity_to_dict
from close_opps.sync import SCHEMA_VERSION, SyncError, SyncStore, open_store, sync

START = datetime(2026, 7, 1, 9, tzinfo=UTC)
PROVIDERS = ["close", "getraze", "reevo"]
V1_FIXTURE = Path(__file__).parent / "fixtures" / "sync_v1.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The copy on each backend: the same semantics on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'copy.db'}"
    return str(request.getfixturevalue("postgres_url"))


@asynccontextmanager
async def _setup(
    provider: str, store_url: str, *, records: int = 40, page_size: int = 20
) -> AsyncIterator[tuple[Sandbox, ManualClock, BaseAdapter, SyncStore]]:
    clock = ManualClock(START)
    getraze = GetrazeOptions(tie_order="stable") if provider == "getraze" else None
    async with Sandbox(
        seed=3,
        records=records,
        vendors=[provider],  # type: ignore[list-item]
        clock=clock,
        today=START.date(),
        getraze=getraze,
    ) as sb:
        server = sb[provider]
        async with (
            connect(
                provider,
                api_key=server.api_key,
                base_url=server.base_url,
                page_size=page_size,
                max_retries=0,
            ) as adapter,
            open_store(store_url) as store,
        ):
            yield sb, clock, adapter, store


async def _truth(adapter: BaseAdapter) -> dict[str, Any]:
    """The emulator's records, as the store keeps their raw form (JSON-ready)."""
    return {opp.id: opportunity_to_dict(opp)["raw"] async for opp in adapter.list()}


async def _copy(store: SyncStore, provider: str) -> dict[str, Any]:
    return {row["id"]: row["raw"] for row in await store.rows(provider)}


def _mutate(sb: Sandbox, provider: str, rng: random.Random, clock: ManualClock) -> None:
    server = sb[provider]
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(20):
            try:
                server.create(confidence=rng.randint(0, 100))
                break
            except ValueError:  # Close: the generated deal's lead was deleted; draw again
                continue
    for record_id in rng.sample(server.ids, k=rng.randint(1, 4)):
        clock.advance(seconds=rng.randint(0, 5))
        server.edit(record_id, confidence=rng.randint(0, 100))
    for record_id in rng.sample(server.ids, k=rng.randint(0, 3)):
        server.delete(record_id)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_repeated_syncs_keep_the_copy_equal_to_the_emulator(
    provider: str, store_url: str
) -> None:
    rng = random.Random(f"sync:{provider}")
    async with _setup(provider, store_url) as (sb, clock, adapter, store):
        first = await sync([adapter], store, clock=clock)
        assert first[provider].full_resync
        assert await _copy(store, provider) == await _truth(adapter)
        deleted_total = 0
        for round_ in range(4):
            clock.advance(minutes=rng.randint(1, 90))
            before = set(sb[provider].ids)
            _mutate(sb, provider, rng, clock)
            if provider == "close" and round_ == 1:  # a lead with several opportunities
                counts: dict[str, int] = {}
                for record in sb.close.records:
                    counts[record["lead_id"]] = counts.get(record["lead_id"], 0) + 1
                lead = max(counts, key=lambda k: counts[k])
                assert counts[lead] >= 2
                sb.close.delete_lead(lead)
            gone = before - set(sb[provider].ids)
            report = (await sync([adapter], store, clock=clock, batch_size=7))[provider]
            assert report.deleted == len(gone)
            deleted_total += report.deleted
            assert await _copy(store, provider) == await _truth(adapter)
        # tombstones keep their rows and raw records
        everything = await store.rows(provider, include_deleted=True)
        tombstones = [row for row in everything if row["deleted_at"] is not None]
        assert len(tombstones) == deleted_total > 0
        assert all(row["raw"] for row in tombstones)
        assert await store.count(provider) == len(sb[provider].ids)
        assert await store.count(provider, include_deleted=True) == len(everything)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_changes_made_while_a_sync_runs_reach_the_copy_next_time(
    provider: str, store_url: str
) -> None:
    rng = random.Random(f"during:{provider}")
    async with _setup(provider, store_url, records=60) as (sb, clock, adapter, store):
        await sync([adapter], store, clock=clock)
        clock.advance(minutes=5)
        _mutate(sb, provider, rng, clock)
        calls = 0

        def meanwhile(name: str, done: int) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:  # after the first committed batch
                _mutate(sb, provider, rng, clock)

        await sync([adapter], store, clock=clock, batch_size=1, on_progress=meanwhile)
        assert calls >= 1
        clock.advance(minutes=1)
        await sync([adapter], store, clock=clock)
        assert await _copy(store, provider) == await _truth(adapter)


async def test_a_record_that_comes_back_is_revived(store_url: str) -> None:
    async with _setup("reevo", store_url) as (sb, clock, adapter, store):
        await sync([adapter], store, clock=clock)
        record_id = sb.reevo.ids[5]
        record = sb.reevo.deal(record_id)
        sb.reevo.delete(record_id)
        clock.advance(minutes=3)
        report = (await sync([adapter], store, clock=clock))["reevo"]
        assert report.deleted == 1
        row = await store.get("reevo", record_id)
        assert row is not None
        assert row["deleted_at"] is not None  # reconciliation cannot tell when: now
        assert row["raw"]["id"] == record_id  # the tombstone keeps the record
        # the CRM restores it (a new listing shows the same id again)
        sb.reevo.state.add(record)
        report = (await sync([adapter], store, clock=clock))["reevo"]
        assert (report.revived, report.updated, report.deleted) == (1, 1, 0)
        row = await store.get("reevo", record_id)
        assert row is not None
        assert row["deleted_at"] is None
        assert await _copy(store, "reevo") == await _truth(adapter)


async def test_close_deletions_carry_their_time(store_url: str) -> None:
    async with _setup("close", store_url) as (sb, clock, adapter, store):
        await sync([adapter], store, clock=clock)
        clock.advance(hours=2)
        record_id = sb.close.ids[0]
        sb.close.delete(record_id)
        clock.advance(minutes=1)
        await sync([adapter], store, clock=clock)
        row = await store.get("close", record_id)
        assert row is not None
        assert datetime.fromisoformat(row["deleted_at"]) == START + timedelta(hours=2)


async def test_a_cursor_older_than_thirty_days_falls_back(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _setup("close", store_url) as (sb, clock, adapter, store):
        await sync([adapter], store, clock=clock)
        clock.advance(days=10)
        gone = sb.close.ids[:2]
        for record_id in gone:
            sb.close.delete(record_id)
        clock.advance(days=35)
        report = (await sync([adapter], store, clock=clock))["close"]
        assert report.full_resync
        assert report.deleted == 2
        assert "older than the event log keeps" in caplog.text
        assert await _copy(store, "close") == await _truth(adapter)


async def test_an_incomplete_listing_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_rereads(self: Pager, *args: object) -> object:
        return
        yield

    clock = ManualClock(START)
    options = GetrazeOptions(records=60, tie_order="shuffled", tie_seed=2)
    async with (
        Sandbox(
            seed=3, vendors=["getraze"], getraze=options, clock=clock, today=START.date()
        ) as sb,
        connect(
            "getraze", api_key=sb.getraze.api_key, base_url=sb.getraze.base_url, page_size=20
        ) as getraze,
        SyncStore(tmp_path / "copy.db") as store,
    ):
        await sync([getraze], store, clock=clock)
        cursor = await store.cursor("getraze")
        sb.getraze.delete(sb.getraze.ids[0])
        sb.getraze.share_timestamp(START - timedelta(days=1))
        monkeypatch.setattr(Pager, "_reread_ties", no_rereads)
        monkeypatch.setattr("close_opps.paging.FULL_REREADS", 0)
        with pytest.raises(SyncError) as caught:
            await sync([getraze], store, clock=clock)
        assert isinstance(caught.value.errors["getraze"], IncompleteListingError)
        assert await store.count("getraze") == 60  # nothing deleted
        assert await store.cursor("getraze") == cursor


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_mass_deletion_guard_holds_in_sync(provider: str, store_url: str) -> None:
    async with _setup(provider, store_url, records=20) as (sb, clock, adapter, store):
        await sync([adapter], store, clock=clock)
        clock.advance(days=40)  # Close: a full reconciliation
        for record_id in sb[provider].ids[:12]:
            sb[provider].delete(record_id)
        with pytest.raises(SyncError) as caught:
            await sync([adapter], store, clock=clock)
        error = caught.value.errors[provider]
        assert isinstance(error, MassDeletionError)
        assert await store.count(provider) == 20
        report = (await sync([adapter], store, clock=clock, allow_mass_deletion=True))[provider]
        assert report.deleted == 12
        assert await _copy(store, provider) == await _truth(adapter)


async def test_a_store_filled_before_the_feed_is_reconciled_on_the_first_run(
    store_url: str,
) -> None:
    async with _setup("getraze", store_url, records=20) as (sb, clock, adapter, store):
        await store.upsert("getraze", [opp async for opp in adapter.list()])
        for record_id in sb.getraze.ids[:3]:
            sb.getraze.delete(record_id)
        report = (await sync([adapter], store, clock=clock))["getraze"]
        assert report.full_resync
        assert report.deleted == 3
        assert await _copy(store, "getraze") == await _truth(adapter)


# ------------------------------------------------------------------------ migration


def _v1_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(opportunities)")]
        assert "deleted_at" not in columns
        rows = conn.execute(
            f"SELECT {', '.join(columns)} FROM opportunities ORDER BY provider, id"  # noqa: S608
        ).fetchall()
    conn.close()
    return [tuple(zip(columns, row, strict=True)) for row in rows]


async def test_a_version_1_database_migrates_in_place_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    shutil.copy(V1_FIXTURE, path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        watermarks = conn.execute("SELECT * FROM watermarks ORDER BY provider").fetchall()
    conn.close()
    before = _v1_rows(path)
    assert len(before) == 36

    async with SyncStore(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION == 4
        rows = await store.rows(include_deleted=True)
        assert len(rows) == 36
        by_key = {(row["provider"], row["id"]): row for row in rows}
        for old in before:
            values = dict(old)
            row = by_key[(values["provider"], values["id"])]
            for column, value in values.items():
                expected = json.loads(value) if column in ("record", "raw") else value
                assert row[column] == expected, column
            assert row["deleted_at"] is None
            # version 2's columns are filled from the stored record
            assert row["custom_fields"] is not None
        assert {
            name: stamp.isoformat(timespec="microseconds")
            for name, stamp in (await store.watermarks()).items()
        } == {name: text for name, text, _ in watermarks}
        assert await store.cursor("close") is None


async def test_a_migrated_database_syncs(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    shutil.copy(V1_FIXTURE, path)
    async with (
        Sandbox(seed=7, records=10, vendors=["reevo"]) as sb,
        connect("reevo", api_key=sb.reevo.api_key, base_url=sb.reevo.base_url) as reevo,
        SyncStore(path) as store,
    ):
        stored = await store.live_ids("reevo")
        report = (await sync([reevo], store, allow_mass_deletion=True))["reevo"]
        assert report.full_resync
        live = set(sb.reevo.ids)
        # what the first feed run did not deliver is a tombstone now
        assert report.deleted == len(stored - live)
        assert await store.live_ids("reevo") == live
        assert await store.cursor_complete("reevo") is True


async def test_a_version_2_database_migrates_too(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    shutil.copy(V1_FIXTURE, path)
    from close_opps import sync as syncing

    with sqlite3.connect(path) as conn:  # take it to version 2 as the previous release did
        for statement in syncing._MIGRATIONS[2]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    async with SyncStore(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.count(include_deleted=True) == 36
