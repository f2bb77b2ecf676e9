"""The Close emulator's event log (``GET /event/``) and the handle's create/edit/delete API."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from close_opps.sandbox import (
    ALLOWED_FILTERS,
    CloseOptions,
    ManualClock,
    Sandbox,
    VendorServer,
)

from ._support import Reply, call, load_fixture

START = datetime(2026, 7, 1, 9, tzinfo=UTC)
EXAMPLES = load_fixture("close-events-examples.json")
EXAMPLE_EVENT = EXAMPLES["event_list_responses"]["first_page"]["response"]["data"][0]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def close(clock: ManualClock) -> AsyncIterator[VendorServer]:
    async with Sandbox(
        seed=5, records=40, vendors=["close"], clock=clock, today=START.date()
    ) as sb:
        yield sb.close


async def _events(server: VendorServer, http: aiohttp.ClientSession, **params: str | int) -> Reply:
    return await call(
        http, "GET", f"{server.base_url}/event/", headers=server.auth_headers, params=params
    )


async def _all(server: VendorServer, http: aiohttp.ClientSession, **params: Any) -> list[Any]:
    """Every event of a query, following cursor_next with the same filters."""
    events: list[Any] = []
    cursor = ""
    while True:
        reply = await _events(server, http, **params, _cursor=cursor)
        assert reply.status == 200, reply.body
        body = reply.json()
        events += body["data"]
        if not body["cursor_next"]:
            return events
        cursor = body["cursor_next"]


def _lead_with(server: VendorServer, count: int) -> str:
    counts = Counter(str(r["lead_id"]) for r in server.records)
    return next(lead for lead, n in counts.most_common() if n >= count)


# ----------------------------------------------------------------------------- event shapes


async def test_the_log_starts_empty_and_records_each_change(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    assert (await _events(close, http)).json() == {
        "data": [],
        "cursor_next": None,
        "cursor_previous": None,
    }
    created = close.create(confidence=30)
    clock.advance(seconds=10)
    before = close.record(created["id"])
    edited = close.edit(created["id"], confidence=55)
    clock.advance(seconds=10)
    close.delete(created["id"])
    events = (await _events(close, http)).json()["data"]
    assert [(e["object_type"], e["action"]) for e in events] == [
        ("opportunity", "deleted"),
        ("opportunity", "updated"),
        ("opportunity", "created"),
    ]
    deleted, updated, made = events
    for event in events:
        assert set(event) == set(EXAMPLE_EVENT)
        assert event["object_id"] == created["id"]
        assert event["lead_id"] == created["lead_id"]
        assert event["id"].startswith("ev_") and len(event["id"]) == 25
        assert event["request_id"].startswith("req_")
        assert "+" not in event["date_updated"] and event["date_updated"].endswith("000")
    assert made["data"] == created and made["previous_data"] == {} == {}
    assert made["changed_fields"] == [] == deleted["changed_fields"]
    assert made["meta"] == {"request_method": "POST", "request_path": "/api/v1/opportunity/"}
    assert deleted["data"] is None
    assert deleted["previous_data"] == edited
    assert deleted["meta"]["request_method"] == "DELETE"
    assert updated["data"] == edited
    assert set(updated["changed_fields"]) >= {"confidence", "date_updated", "expected_value"}
    assert updated["changed_fields"] == sorted(updated["changed_fields"])
    assert updated["previous_data"] == {k: before[k] for k in updated["changed_fields"]}
    assert updated["date_updated"] == "2026-07-01T09:00:10.000000"
    assert edited["date_updated"] == "2026-07-01T09:00:10.000000+00:00"


async def test_quick_successive_updates_are_consolidated(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    seen: list[dict[str, Any]] = []
    close.events.listeners.append(seen.append)
    target = close.ids[3]
    original = close.record(target)
    close.edit(target, confidence=11)
    clock.advance(seconds=1)
    close.edit(target, note="second")
    clock.advance(seconds=1, milliseconds=500)
    close.edit(target, confidence=12)
    events = (await _events(close, http)).json()["data"]
    assert len(events) == 1
    event = events[0]
    assert event["date_created"] == "2026-07-01T09:00:00.000000"
    assert event["date_updated"] == "2026-07-01T09:00:02.500000"
    assert {"confidence", "note"} <= set(event["changed_fields"])
    # previous_data: the state before the first merged change
    assert event["previous_data"]["confidence"] == original["confidence"]
    assert event["previous_data"]["note"] == original["note"]
    assert event["data"] == close.record(target)
    # listeners saw it three times: same id, newer date_updated each time
    assert [e["id"] for e in seen] == [event["id"]] * 3
    assert [e["date_updated"] for e in seen] == sorted({e["date_updated"] for e in seen})
    # past the consolidation window: a new event
    clock.advance(seconds=5)
    close.edit(target, confidence=13)
    later = (await _events(close, http)).json()["data"]
    assert len(later) == 2 and later[1]["id"] == event["id"]
    assert later[0]["previous_data"]["confidence"] == 12


async def test_a_currency_only_change_logs_nothing(
    close: VendorServer, http: aiohttp.ClientSession
) -> None:
    target = close.ids[0]
    other = "EUR" if close.deal(target).currency != "EUR" else "USD"
    close.update(target, currency=other)
    assert (await _events(close, http)).json()["data"] == []
    close.update(target, confidence=(close.deal(target).confidence + 1) % 100)
    assert len((await _events(close, http)).json()["data"]) == 1


def _other_status(server: VendorServer, record_id: str) -> dict[str, Any]:
    deal = server.deal(record_id)
    if deal.status == "open":
        return {"status": "won", "stage": "won", "confidence": 100}
    return {"status": "open", "stage": "proposal", "confidence": 60, "closed_at": None}


async def test_a_status_change_also_logs_its_activity(
    close: VendorServer, http: aiohttp.ClientSession
) -> None:
    target = close.ids[2]
    before = close.record(target)
    after = close.edit(target, **_other_status(close, target))
    events = (await _events(close, http)).json()["data"]
    assert [(e["object_type"], e["action"]) for e in events] == [
        ("status_change.opportunity", "created"),
        ("opportunity", "updated"),
    ]
    activity = events[0]["data"]
    assert activity["opportunity_id"] == target == events[1]["object_id"]
    assert (activity["old_status_id"], activity["new_status_id"]) == (
        before["status_id"],
        after["status_id"],
    )
    assert events[0]["lead_id"] == after["lead_id"]
    # a client that asks for opportunity events only never sees it
    only = (await _events(close, http, object_type="opportunity", action="updated")).json()
    assert [e["object_id"] for e in only["data"]] == [target]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("activity.opportunity_status_change", 2), (None, 1)],
)
async def test_the_status_change_activity_has_either_name_or_none(
    http: aiohttp.ClientSession, kind: Any, expected: int
) -> None:
    options = CloseOptions(status_change_type=kind)
    async with Sandbox(seed=5, records=10, vendors=["close"], close=options) as sb:
        sb.close.edit(sb.close.ids[0], **_other_status(sb.close, sb.close.ids[0]))
        events = sb.close.events.events()
    assert len(events) == expected
    assert {e["object_type"] for e in events} == {"opportunity", *([kind] if kind else [])}


async def test_touch_update_and_remove_log_too(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    close.touch(close.ids[0], datetime(2026, 6, 1, tzinfo=UTC))
    clock.advance(seconds=10)
    close.remove(close.ids[1])
    actions = [e["action"] for e in (await _events(close, http)).json()["data"]]
    assert actions == ["deleted", "updated"]


# ----------------------------------------------------------------------------- paging


async def test_cursor_pages_newest_first_cover_every_event_once(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    for index in range(130):
        close.edit(close.ids[index % 40], confidence=index % 100)
        clock.advance(milliseconds=0 if index % 3 else 4000)  # some share a millisecond
    first = (await _events(close, http)).json()
    assert len(first["data"]) == 50 and first["cursor_previous"] is None
    events = await _all(close, http)
    assert len(events) == len({e["id"] for e in events}) == len(close.events)
    keys = [e["date_updated"] for e in events]
    assert keys == sorted(keys, reverse=True)
    assert [e["id"] for e in events] == [e["id"] for e in close.events.events()]
    # cursor_previous leads back to the newer events
    second = (await _events(close, http, _cursor=first["cursor_next"])).json()
    assert second["cursor_previous"]
    back = (await _events(close, http, _cursor=second["cursor_previous"])).json()
    assert [e["id"] for e in back["data"]] == [e["id"] for e in first["data"]]
    assert back["cursor_previous"] is None


async def test_limit_and_skip(close: VendorServer, http: aiohttp.ClientSession) -> None:
    for index in range(5):
        close.delete(close.ids[index])
    assert len((await _events(close, http, _limit=2)).json()["data"]) == 2
    over = await _events(close, http, _limit=51)
    assert over.status == 400
    assert "max_limit = 50" in over.json()["error"]
    skip = await _events(close, http, _skip=10)
    assert skip.status == 400 and "_cursor" in skip.json()["error"]


@pytest.mark.parametrize("names", sorted(sorted(c) for c in ALLOWED_FILTERS))
async def test_allowed_filter_combinations(
    close: VendorServer, http: aiohttp.ClientSession, names: list[str]
) -> None:
    close.delete(close.ids[0])
    event = close.events.events()[0]
    params = {name: event[name] for name in names}
    reply = await _events(close, http, **params, date_updated__gte="2026-07-01T00:00:00")
    assert reply.status == 200
    assert [e["id"] for e in reply.json()["data"]] == [event["id"]]


@pytest.mark.parametrize(
    "names",
    [
        ["object_type"],
        ["object_id"],
        ["action"],
        ["lead_id", "object_id"],
        ["request_id", "object_type"],
        ["object_type", "object_id", "action"],
    ],
)
async def test_other_filter_combinations_are_400(
    close: VendorServer, http: aiohttp.ClientSession, names: list[str]
) -> None:
    close.delete(close.ids[0])
    event = close.events.events()[0]
    reply = await _events(close, http, **{name: event[name] for name in names})
    assert reply.status == 400
    assert "Unsupported combination of filters" in reply.json()["error"]


async def test_filters_and_dates(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    kept = close.create()
    clock.advance(minutes=10)
    close.edit(kept["id"], confidence=1)
    clock.advance(minutes=10)
    close.delete(close.ids[0])
    deleted = await _all(close, http, object_type="opportunity", action="deleted")
    assert [e["action"] for e in deleted] == ["deleted"]
    one = await _all(close, http, object_type="opportunity", object_id=kept["id"])
    assert [e["action"] for e in one] == ["updated", "created"]  # the right order
    recent = await _all(close, http, date_updated__gte="2026-07-01T09:05:00")
    assert len(recent) == 2
    window = await _all(
        close, http, date_updated__gt="2026-07-01T09:00:00", date_updated__lt="2026-07-01T09:15"
    )
    assert [e["action"] for e in window] == ["updated"]
    bad = await _events(close, http, date_updated__gte="yesterday")
    assert bad.status == 400


async def test_cursors_keep_their_filters(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    for index in range(8):
        close.edit(close.ids[index], confidence=index)
        clock.advance(seconds=10)
    first = (await _events(close, http, _limit=3, date_updated__gte="2026-07-01T09:00:30")).json()
    assert len(first["data"]) == 3
    # date_updated may be left out: the cursor keeps the bound
    rest = (await _events(close, http, _limit=50, _cursor=first["cursor_next"])).json()
    assert len(first["data"]) + len(rest["data"]) == 5
    other = await _events(close, http, _cursor=first["cursor_next"], user_id="user_x")
    assert other.status == 400 and "cursor" in other.json()["error"]
    garbage = await _events(close, http, _cursor="not-a-cursor")
    assert garbage.status == 400


async def test_get_one_event(close: VendorServer, http: aiohttp.ClientSession) -> None:
    close.delete(close.ids[0])
    event = close.events.events()[0]
    for path in (f"/event/{event['id']}/", f"/event/{event['id']}"):
        reply = await call(http, "GET", close.base_url + path, headers=close.auth_headers)
        assert reply.status == 200 and reply.json() == event
    missing = await call(
        http, "GET", f"{close.base_url}/event/ev_nope/", headers=close.auth_headers
    )
    assert missing.status == 404 and "error" in missing.json()


# ----------------------------------------------------------------------------- retention, keys


async def test_events_are_kept_30_days(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    close.delete(close.ids[0])
    old = close.events.events()[0]
    clock.advance(days=20)
    close.delete(close.ids[0])
    assert len((await _events(close, http)).json()["data"]) == 2
    clock.advance(days=10, seconds=1)
    events = (await _events(close, http)).json()["data"]
    assert [e["id"] for e in events] != [] and old["id"] not in {e["id"] for e in events}
    gone = await call(
        http, "GET", f"{close.base_url}/event/{old['id']}/", headers=close.auth_headers
    )
    assert gone.status == 404


async def test_non_admin_keys_lose_data_after_an_hour(http: aiohttp.ClientSession) -> None:
    clock = ManualClock(START)
    options = CloseOptions(admin=False)
    async with Sandbox(seed=5, records=10, vendors=["close"], clock=clock, close=options) as sb:
        sb.close.edit(sb.close.ids[0], confidence=3)
        clock.advance(minutes=59)
        sb.close.delete(sb.close.ids[1])
        fresh = (await _events(sb.close, http)).json()["data"]
        assert fresh[1]["data"] is not None and fresh[1]["previous_data"]
        clock.advance(minutes=2)
        events = (await _events(sb.close, http)).json()["data"]
        assert events[0]["previous_data"] is not None  # under an hour old
        assert events[1]["data"] is None and events[1]["previous_data"] is None
        assert events[1]["object_id"] == sb.close.ids[0]  # the rest stays


async def test_deleted_data_can_be_an_empty_object(http: aiohttp.ClientSession) -> None:
    options = CloseOptions(deleted_data="empty")
    async with Sandbox(seed=5, records=10, vendors=["close"], close=options) as sb:
        sb.close.delete(sb.close.ids[0])
        assert (await _events(sb.close, http)).json()["data"][0]["data"] == {}


# ----------------------------------------------------------------------------- leads


async def test_deleting_a_lead_logs_a_deletion_per_opportunity(
    close: VendorServer, http: aiohttp.ClientSession
) -> None:
    lead = _lead_with(close, 3)
    doomed = [str(r["id"]) for r in close.records if r["lead_id"] == lead]
    company = close.deal(doomed[0]).company
    assert close.delete_lead(lead) == doomed
    assert not set(doomed) & set(close.ids)
    cascade = await _all(close, http, lead_id=lead, object_type="opportunity", action="deleted")
    assert sorted(e["object_id"] for e in cascade) == sorted(doomed)
    everything = await _all(close, http, lead_id=lead)
    assert len(everything) == len(doomed) + 1
    lead_event = everything[0]
    assert (lead_event["object_type"], lead_event["action"]) == ("lead", "deleted")
    assert lead_event["object_id"] == lead_event["lead_id"] == lead
    assert {e["request_id"] for e in everything} == {lead_event["request_id"]}
    assert all(e["data"] is None and e["previous_data"]["id"] for e in everything)
    reply = await call(http, "GET", f"{close.base_url}/opportunity/", headers=close.auth_headers)
    assert reply.json()["total_results"] == 40 - len(doomed)
    with pytest.raises(KeyError):
        close.delete_lead(lead)
    with pytest.raises(ValueError, match="deleted"):
        close.create(company=company)  # no record may point at a deleted lead


async def test_new_records_go_to_leads_that_were_not_deleted(close: VendorServer) -> None:
    deleted = close.lead_ids()
    for lead in deleted:
        close.delete_lead(lead)
    assert close.ids == []
    created = [close.create()["lead_id"] for _ in range(30)]
    assert not set(created) & set(deleted)


@pytest.mark.parametrize("form", ["update", "recreate"])
async def test_merging_leads(http: aiohttp.ClientSession, form: str) -> None:
    options = CloseOptions(merge_form=form)  # type: ignore[arg-type]
    async with Sandbox(seed=5, records=40, vendors=["close"], close=options) as sb:
        close = sb.close
        source = _lead_with(close, 2)
        destination = next(lead for lead in close.lead_ids() if lead != source)
        moving = [str(r["id"]) for r in close.records if r["lead_id"] == source]
        moved = close.merge_leads(source, destination)
        assert len(moved) == len(moving)
        assert {close.record(i)["lead_id"] for i in moved} == {destination}
        events = close.events.events()
        for event in events:
            assert event["meta"]["merge_source_lead_id"] == source
            assert event["meta"]["merge_destination_lead_id"] == destination
        kinds = Counter((e["object_type"], e["action"]) for e in events)
        assert kinds[("lead", "merged")] == kinds[("lead", "deleted")] == 1
        merged = next(e for e in events if e["action"] == "merged")
        assert merged["lead_id"] == destination == merged["data"]["id"]
        if form == "update":
            assert moved == moving
            assert kinds[("opportunity", "updated")] == len(moving)
            for event in (e for e in events if e["object_type"] == "opportunity"):
                assert "lead_id" in event["changed_fields"]
                assert event["previous_data"]["lead_id"] == source
                assert event["data"]["lead_id"] == destination
        else:
            assert not set(moved) & set(moving)
            assert kinds[("opportunity", "deleted")] == kinds[("opportunity", "created")]
            assert kinds[("opportunity", "deleted")] == len(moving)
        with pytest.raises(KeyError):
            close.merge_leads(source, destination)


# ----------------------------------------------------------------------------- other vendors


async def test_create_edit_delete_on_every_vendor(http: aiohttp.ClientSession) -> None:
    clock = ManualClock(START)
    async with Sandbox(seed=5, records=10, clock=clock) as sb:
        for name in ("getraze", "reevo"):
            server = sb[name]
            created = server.create()
            assert created["id"] in server.ids and len(server.ids) == 11
            now = clock.advance(hours=1)
            edited = server.edit(created["id"], confidence=42)
            assert server.deal(created["id"]).confidence == 42
            assert server.deal(created["id"]).updated_at == now
            assert edited["id"] == created["id"]
            server.delete(created["id"])
            assert created["id"] not in server.ids
            with pytest.raises(LookupError, match="no event log"):
                _ = server.events
            with pytest.raises(LookupError, match="Close feature"):
                server.delete_lead("lead_x")
        # a created Getraze record is served by get and by the list
        record = sb.getraze.create(title="Fresh deal")
        fetched = await call(
            http,
            "GET",
            f"{sb.getraze.base_url}/opportunities/{record['id']}",
            headers=sb.getraze.auth_headers,
        )
        assert fetched.json()["data"]["title"] == "Fresh deal"
        assert fetched.json()["data"]["created_at"] == "2026-07-01 11:00:00+00"
        with pytest.raises(ValueError, match="index"):
            sb.reevo.create(index=3)


async def test_changes_made_while_a_listing_runs(http: aiohttp.ClientSession) -> None:
    # on_request runs before the request is answered: the third page already sees the edit
    async with Sandbox(seed=5, records=30, vendors=["close"]) as sb:
        close = sb.close
        target = close.ids[-1]
        gone = close.ids[0]

        def edit_on_third_page(request: Any) -> None:
            if request.path.endswith("/opportunity/") and request.query.get("_skip") == "20":
                close.edit(target, note="edited mid-listing")
                close.delete(gone)

        close.on_request.append(edit_on_third_page)
        pages = []
        for skip in (0, 10, 20):
            reply = await call(
                http,
                "GET",
                f"{close.base_url}/opportunity/",
                headers=close.auth_headers,
                params={"_skip": skip, "_limit": 10, "_order_by": "date_created"},
            )
            pages.append(reply.json())
        assert pages[0]["total_results"] == pages[1]["total_results"] == 30
        assert pages[2]["total_results"] == 29
        assert [e["action"] for e in close.events.events()] == ["deleted", "updated"]
        assert close.requests[-1].query["_skip"] == "20"


async def test_date_values_in_every_form_clients_send(
    close: VendorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    close.delete(close.ids[0])
    clock.advance(hours=2)
    close.delete(close.ids[0])
    for value in (
        "2026-07-01T10:00:00",  # tap-closeio
        "2026-07-01T10:00:00.000000+0000",  # Airbyte's %Y-%m-%dT%H:%M:%S.%f%z
        "2026-07-01T10:00:00+00:00",
        "2026-07-01 10:00:00",
        "2026-07-01T12:00:00 02:00",  # an unencoded "+" arrives as a space
    ):
        reply = await _events(close, http, date_updated__gte=value)
        assert reply.status == 200, value
        assert len(reply.json()["data"]) == 1, value
    assert len((await _events(close, http, date_updated__gte="2026-07-01")).json()["data"]) == 2
    for cursor in ("e30", "eyJ2IjoxLCJkIjoib2xkZXIiLCJrIjpbIngiLDFdLCJmIjoiIiwiYiI6W119"):
        assert (await _events(close, http, _cursor=cursor)).status == 400


async def test_logged_events_are_published_to_webhook_subscriptions(
    close: VendorServer, clock: ManualClock
) -> None:
    from close_opps.sandbox.close_webhooks import WEBHOOKS

    hooks = close.app[WEBHOOKS]
    hooks.create(
        "http://127.0.0.1:9/hook",
        [
            {"object_type": "opportunity", "action": "updated"},
            {"object_type": "opportunity", "action": "deleted"},
        ],
    )
    published: list[str] = []
    original = hooks.dispatcher.publish

    def spy(event: Any) -> int:
        published.append(event["id"])
        return original(event)

    hooks.dispatcher.publish = spy  # type: ignore[method-assign]
    close.create()  # not subscribed to: published, delivered to no one
    close.edit(close.ids[0], confidence=1)
    clock.advance(seconds=1)
    close.edit(close.ids[0], confidence=2)  # consolidated: the same event again
    close.delete(close.ids[1])
    assert hooks.dispatcher.pending == 3
    ids = [e["id"] for e in reversed(close.events.events())]
    assert published == [ids[0], ids[1], ids[1], ids[2]]


def test_manual_clock() -> None:
    before = datetime.now(UTC)
    clock = ManualClock()  # starts now, as the seeded data is dated relative to today
    assert before <= clock() <= datetime.now(UTC)
    fixed = ManualClock(START)
    assert fixed.advance(minutes=2) == fixed() == START.replace(minute=2)
    with pytest.raises(ValueError, match="does not go back"):
        fixed.advance(seconds=-1)
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2026, 1, 1))
    fixed.set(START)
    assert fixed() == START
