"""adapter.changes(): a copy kept by the feed equals the emulator's state.

Every test runs against the emulators (real servers on 127.0.0.1) with a ManualClock shared by
the sandbox and the feed: no test sleeps.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from close_opps import (
    BaseAdapter,
    Change,
    ChangeKind,
    IncompleteListingError,
    InvalidCursorError,
    MassDeletionError,
    Opportunity,
    ServerError,
    connect,
)
from close_opps.feed import ChangeFeed, FeedState, decode_cursor, encode_cursor
from close_opps.paging import Pager
from close_opps.sandbox import CloseOptions, Fault, GetrazeOptions, ManualClock, Sandbox

START = datetime(2026, 7, 1, 9, tzinfo=UTC)
PROVIDERS = ["close", "getraze", "reevo"]


@asynccontextmanager
async def _setup(
    provider: str, *, records: int = 30, seed: int = 1, page_size: int = 50, **options: Any
) -> AsyncIterator[tuple[Sandbox, ManualClock, BaseAdapter]]:
    clock = ManualClock(START)
    getraze = GetrazeOptions(tie_order="stable", **options) if provider == "getraze" else None
    close = CloseOptions(**options) if provider == "close" and options else None
    async with Sandbox(
        seed=seed,
        records=records,
        vendors=[provider],  # type: ignore[list-item]
        clock=clock,
        today=START.date(),
        getraze=getraze,
        close=close,
    ) as sb:
        server = sb[provider]
        async with connect(
            provider,
            api_key=server.api_key,
            base_url=server.base_url,
            max_retries=0,
            page_size=page_size,
        ) as adapter:
            yield sb, clock, adapter


async def _drain(feed: ChangeFeed, on_change: Callable[[int], None] | None = None) -> list[Change]:
    got = []
    async for change in feed:
        got.append(change)
        if on_change is not None:
            on_change(len(got))
    return got


async def _drain_into(feed: ChangeFeed, got: list[Change]) -> None:
    async for change in feed:
        got.append(change)


def _apply(copy: dict[str, Opportunity], changes: list[Change]) -> None:
    for change in changes:
        if change.kind is ChangeKind.UPSERT:
            assert change.opportunity is not None
            copy[change.id] = change.opportunity
        else:
            copy.pop(change.id, None)


async def _truth(adapter: BaseAdapter) -> dict[str, Any]:
    return {opp.id: opp.raw async for opp in adapter.list()}


def _mutate(sb: Sandbox, provider: str, rng: random.Random, clock: ManualClock) -> None:
    """Random creations, edits and deletions (under half of the records)."""
    server = sb[provider]
    for _ in range(rng.randint(1, 3)):
        server.create(confidence=rng.randint(0, 100))
    ids = server.ids
    for record_id in rng.sample(ids, k=min(len(ids), rng.randint(1, 5))):
        clock.advance(seconds=rng.randint(0, 5))
        server.edit(record_id, confidence=rng.randint(0, 100))
    for record_id in rng.sample(server.ids, k=rng.randint(0, 3)):
        server.delete(record_id)
    if provider == "close" and rng.random() < 0.5:
        leads = server.lead_ids()
        source, destination = rng.sample(leads, 2)
        server.merge_leads(source, destination)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_copy_kept_by_the_feed_equals_the_emulator(provider: str) -> None:
    rng = random.Random(f"feed:{provider}")
    async with _setup(provider) as (sb, clock, adapter):
        copy: dict[str, Opportunity] = {}
        feed = adapter.changes(clock=clock)
        _apply(copy, await _drain(feed))
        assert feed.full_resync
        assert feed.cursor is not None
        cursor = feed.cursor
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)
        for _ in range(5):
            clock.advance(minutes=rng.randint(1, 120))
            _mutate(sb, provider, rng, clock)
            feed = adapter.changes(since=cursor, clock=clock)
            _apply(copy, await _drain(feed))
            assert not feed.full_resync
            assert feed.cursor is not None
            cursor = feed.cursor
            assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_edits_made_while_the_feed_runs_reach_the_copy_next_time(provider: str) -> None:
    rng = random.Random(f"during:{provider}")
    async with _setup(provider, records=60) as (sb, clock, adapter):
        copy: dict[str, Opportunity] = {}
        feed = adapter.changes(clock=clock)
        _apply(copy, await _drain(feed))
        cursor = feed.cursor
        clock.advance(minutes=10)
        _mutate(sb, provider, rng, clock)

        def meanwhile(count: int) -> None:
            if count == 1:  # the feed has started: change the CRM under it
                _mutate(sb, provider, rng, clock)

        feed = adapter.changes(since=cursor, clock=clock)
        _apply(copy, await _drain(feed, meanwhile))
        clock.advance(minutes=1)
        feed = adapter.changes(since=feed.cursor, clock=clock)
        _apply(copy, await _drain(feed))
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)


async def test_close_a_deleted_lead_deletes_each_of_its_opportunities() -> None:
    async with _setup("close", records=60) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        copy: dict[str, Opportunity] = {}
        _apply(copy, await _drain(feed))
        by_lead: dict[str, int] = {}
        for record in sb.close.records:
            by_lead[record["lead_id"]] = by_lead.get(record["lead_id"], 0) + 1
        lead = max(by_lead, key=lambda k: by_lead[k])
        assert by_lead[lead] >= 2
        clock.advance(minutes=3)
        deleted = sb.close.delete_lead(lead)
        before = sb.close.request_count
        feed = adapter.changes(since=feed.cursor, clock=clock)
        changes = await _drain(feed)
        assert sorted(c.id for c in changes if c.kind is ChangeKind.DELETE) == sorted(deleted)
        assert all(c.occurred_at is not None for c in changes)
        # three event queries, nothing to fetch: deletes need no record
        assert sb.close.request_count - before == 3
        _apply(copy, changes)
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)


@pytest.mark.parametrize("merge_form", ["update", "recreate"])
async def test_close_a_lead_merge_moves_opportunities(merge_form: str) -> None:
    async with _setup("close", records=40, merge_form=merge_form) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        copy: dict[str, Opportunity] = {}
        _apply(copy, await _drain(feed))
        source, destination = sb.close.lead_ids()[:2]
        clock.advance(minutes=2)
        sb.close.merge_leads(source, destination)
        feed = adapter.changes(since=feed.cursor, clock=clock)
        _apply(copy, await _drain(feed))
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)
        assert all(o.company is None or o.company.id != source for o in copy.values())


async def test_close_non_admin_events_without_data_still_give_current_records() -> None:
    async with _setup("close", admin=False) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        copy: dict[str, Opportunity] = {}
        _apply(copy, await _drain(feed))
        target = sb.close.ids[0]
        clock.advance(minutes=1)
        sb.close.edit(target, confidence=99)
        clock.advance(hours=3)  # the event's data is hidden from this key now
        feed = adapter.changes(since=feed.cursor, clock=clock)
        changes = await _drain(feed)
        assert [c.id for c in changes] == [target]
        _apply(copy, changes)
        assert copy[target].confidence == 99


async def test_close_many_upserts_are_fetched_by_one_listing() -> None:
    async with _setup("close", records=40) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        await _drain(feed)
        clock.advance(minutes=1)
        edited = sb.close.ids[:12]
        for record_id in edited:
            sb.close.edit(record_id, confidence=7)
        before = len(sb.close.requests)
        feed = adapter.changes(since=feed.cursor, clock=clock)
        changes = await _drain(feed)
        assert {c.id for c in changes} == set(edited)
        paths = [r.path for r in sb.close.requests[before:]]
        assert sum("/event/" in p for p in paths) == 3
        assert sum(p.rstrip("/").endswith("/opportunity") for p in paths) == 1
        assert len(paths) == 4  # no get per record


async def test_close_a_cursor_older_than_thirty_days_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _setup("close") as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        copy: dict[str, Opportunity] = {}
        _apply(copy, await _drain(feed))
        clock.advance(days=31)
        gone = sb.close.ids[:3]
        for record_id in gone:
            sb.close.delete(record_id)
        clock.advance(days=31)  # their deletion events have expired too
        before = len(sb.close.requests)
        feed = adapter.changes(since=feed.cursor, clock=clock)
        changes = await _drain(feed)
        assert feed.full_resync
        assert "older than the event log keeps" in caplog.text
        assert not any("/event/" in r.path for r in sb.close.requests[before:])
        assert sorted(c.id for c in changes if c.kind is ChangeKind.DELETE) == sorted(gone)
        _apply(copy, changes)
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)


async def test_close_a_key_that_cannot_read_the_log_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _setup("close") as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        copy: dict[str, Opportunity] = {}
        _apply(copy, await _drain(feed))
        clock.advance(minutes=5)
        sb.close.delete(sb.close.ids[0])
        sb.close.script(Fault.respond(400, {"error": "Event log is not available."}))
        feed = adapter.changes(since=feed.cursor, clock=clock)
        _apply(copy, await _drain(feed))
        assert feed.full_resync
        assert "cannot read the event log (HTTP 400)" in caplog.text
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_mass_deletion_guard_holds(provider: str) -> None:
    async with _setup(provider, records=20) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        await _drain(feed)
        cursor = feed.cursor
        assert cursor is not None
        clock.advance(days=40)  # Close: full reconciliation
        for record_id in sb[provider].ids[:11]:
            sb[provider].delete(record_id)
        feed = adapter.changes(since=cursor, clock=clock)
        got: list[Change] = []
        with pytest.raises(MassDeletionError) as info:
            await _drain_into(feed, got)
        assert (info.value.would_delete, info.value.known) == (11, 20)
        assert info.value.provider == provider
        assert not [c for c in got if c.kind is ChangeKind.DELETE]
        assert feed.cursor is None
        # a larger share, or an explicit allow, lets it through
        for kwargs in ({"max_deletion_share": 0.6}, {"allow_mass_deletion": True}):
            feed = adapter.changes(since=cursor, clock=clock, **kwargs)
            changes = await _drain(feed)
            assert len([c for c in changes if c.kind is ChangeKind.DELETE]) == 11


@pytest.mark.parametrize("provider", ["getraze", "reevo"])
async def test_an_empty_answer_never_wipes_a_copy(provider: str) -> None:
    async with _setup(provider, records=10) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        await _drain(feed)
        for record_id in sb[provider].ids:
            sb[provider].delete(record_id)
        with pytest.raises(MassDeletionError):
            await _drain(adapter.changes(since=feed.cursor, clock=clock))


async def test_an_incomplete_listing_deletes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_rereads(self: Pager, *args: object) -> object:
        return
        yield

    options = GetrazeOptions(records=60, tie_order="shuffled", tie_seed=2)
    clock = ManualClock(START)
    async with Sandbox(
        seed=3, vendors=["getraze"], getraze=options, clock=clock, today=START.date()
    ) as sb:
        server = sb.getraze
        async with connect(
            "getraze", api_key=server.api_key, base_url=server.base_url, page_size=20
        ) as g:
            feed = g.changes(clock=clock)
            await _drain(feed)
            server.delete(server.ids[0])
            server.share_timestamp(START - timedelta(days=1))  # ties in a fresh order
            monkeypatch.setattr(Pager, "_reread_ties", no_rereads)
            monkeypatch.setattr("close_opps.paging.FULL_REREADS", 0)
            got: list[Change] = []
            later = g.changes(since=feed.cursor, clock=clock)
            with pytest.raises(IncompleteListingError):
                await _drain_into(later, got)
            assert got  # upserts came, but no delete
            assert all(c.kind is ChangeKind.UPSERT for c in got)
            assert later.cursor is None


@pytest.mark.parametrize("provider", ["getraze", "reevo"])
async def test_a_listing_failing_midway_deletes_nothing(provider: str) -> None:
    async with _setup(provider, records=30, page_size=10) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        await _drain(feed)
        for record_id in sb[provider].ids[:5]:
            sb[provider].delete(record_id)
        sb[provider].script(Fault.ok(), Fault.server_error(500))
        got: list[Change] = []
        failing = adapter.changes(since=feed.cursor, clock=clock)
        with pytest.raises(ServerError):
            await _drain_into(failing, got)
        assert all(c.kind is ChangeKind.UPSERT for c in got)
        assert failing.cursor is None


@pytest.mark.parametrize("provider", ["getraze", "reevo"])
async def test_reconciliation_upserts_only_what_changed(provider: str) -> None:
    async with _setup(provider, records=30) as (sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        assert len(await _drain(feed)) == 30
        again = adapter.changes(since=feed.cursor, clock=clock)
        assert await _drain(again) == []
        assert not again.full_resync
        clock.advance(minutes=1)
        target = sb[provider].ids[3]
        sb[provider].edit(target, confidence=1)
        changes = await _drain(adapter.changes(since=again.cursor, clock=clock))
        assert [(c.kind, c.id) for c in changes] == [(ChangeKind.UPSERT, target)]


async def test_bad_and_foreign_cursors_are_clear_errors() -> None:
    async with _setup("getraze", records=5) as (_sb, clock, adapter):
        feed = adapter.changes(clock=clock)
        await _drain(feed)
        assert feed.cursor is not None
        for bad in ("", "hello", feed.cursor[:-8], feed.cursor[:10] + "x" + feed.cursor[11:]):
            with pytest.raises(InvalidCursorError, match="invalid change cursor"):
                adapter.changes(since=bad)
        foreign = encode_cursor(FeedState(provider="close", known={"oppo_1": None}))
        with pytest.raises(InvalidCursorError, match="issued by the 'close' feed"):
            adapter.changes(since=foreign)
        with pytest.raises(InvalidCursorError, match="newer release"):
            adapter.changes(since="coc2.abc")
        with pytest.raises(ValueError):
            adapter.changes(max_deletion_share=1.5)


def test_cursor_round_trip_and_size() -> None:
    import uuid as uuid_module

    rng = random.Random(1)
    ids = [str(uuid_module.UUID(int=rng.getrandbits(128), version=4)) for _ in range(10_000)]
    state = FeedState(provider="reevo", known={i: rng.getrandbits(32) for i in ids})
    text = encode_cursor(state)
    assert decode_cursor(text, provider="reevo") == state
    assert len(text) < 280_000  # docs/changes.md: about 27 bytes per record
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    close_ids = ["oppo_" + "".join(rng.choices(alphabet, k=43)) for _ in range(10_000)]
    checkpoint = datetime(2026, 1, 1, tzinfo=UTC)
    close_state = FeedState(provider="close", checkpoint=checkpoint, known=dict.fromkeys(close_ids))
    close_text = encode_cursor(close_state)
    assert decode_cursor(close_text, provider="close") == close_state
    assert len(close_text) < 450_000


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_interrupted_first_run_resumes_from_its_checkpoint(provider: str) -> None:
    async with _setup(provider, records=60, page_size=10) as (sb, clock, adapter):
        server = sb[provider]
        copy: dict[str, Opportunity] = {}
        feed = adapter.changes(clock=clock)
        assert feed.checkpoint() is None  # nothing delivered yet
        applied: list[Change] = []
        async for change in feed:
            applied.append(change)
            if len(applied) == 25:
                break
        _apply(copy, applied)
        checkpoint = feed.checkpoint()
        await feed.aclose()
        assert checkpoint is not None
        assert feed.cursor is None
        # the CRM changes while the run is stopped: one delivered record is deleted
        clock.advance(minutes=2)
        server.delete(applied[0].id)
        server.edit(applied[1].id, confidence=3)
        server.create(confidence=4)
        before = len(server.requests)
        resumed = adapter.changes(since=checkpoint, clock=clock)
        rest = await _drain(resumed)
        assert resumed.full_resync
        assert resumed.cursor is not None
        assert all(c.kind is ChangeKind.UPSERT for c in rest)
        assert len(rest) < 60 - 25 + 5  # the rest, and records sharing the creation time
        if provider != "getraze":  # a server-side creation bound: fewer pages
            assert len(server.requests) - before <= 5
        _apply(copy, rest)
        clock.advance(minutes=1)
        after = adapter.changes(since=resumed.cursor, clock=clock)
        _apply(copy, await _drain(after))
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)


async def test_a_checkpoint_of_another_run_is_none() -> None:
    async with _setup("reevo", records=10) as (_sb, clock, adapter):
        first = adapter.changes(clock=clock)
        await _drain(first)
        assert first.checkpoint() == first.cursor
        later = adapter.changes(since=first.cursor, clock=clock)
        async for _change in later:
            pass
        assert later.checkpoint() == later.cursor
        fresh = adapter.changes(since=first.cursor, clock=clock)
        assert fresh.checkpoint() is None  # an incremental run restarts from its own cursor


@pytest.mark.parametrize("provider", ["getraze", "reevo"])
async def test_a_deletion_during_the_listing_deletes_no_live_record(provider: str) -> None:
    """A record deleted while the listing pages shifts the later ones back by one: the one
    that crosses the page boundary is not listed, yet it is alive, and no delete says
    otherwise."""
    async with _setup(provider, records=60, page_size=10) as (sb, clock, adapter):
        copy: dict[str, Opportunity] = {}
        feed = adapter.changes(clock=clock)
        _apply(copy, await _drain(feed))
        server = sb[provider]
        first_page = [opp.id async for opp in adapter.list(limit=10)]

        def meanwhile(count: int) -> None:
            if count == 1:  # page 1 has been read: delete one of its records
                server.delete(first_page[3])

        clock.advance(minutes=1)
        server.edit(first_page[0], confidence=5)  # so that the run yields early
        run = adapter.changes(since=feed.cursor, clock=clock)
        changes = await _drain(run, meanwhile)
        # the deleted record had been listed before it went: the next run deletes it
        assert [c for c in changes if c.kind is ChangeKind.DELETE] == []
        _apply(copy, changes)
        assert set(copy) == {*server.ids, first_page[3]}
        later = await _drain(adapter.changes(since=run.cursor, clock=clock))
        # (and the record a get confirmed is upserted once more, as listed)
        assert [c.id for c in later if c.kind is ChangeKind.DELETE] == [first_page[3]]
        _apply(copy, later)
        assert {i: o.raw for i, o in copy.items()} == await _truth(adapter)
