"""sync() into SyncStore: first run, incremental runs, change detection, crash safety."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import close_opps
from close_opps import AuthenticationError, ServerError
from close_opps.adapters.base import BaseAdapter
from close_opps.hub import OpportunityHub
from close_opps.pgstore import PostgresStore
from close_opps.sandbox import Fault, Sandbox, VendorServer
from close_opps.serialize import opportunity_to_dict
from close_opps.sync import (
    SCHEMA_VERSION,
    TASK_PREFIX,
    SyncError,
    SyncReport,
    SyncStore,
    open_store,
    sync,
)
from tests.test_hub import FakeAdapter

VENDORS = ("close", "getraze", "reevo")
RECORDS = 120


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=9, records=RECORDS) as running:
        yield running


def adapter_for(sb: Sandbox, name: str, **options: Any) -> BaseAdapter:
    options = {"page_size": 20, "concurrency": 1, **options}
    return close_opps.connect(name, api_key=sb[name].api_key, base_url=sb[name].base_url, **options)


@pytest.fixture
async def hub(sb: Sandbox) -> AsyncIterator[OpportunityHub]:
    async with OpportunityHub([adapter_for(sb, name) for name in VENDORS]) as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SyncStore]:
    """The store on each backend: the same semantics on both."""
    url = (
        f"sqlite:///{tmp_path / 'opps.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    async with open_store(url) as opened:
        yield opened


def opened(store: SyncStore) -> bool:
    return store.is_open


async def keys(store: SyncStore) -> list[tuple[str, str]]:
    return [(row["provider"], row["id"]) for row in await store.rows()]


def older_ids(server: VendorServer, before: datetime, count: int) -> list[str]:
    """``count`` ids of records last updated before ``before``."""
    chosen = [i for i, d in zip(server.ids, server.deals, strict=True) if d.updated_at < before]
    assert len(chosen) >= count
    return chosen[:count]


# ----------------------------------------------------------------------------- store


async def test_store_schema_wal_and_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SyncStore(path) as store:
        assert opened(store)
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.count() == 0
        assert await store.watermark("close") is None
        assert await store.get("close", "x") is None
    assert not opened(store)
    async with SyncStore(str(path)) as again:  # reopening keeps the schema
        assert await again.schema_version() == SCHEMA_VERSION

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(opportunities)")}
        assert {
            "provider",
            "id",
            "name",
            "status",
            "status_label",
            "amount",
            "currency",
            "confidence",
            "owner_id",
            "owner_name",
            "company_id",
            "company_name",
            "created_at",
            "updated_at",
            "won_at",
            "lost_at",
            "closed_at",
            "expected_close_at",
            "record",
            "raw",
        } <= columns
        assert {row[1] for row in conn.execute("PRAGMA table_info(watermarks)")} >= {
            "connection",
            "updated_at",
        }
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    newer = SyncStore(path)
    with pytest.raises(RuntimeError, match="schema version is 99"):
        await newer.open()
    assert not opened(newer)


async def test_store_must_be_open(hub: OpportunityHub, tmp_path: Path) -> None:
    store = SyncStore(tmp_path / "closed.db")
    with pytest.raises(RuntimeError, match="not open"):
        await store.count()
    with pytest.raises(RuntimeError, match="not open"):
        await sync(hub, store)


# ------------------------------------------------------------------------- first run


async def test_first_run_inserts_everything(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    progress: list[tuple[str, int]] = []
    reports = await sync(
        hub, store, batch_size=50, on_progress=lambda p, n: progress.append((p, n))
    )

    assert list(reports) == list(VENDORS)
    for name in VENDORS:
        report = reports[name]
        newest = max([opp.updated_at async for opp in hub.adapters[name].list()])
        assert report == SyncReport(name, RECORDS, 0, 0, newest, full_resync=True)
        assert report.total == RECORDS
        assert await store.count(name) == len(sb[name].records) == RECORDS
        assert await store.watermark(name) == newest
        # batches of 50: progress 50, 100, 120
        assert [n for p, n in progress if p == name] == [50, 100, 120]
    stored = await keys(store)
    assert len(stored) == len(set(stored)) == 3 * RECORDS


async def test_rows_hold_columns_and_json(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    await sync(hub, store)
    listed = {opp.id: opp async for opp in hub.adapters["getraze"].list()}
    for row in await store.rows("getraze"):
        opp = listed[row["id"]]
        assert row["provider"] == "getraze"
        assert row["name"] == opp.name
        assert row["status"] == opp.status.value
        assert row["updated_at"] == opp.updated_at.astimezone(UTC).isoformat(
            timespec="microseconds"
        )
        assert row["record"] == opportunity_to_dict(opp, raw=False)
        assert row["raw"] == dict(opp.raw)
        assert "raw" not in row["record"]
        assert row["owner_name"] == (opp.owner.name if opp.owner else None)


async def test_amounts_are_stored_exactly(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    huge = Decimal("98765432109876.54")  # not representable as a float
    sb.getraze.update(sb.getraze.ids[0], amount=huge)
    await sync(hub, store)

    for name in VENDORS:
        for row in await store.rows(name):
            deal = sb[name].state.deal(row["id"])
            assert isinstance(row["amount"], str)
            assert Decimal(row["amount"]) == deal.amount
            assert row["record"]["amount"]["amount"] == row["amount"]
    assert (await store.get("getraze", sb.getraze.ids[0]) or {})["amount"] == str(huge)
    # trailing zeros as the vendor sent them: text, never a float
    assert any(row["amount"].endswith(".00") for row in await store.rows("getraze"))
    if isinstance(store, PostgresStore):  # the column is TEXT: PostgreSQL keeps it so
        return
    with sqlite3.connect(store.path) as conn:
        kinds = {
            kind for (kind,) in conn.execute("SELECT DISTINCT typeof(amount) FROM opportunities")
        }
    conn.close()
    assert kinds == {"text"}


# ------------------------------------------------------------------- incremental runs


async def test_second_run_changes_nothing_and_reads_only_changes(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    first = await sync(hub, store)
    before = await store.rows()
    sb.reset()  # forget the first run's requests

    second = await sync(hub, store)
    requests = {name: sb[name].request_count for name in VENDORS}

    for name in VENDORS:
        report = second[name]
        assert (report.inserted, report.updated, report.unchanged, report.deleted) == (0, 0, 0, 0)
        assert not report.full_resync
        assert report.watermark == first[name].watermark
    assert await store.rows() == before  # not one row rewritten
    # Close reads its event log: one query per action, nothing changed, nothing fetched
    assert requests["close"] == 3
    assert {r.path.rstrip("/").rsplit("/", 1)[-1] for r in sb.close.requests} == {"event"}
    # Getraze and Reevo reconcile: a full listing (20 per page), compared with the cursor
    # (Getraze re-reads the pages around records sharing a creation time: see listing.md)
    assert requests["reevo"] == RECORDS // 20
    assert requests["getraze"] >= RECORDS // 20


async def test_a_changed_record_is_updated(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    first = await sync(hub, store)
    before = await store.get("reevo", sb.reevo.ids[5])
    assert before is not None
    later: dict[str, datetime] = {}
    for name in VENDORS:
        watermark = first[name].watermark
        assert watermark is not None
        later[name] = watermark + timedelta(minutes=5)
    changed_close = sb.close.ids[3]
    sb.close.update(changed_close, amount=Decimal("4321.09"), updated_at=later["close"])
    changed_getraze = sb.getraze.ids[4]
    sb.getraze.touch(changed_getraze, later["getraze"])  # only the update time changes
    changed_reevo = sb.reevo.ids[5]
    sb.reevo.update(changed_reevo, title="Renamed deal", updated_at=later["reevo"])

    second = await sync(hub, store)

    for name in VENDORS:
        assert (second[name].inserted, second[name].updated) == (0, 1)
        assert second[name].watermark == later[name]
        assert await store.watermark(name) == later[name]
        assert await store.count(name) == RECORDS
    close_row = await store.get("close", changed_close)
    assert close_row is not None
    assert close_row["amount"] == "4321.09"
    getraze_row = await store.get("getraze", changed_getraze)
    assert getraze_row is not None
    assert datetime.fromisoformat(getraze_row["updated_at"]) == later["getraze"]
    reevo_row = await store.get("reevo", changed_reevo)
    assert reevo_row is not None
    assert "Renamed deal" in (reevo_row["name"] or "")
    assert reevo_row["record"]["name"] == reevo_row["name"] != before["name"]
    assert reevo_row["first_synced_at"] == before["first_synced_at"]
    assert reevo_row["synced_at"] >= before["synced_at"]
    assert reevo_row["content_hash"] != before["content_hash"]

    third = await sync(hub, store)
    assert all((r.inserted, r.updated) == (0, 0) for r in third.values())


async def test_a_record_sharing_the_watermark_timestamp_is_not_missed(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    first = await sync(hub, store)
    edited: dict[str, str] = {}
    for name in VENDORS:
        watermark = first[name].watermark
        assert watermark is not None
        (record_id,) = older_ids(sb[name], watermark - timedelta(seconds=5), 1)
        # edited in the CRM "at the same second" as the newest record already synced
        sb[name].update(record_id, amount=Decimal("1111.11"), updated_at=watermark)
        edited[name] = record_id

    second = await sync(hub, store, overlap=timedelta(0))  # even with no overlap at all

    for name in VENDORS:
        assert (second[name].inserted, second[name].updated) == (0, 1)
        assert second[name].watermark == first[name].watermark
        row = await store.get(name, edited[name])
        assert row is not None
        assert Decimal(row["amount"]) == Decimal("1111.11")


async def test_a_record_stamped_before_the_watermark_is_not_missed(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    """A record committed by the CRM after the run, stamped just before the watermark: the
    event log has it whatever its stamp (the old watermark listing needed an overlap)."""
    first = await sync(hub, store, providers=["close"])
    watermark = first["close"].watermark
    assert watermark is not None
    (record_id,) = older_ids(sb.close, watermark - timedelta(seconds=5), 1)
    sb.close.update(
        record_id, amount=Decimal("2222.22"), updated_at=watermark - timedelta(milliseconds=500)
    )

    again = await sync(hub, store, providers=["close"], overlap=timedelta(0))
    assert again["close"].updated == 1
    row = await store.get("close", record_id)
    assert row is not None
    assert row["amount"] == "2222.22"


async def test_forgetting_the_watermark_forces_a_full_read(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    await sync(hub, store, providers=["reevo"])
    await store.set_watermark("reevo", None)
    assert await store.watermark("reevo") is None
    assert await store.cursor("reevo") is None  # forgetting the watermark forgets the cursor
    again = await sync(hub, store, providers=["reevo"])
    assert again["reevo"] == SyncReport(
        "reevo", 0, 0, RECORDS, again["reevo"].watermark, full_resync=True
    )


# ---------------------------------------------------------------------- crash safety


async def test_a_run_killed_between_pages_loses_nothing(sb: Sandbox, store: SyncStore) -> None:
    adapters = [adapter_for(sb, name, max_retries=0) for name in VENDORS]
    async with OpportunityHub(adapters) as hub:
        sb.close.script(Fault.ok(), Fault.server_error(500))  # page 2 of Close fails

        with pytest.raises(SyncError) as caught:
            await sync(hub, store, batch_size=15)

        error = caught.value
        assert list(error.errors) == ["close"]
        assert type(error.errors["close"]) is ServerError
        assert str(error).splitlines() == [str(error.errors["close"])]
        assert str(error).startswith("close: HTTP 500")
        assert isinstance(error.__cause__, ServerError)
        # the other providers completed
        assert sorted(error.reports) == ["getraze", "reevo"]
        assert all(r.inserted == RECORDS for r in error.reports.values())
        # Close: page 1 committed (a batch of 15, and the 5 read before the failure), with
        # the first run's checkpoint; watermark untouched
        assert await store.count("close") == 20
        assert await store.watermark("close") is None
        assert await store.cursor_complete("close") is False

        sb.close.reset()
        resumed = await sync(hub, store, batch_size=15)

    report = resumed["close"]
    # resumed from the checkpoint: only the records created at its instant are read again
    assert report.inserted == RECORDS - 20
    assert 1 <= report.unchanged < 15
    assert report.full_resync
    # the listing starts at the checkpoint's creation time, on the server
    assert "date_created__gte" in sb.close.requests[0].query
    assert report.watermark is not None
    assert await store.cursor_complete("close") is True
    assert await store.count("close") == RECORDS
    stored = await keys(store)
    assert len(stored) == len(set(stored)) == 3 * RECORDS


async def test_an_incremental_run_killed_midway_keeps_the_old_cursor(
    sb: Sandbox, store: SyncStore
) -> None:
    async with OpportunityHub({"close": adapter_for(sb, "close", max_retries=0)}) as hub:
        await sync(hub, store)
        cursor = await store.cursor("close")
        touched = sb.close.ids[:50]
        for record_id in touched:
            sb.close.edit(record_id, confidence=1)
        # three event queries, then page 2 of the listing of the 50 changed records arrives
        # cut in half (a DecodeError)
        sb.close.script(
            Fault.ok(), Fault.ok(), Fault.ok(), Fault.ok(), Fault.malformed("truncated_json")
        )

        with pytest.raises(SyncError) as caught:
            await sync(hub, store)
        assert isinstance(caught.value.errors["close"], close_opps.DecodeError)
        assert await store.cursor("close") == cursor  # not moved by a partial run
        committed = {
            record_id
            for record_id in touched
            if (row := await store.get("close", record_id)) and row["confidence"] == 1
        }
        assert len(committed) == 20  # page 1 was kept

        resumed = await sync(hub, store)

    report = resumed["close"]
    # the old cursor reads the same events again: what page 1 brought is unchanged now
    assert (report.inserted, report.updated, report.unchanged) == (0, 30, 20)
    assert await store.count("close") == RECORDS
    for record_id in touched:
        row = await store.get("close", record_id)
        assert row is not None
        assert row["confidence"] == 1


async def test_a_cancelled_run_resumes_without_doubles(
    sb: Sandbox, hub: OpportunityHub, store: SyncStore
) -> None:
    first_batch = asyncio.Event()

    def progress(provider: str, done: int) -> None:
        first_batch.set()

    task = asyncio.create_task(
        sync(hub, store, providers=["getraze"], batch_size=10, on_progress=progress)
    )
    await first_batch.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith(TASK_PREFIX)] == []

    committed = await store.count("getraze")
    assert 10 <= committed < RECORDS
    assert await store.watermark("getraze") is None

    resumed = await sync(hub, store, providers=["getraze"], batch_size=10)
    assert resumed["getraze"].inserted == RECORDS - committed
    # resumed after the committed batch: only records created at its instant come again
    assert resumed["getraze"].unchanged < committed
    assert await store.count("getraze") == RECORDS
    stored = await keys(store)
    assert len(stored) == len(set(stored)) == RECORDS


# --------------------------------------------------------------- sources and failures


async def test_sources_adapters_mapping_and_provider_choice(sb: Sandbox, tmp_path: Path) -> None:
    close = adapter_for(sb, "close")
    reevo = adapter_for(sb, "reevo")
    async with SyncStore(":memory:") as store:
        reports = await sync([close, reevo], store, providers=["reevo"])
        assert list(reports) == ["reevo"]
        assert await store.count() == RECORDS

        renamed = await sync({"close-eu": close}, store)
        assert list(renamed) == ["close-eu"]
        assert await store.count("close-eu") == RECORDS
        assert await store.watermark("close-eu") is not None
        assert await store.watermark("close") is None

        with pytest.raises(ValueError, match="known providers: close, reevo"):
            await sync([close, reevo], store, providers=["getraze"])
        with pytest.raises(ValueError, match="batch_size"):
            await sync([close], store, batch_size=0)
        with pytest.raises(ValueError, match="overlap"):
            await sync([close], store, overlap=timedelta(seconds=-1))
    # sync() does not close adapters it was given
    assert [opp async for opp in close.list(limit=1)]
    await close.aclose()
    await reevo.aclose()


async def test_failures_are_logged_and_raised_after_the_others(
    sb: Sandbox, store: SyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="close_opps.sync")
    adapters = [
        adapter_for(sb, "close"),
        close_opps.connect("getraze", api_key="bad-getraze-key", base_url=sb.getraze.base_url),
        close_opps.connect("reevo", api_key="bad-reevo-key", base_url=sb.reevo.base_url),
    ]
    async with OpportunityHub(adapters) as hub:
        with pytest.raises(SyncError) as caught:
            await sync(hub, store)

    error = caught.value
    assert list(error.errors) == ["getraze", "reevo"]
    assert all(type(e) is AuthenticationError for e in error.errors.values())
    assert error.provider == "getraze, reevo"
    lines = str(error).splitlines()
    assert [line.split(":")[0] for line in lines] == ["getraze", "reevo"]
    assert error.reports["close"].inserted == RECORDS
    assert await store.count("close") == RECORDS
    assert await store.count() == RECORDS
    assert await store.watermarks() == {"close": error.reports["close"].watermark}

    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(
        lvl == logging.INFO and msg.startswith("synced close: 120 inserted")
        for lvl, msg in messages
    )
    failed = [msg for lvl, msg in messages if lvl == logging.WARNING]
    assert len(failed) == 2
    assert "getraze" in failed[0]
    assert "AuthenticationError" in failed[0]
    for secret in ("bad-getraze-key", "bad-reevo-key", sb.close.api_key):
        assert secret not in caplog.text


async def test_a_bug_is_raised_as_itself_and_stops_the_others(store: SyncStore) -> None:
    endless = FakeAdapter("endless")
    broken = FakeAdapter("broken", count=50, fail_with=ZeroDivisionError("bug"), fail_after=30)
    with pytest.raises(ZeroDivisionError):
        await sync({"endless": endless, "broken": broken}, store, batch_size=10)
    assert endless.finished
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith(TASK_PREFIX)] == []
    assert await store.watermark("broken") is None
    assert await store.watermark("endless") is None


async def test_sync_counts_duplicates_in_a_listing_once(store: SyncStore) -> None:
    """Idempotent upserts: the same records twice in one batch are stored once."""
    fake = FakeAdapter("fake", count=3)
    records = [fake.record(i) for i in (0, 1, 2, 0, 1)]
    counts = await store.upsert("fake", records)
    assert (counts.inserted, counts.updated, counts.unchanged) == (3, 0, 2)
    assert await store.count("fake") == 3
    assert Counter(row["id"] for row in await store.rows("fake")) == {
        "fake-0": 1,
        "fake-1": 1,
        "fake-2": 1,
    }
