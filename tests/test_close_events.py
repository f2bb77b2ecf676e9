"""Close's event log, parsed purely: the vendor's example payloads and the feed's reading."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from close_opps import ChangeKind, DecodeError
from close_opps.adapters.close import (
    CloseEvent,
    event_change_kind,
    latest_changes,
    parse_event_page,
)

#: The vendor's examples, kept verbatim beside the sandbox's recordings (one copy).
EXAMPLES = json.loads(
    (Path(__file__).parent / "sandbox" / "fixtures" / "close-events-examples.json").read_text(
        encoding="utf-8"
    )
)
T = datetime(2024, 6, 14, 5, tzinfo=UTC)


def _event(**fields: Any) -> CloseEvent:
    values: dict[str, Any] = {
        "id": "ev_1",
        "date_updated": T,
        "object_type": "opportunity",
        "object_id": "oppo_1",
        "action": "updated",
    }
    values.update(fields)
    return CloseEvent(**values)


def test_the_documented_first_page_parses() -> None:
    body = EXAMPLES["event_list_responses"]["first_page"]["response"]
    page = parse_event_page(body)
    assert len(page.events) == len(body["data"])
    assert page.cursor_next == body["cursor_next"]
    first = page.events[0]
    assert first.action == "deleted"
    assert first.data is None
    assert first.date_updated == datetime(2024, 6, 14, 5, 25, 0, 310000, tzinfo=UTC)


def test_the_last_page_has_no_next_cursor() -> None:
    page = parse_event_page(EXAMPLES["event_list_responses"]["last_page"]["response"])
    assert page.events == ()
    assert page.cursor_next is None


@pytest.mark.parametrize("name", sorted(EXAMPLES["single_events"]))
def test_every_single_event_example_parses(name: str) -> None:
    raw = EXAMPLES["single_events"][name]["event"]
    (event,) = parse_event_page({"data": [raw], "cursor_next": None}).events
    assert event.object_id == raw["object_id"]
    assert event_change_kind(event) is (
        ChangeKind.DELETE if raw["action"] == "deleted" else ChangeKind.UPSERT
    )
    if name == "opportunity_deleted_data_empty_object":
        assert event.data == {}


def test_a_lead_deletion_cascade_deletes_each_opportunity() -> None:
    raw = EXAMPLES["lead_deletion_cascade"]["events_newest_first"]
    page = parse_event_page({"data": raw, "cursor_next": None})
    latest = latest_changes(page.events)
    expected = {e["object_id"] for e in raw if e["object_type"] == "opportunity"}
    assert set(latest) == expected
    assert {kind for kind, _ in latest.values()} == {ChangeKind.DELETE}


def test_a_lead_merge_moves_opportunities_as_upserts() -> None:
    raw = EXAMPLES["lead_merge"]["events_newest_first"]
    latest = latest_changes(parse_event_page({"data": raw, "cursor_next": None}).events)
    moved = [e["object_id"] for e in raw if e["object_type"] == "opportunity"]
    assert moved
    assert all(latest[i][0] is ChangeKind.UPSERT for i in moved)
    assert all(i.startswith("oppo_") for i in latest)  # lead events are not opportunities


def test_a_consolidated_event_keeps_its_newest_form() -> None:
    older = _event(id="ev_a", action="created", date_updated=T)
    newer = attrs.evolve(older, date_updated=T + timedelta(seconds=2))
    deleted = _event(id="ev_b", action="deleted", date_updated=T + timedelta(seconds=1))
    # ev_a consolidated after ev_b: the record's latest change is the upsert
    latest = latest_changes([deleted, older, newer])
    assert latest == {"oppo_1": (ChangeKind.UPSERT, T + timedelta(seconds=2))}
    # without the consolidation, the deletion is the latest
    assert latest_changes([older, deleted])["oppo_1"][0] is ChangeKind.DELETE


def test_a_deletion_wins_a_tie_and_results_are_oldest_first() -> None:
    created = _event(id="ev_a", action="created")
    deleted = _event(id="ev_b", action="deleted")
    other = _event(id="ev_c", object_id="oppo_0", date_updated=T + timedelta(seconds=5))
    earlier = _event(id="ev_d", object_id="oppo_9", date_updated=T - timedelta(seconds=5))
    latest = latest_changes([deleted, created, other, earlier])
    assert latest["oppo_1"] == (ChangeKind.DELETE, T)
    assert list(latest) == ["oppo_9", "oppo_1", "oppo_0"]


def test_events_of_other_objects_mean_nothing() -> None:
    assert event_change_kind(_event(object_type="lead", action="deleted")) is None
    assert event_change_kind(_event(object_type="status_change.opportunity")) is None


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], "$"),
        ({"data": None}, "$.data"),
        ({"data": [], "cursor_next": 5}, "$.cursor_next"),
        ({"data": [{"id": "ev_1"}]}, "$.data[0]"),
        (
            {
                "data": [
                    {
                        "id": "ev_1",
                        "date_updated": "yesterday",
                        "object_type": "opportunity",
                        "object_id": "oppo_1",
                        "action": "updated",
                    }
                ]
            },
            "$.data[0].date_updated",
        ),
    ],
)
def test_malformed_pages_are_decode_errors(body: Any, path: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_event_page(body)
    assert info.value.provider == "close"
    assert (info.value.path or "").startswith(path)
