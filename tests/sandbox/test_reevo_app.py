"""The Reevo emulator against Reevo's documentation."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from close_opps.sandbox import Sandbox

from ._support import Reply, call, load_fixture

EXAMPLE = load_fixture("reevo-read-one-example.json")["data"]
LIST_ATTRIBUTES = {"participant_user_id_list", "competitors_mentioned_other"}


async def _query(sb: Sandbox, http: aiohttp.ClientSession, body: Any) -> Reply:
    return await call(
        http,
        "POST",
        f"{sb.reevo.base_url}/opportunity/_query",
        headers=sb.reevo.auth_headers,
        json_body=body,
    )


async def _all(
    sb: Sandbox, http: aiohttp.ClientSession, limit: int = 7, **body: Any
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        reply = await _query(sb, http, {**body, "limit": limit, "cursor": cursor})
        assert reply.status == 200, reply.body
        page = reply.json()
        assert set(page) == {"data", "next_cursor"}
        records += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return records


def _check_attribute(name: str, attribute: Any, example: Any) -> None:
    assert isinstance(attribute, dict), name
    assert set(attribute) == {"value", "value_type"}, name
    assert attribute["value_type"] == example["value_type"], name
    value, sample = attribute["value"], example["value"]
    if value is not None and isinstance(sample, dict):
        keys = set(value)
        if attribute["value_type"] == "currency":
            assert keys == {"amount", "currency_code"}
            assert isinstance(value["amount"], str)
            Decimal(value["amount"])
        else:
            assert keys == set(sample), name
    elif value is not None:
        assert type(value) is type(sample), name


async def test_get_matches_the_documented_shape(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    record_id = sandbox.reevo.ids[0]
    reply = await call(
        http,
        "GET",
        f"{sandbox.reevo.base_url}/opportunity/{record_id}",
        headers=sandbox.reevo.auth_headers,
    )
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"data"}
    assert body["data"] == sandbox.reevo.record(record_id)


async def test_every_record_has_the_documented_attributes(sandbox: Sandbox) -> None:
    for record in sandbox.reevo.records:
        assert set(record) == set(EXAMPLE)
        assert record["record_type"] == "opportunity"
        attributes = record["attributes"]
        assert set(EXAMPLE["attributes"]) <= set(attributes)
        for name, example in EXAMPLE["attributes"].items():
            if name in LIST_ATTRIBUTES:
                assert isinstance(attributes[name], list)
                for item in attributes[name]:
                    _check_attribute(name, item, example[0])
            else:
                _check_attribute(name, attributes[name], example)
        assert isinstance(attributes["stage"]["value"]["closing_probability"], str)
        extra = {
            n: a["value_type"] for n, a in attributes.items() if n not in EXAMPLE["attributes"]
        }
        assert extra == {
            "health_score": "percent",
            "is_strategic": "boolean",
            "hq_location": "geo_point",
        }
    records = sandbox.reevo.records
    assert any(r["attributes"]["participant_user_id_list"] for r in records)
    assert any(not r["attributes"]["participant_user_id_list"] for r in records)
    assert {r["attributes"]["outcome"]["value"] for r in records} == {None, "won", "lost"}


async def test_cursors_page_through_everything_once(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    everything = await _all(sandbox, http)
    assert sorted(r["id"] for r in everything) == sorted(sandbox.reevo.ids)
    keys = [(r["created_at"], r["id"]) for r in everything]
    assert keys == sorted(keys)
    by_update = await _all(
        sandbox, http, limit=3, sort=[{"field": "updated_at", "direction": "desc"}]
    )
    assert sorted(r["id"] for r in by_update) == sorted(sandbox.reevo.ids)
    stamps = [r["updated_at"] for r in by_update]
    assert stamps == sorted(stamps, reverse=True)
    assert len(set(stamps)) < len(stamps), "ties cross page boundaries"
    won = await _all(
        sandbox, http, filters=[{"field": "outcome", "operator": "eq", "value": "won"}]
    )
    expected = {
        r["id"] for r in sandbox.reevo.records if r["attributes"]["outcome"]["value"] == "won"
    }
    assert [r["id"] for r in won] == sorted(
        expected, key=lambda i: (sandbox.reevo.record(i)["created_at"], i)
    )


async def test_limits(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    reply = await _query(sandbox, http, {})
    assert reply.status == 200 and len(reply.json()["data"]) == 50
    reply = await _query(sandbox, http, {"limit": 200})
    assert reply.status == 200 and reply.json()["next_cursor"] is None
    reply = await _query(sandbox, http, {"limit": 201})
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["body", "limit"]


async def test_bad_cursors(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    filters = [{"field": "status", "operator": "eq", "value": "open"}]
    first = (await _query(sandbox, http, {"filters": filters, "limit": 2})).json()
    cursor = first["next_cursor"]
    assert cursor
    ok = await _query(sandbox, http, {"filters": filters, "limit": 2, "cursor": cursor})
    assert ok.status == 200
    forged = base64.urlsafe_b64encode(json.dumps({"o": 2, "q": "0" * 16}).encode()).decode()
    for body in (
        {"filters": filters, "cursor": "not a cursor"},
        {"filters": filters, "cursor": forged},
        {"cursor": cursor},
        {
            "filters": filters,
            "sort": [{"field": "updated_at", "direction": "asc"}],
            "cursor": cursor,
        },
    ):
        reply = await _query(sandbox, http, body)
        assert reply.status == 400, body
        assert reply.json()["error"] == "invalid_cursor"
        assert isinstance(reply.json()["message"], str)


async def test_unknown_field_and_operator(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    reply = await _query(
        sandbox, http, {"filters": [{"field": "nope", "operator": "eq", "value": 1}]}
    )
    assert reply.status == 400 and reply.json()["error"] == "invalid_filter_field"
    reply = await _query(
        sandbox, http, {"filters": [{"field": "status", "operator": "like", "value": "x"}]}
    )
    assert reply.status == 400 and reply.json()["error"] == "invalid_filter_operator"
    reply = await _query(
        sandbox, http, {"filters": [{"field": "amount", "operator": "gt", "value": "lots"}]}
    )
    assert reply.status == 400 and reply.json()["error"] == "field_value_invalid"


def _attr(record: dict[str, Any], name: str) -> Any:
    return record["attributes"][name]["value"]


CASES: list[tuple[dict[str, Any], Any]] = [
    (
        {"field": "amount", "operator": "gt", "value": "50000"},
        lambda r: Decimal(_attr(r, "amount")["amount"]) > 50000,
    ),
    (
        {"field": "amount", "operator": "between", "value": [1000, "20000.50"]},
        lambda r: 1000 <= Decimal(_attr(r, "amount")["amount"]) <= Decimal("20000.50"),
    ),
    (
        {"field": "updated_at", "operator": "gte", "value": "2025-10-01T00:00:00+00:00"},
        lambda r: r["updated_at"] >= "2025-10-01T00:00:00Z",
    ),
    (
        {"field": "created_at", "operator": "lt", "value": "2025-06-01T00:00:00Z"},
        lambda r: r["created_at"] < "2025-06-01T00:00:00Z",
    ),
    (
        {"field": "stage", "operator": "in", "value": ["proposal", "negotiation"]},
        lambda r: _attr(r, "stage")["api_name"] in ("proposal", "negotiation"),
    ),
    (
        {"field": "stage", "operator": "not_in", "value": ["closed_won", "closed_lost"]},
        lambda r: _attr(r, "status") == "open",
    ),
    (
        {"field": "display_name", "operator": "contains", "value": "PILOT"},
        lambda r: "pilot" in _attr(r, "display_name").lower(),
    ),
    (
        {"field": "display_name", "operator": "starts_with", "value": "Globex"},
        lambda r: _attr(r, "display_name").startswith("Globex"),
    ),
    (
        {"field": "display_name", "operator": "ends_with", "value": "renewal"},
        lambda r: _attr(r, "display_name").endswith("Renewal"),
    ),
    ({"field": "closed_at", "operator": "exists"}, lambda r: _attr(r, "closed_at") is not None),
    ({"field": "closed_at", "operator": "not_exists"}, lambda r: _attr(r, "closed_at") is None),
    (
        {"field": "outcome", "operator": "ne", "value": "lost"},
        lambda r: _attr(r, "outcome") != "lost",
    ),
    (
        {"field": "is_strategic", "operator": "eq", "value": True},
        lambda r: _attr(r, "is_strategic"),
    ),
    (
        {"field": "health_score", "operator": "lte", "value": 30},
        lambda r: _attr(r, "health_score") <= 30,
    ),
    (
        {"field": "participant_user_id_list", "operator": "exists"},
        lambda r: bool(r["attributes"]["participant_user_id_list"]),
    ),
    (
        {"field": "competitors_mentioned_other", "operator": "eq", "value": "HubSpot"},
        lambda r: any(
            i["value"] == "HubSpot" for i in r["attributes"]["competitors_mentioned_other"]
        ),
    ),
]


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[c[0]["operator"] for c in CASES])
async def test_operators(
    sandbox: Sandbox, http: aiohttp.ClientSession, spec: dict[str, Any], expected: Any
) -> None:
    got = await _all(sandbox, http, limit=200, filters=[spec])
    want = {r["id"] for r in sandbox.reevo.records if expected(r)}
    assert {r["id"] for r in got} == want
    assert 0 < len(want) < len(sandbox.reevo.records), "the case should select something"


async def test_filters_are_anded(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    filters = [
        {"field": "status", "operator": "eq", "value": "open"},
        {"field": "amount", "operator": "gte", "value": 10000},
    ]
    got = {r["id"] for r in await _all(sandbox, http, filters=filters)}
    assert got == {
        r["id"]
        for r in sandbox.reevo.records
        if _attr(r, "status") == "open" and Decimal(_attr(r, "amount")["amount"]) >= 10000
    }


async def test_get_errors_and_auth(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    base = f"{sandbox.reevo.base_url}/opportunity"
    auth = sandbox.reevo.auth_headers
    missing = await call(http, "GET", f"{base}/00000000-0000-4000-8000-000000000000", headers=auth)
    assert missing.status == 404
    assert missing.json()["error"] == "record_not_found"
    assert isinstance(missing.json()["message"], str)
    not_uuid = await call(http, "GET", f"{base}/oppo_123", headers=auth)
    assert not_uuid.status == 422 and "detail" in not_uuid.json()
    no_key = await call(http, "GET", f"{base}/{sandbox.reevo.ids[0]}")
    wrong = await call(
        http, "GET", f"{base}/{sandbox.reevo.ids[0]}", headers={"Authorization": "Bearer x"}
    )
    assert no_key.status == wrong.status == 401
    assert set(no_key.json()) == set(wrong.json()) == {"detail"}
    by_header = await call(
        http, "GET", f"{base}/{sandbox.reevo.ids[0]}", headers={"X-Api-Key": sandbox.reevo.api_key}
    )
    assert by_header.status == 200
