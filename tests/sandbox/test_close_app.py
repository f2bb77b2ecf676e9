"""The Close emulator against Close's own documentation."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest

from close_opps.sandbox import CloseOptions, Fault, RateLimitPolicy, Sandbox

from ._support import call, load_fixture

EXAMPLE = load_fixture("close-list-example.json")
EXAMPLE_KEYS = set(EXAMPLE["data"][0])
RATE_LIMIT = re.compile(r"^limit=(\d+), remaining=(\d+), reset=(\d+(\.\d+)?)$")
#: Optional properties of the Opportunity schema in close-retrieve-opportunity.md.
SCHEMA_OPTIONAL = {
    "attachments",
    "comment_summary",
    "contact_name",
    "created_by_name",
    "integration_links",
    "is_stalled",
    "lead_name",
    "lead_primary_email",
    "lead_primary_phone",
    "pipeline_id",
    "pipeline_name",
    "stall_status",
    "status_display_name",
    "status_label",
    "status_type",
    "suggested_action",
    "updated_by_name",
    "user_name",
    "value_currency",
    "value_formatted",
}


def _record_keys(record: dict[str, Any]) -> set[str]:
    custom = {k for k in record if k.startswith("custom.")}
    assert all(re.fullmatch(r"custom\.cf_[0-9A-Za-z]{43}", k) for k in custom)
    return set(record) - custom


async def _list(sb: Sandbox, http: aiohttp.ClientSession, **params: str | int) -> tuple[int, Any]:
    reply = await call(
        http,
        "GET",
        f"{sb.close.base_url}/opportunity/",
        headers=sb.close.auth_headers,
        params=params,
    )
    return reply.status, reply.json()


async def _all_ids(sb: Sandbox, http: aiohttp.ClientSession, **params: str | int) -> list[str]:
    ids: list[str] = []
    skip = 0
    while True:
        status, body = await _list(sb, http, _skip=skip, _limit=7, **params)
        assert status == 200
        ids += [r["id"] for r in body["data"]]
        skip += len(body["data"])
        if not body["has_more"]:
            return ids


async def test_list_records_have_the_key_set_of_the_vendor_example(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body = await _list(sandbox, http, _limit=100)
    assert status == 200
    assert set(body) == set(EXAMPLE)
    assert len(body["data"]) == 60 and body["total_results"] == 60 and not body["has_more"]
    for record in body["data"]:
        assert _record_keys(record) == EXAMPLE_KEYS
    assert any(k.startswith("custom.cf_") for r in body["data"] for k in r)
    assert any(not any(k.startswith("custom.") for k in r) for r in body["data"])
    for record, example in zip(body["data"], EXAMPLE["data"] * 20, strict=False):
        for key in EXAMPLE_KEYS:
            if example[key] is not None and record[key] is not None:
                assert type(record[key]) is type(example[key]), key


async def test_get_returns_the_same_record(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    record_id = sandbox.close.ids[3]
    for path in (f"/opportunity/{record_id}/", f"/opportunity/{record_id}"):
        reply = await call(
            http, "GET", sandbox.close.base_url + path, headers=sandbox.close.auth_headers
        )
        assert reply.status == 200
        assert reply.json() == sandbox.close.record(record_id)
        assert _record_keys(reply.json()) == EXAMPLE_KEYS


async def test_get_unknown_id_is_404(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    reply = await call(
        http,
        "GET",
        f"{sandbox.close.base_url}/opportunity/oppo_nope/",
        headers=sandbox.close.auth_headers,
    )
    assert reply.status == 404
    assert reply.json() == {"error": "Empty query: Opportunity matching query does not exist."}


async def test_schema_extras_are_documented_optional_keys(http: aiohttp.ClientSession) -> None:
    async with Sandbox(vendors=["close"], close=CloseOptions(schema_extras=True)) as sb:
        _, body = await _list(sb, http)
    for record in body["data"]:
        keys = _record_keys(record)
        assert keys > EXAMPLE_KEYS
        assert keys - EXAMPLE_KEYS <= SCHEMA_OPTIONAL


async def test_limit_over_the_maximum_is_the_vendor_400(http: aiohttp.ClientSession) -> None:
    async with Sandbox(vendors=["close"], close=CloseOptions(max_limit=25, max_skip=40)) as sb:
        status, body = await _list(sb, http, _limit=26)
        assert status == 400
        assert body == {
            "error": "The limit you set is larger than the maximum limit for this resource "
            "(max_limit = 25). Please refine your search query."
        }
        status, body = await _list(sb, http, _skip=41)
        assert status == 400
        assert body == {
            "error": "The skip you set is larger than the maximum skip for this resource "
            "(max_skip = 40). Please refine your search query."
        }
        status, body = await _list(sb, http, _skip=40, _limit=25)
        assert status == 200 and len(body["data"]) == 20


async def test_default_maxima(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    status, body = await _list(sandbox, http, _limit=101)
    assert status == 400 and "(max_limit = 100)" in body["error"]
    status, body = await _list(sandbox, http, _skip=250_001)
    assert status == 400 and "(max_skip = 250000)" in body["error"]
    status, body = await _list(sandbox, http, _skip=250_000)
    assert status == 200 and body["data"] == [] and body["total_results"] == 60


async def test_bad_parameters_are_field_errors(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    for params in ({"_limit": "ten"}, {"_skip": -1}, {"_order_by": "title"}):
        status, body = await _list(sandbox, http, **params)
        assert status == 400
        assert set(body) == {"errors", "field-errors"}
        assert list(body["field-errors"]) == list(params)
    # an unencoded "+" arrives as a space: not a valid date-time
    status, body = await _list(sandbox, http, date_updated__gte="2025-06-01T00:00:00 00:00")
    assert status == 400 and "date_updated__gte" in body["field-errors"]


async def test_rate_limit_header_on_every_response(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.close.base_url
    auth = sandbox.close.auth_headers
    replies = [
        await call(http, "GET", f"{base}/opportunity/", headers=auth),
        await call(http, "GET", f"{base}/opportunity/", headers=auth, params={"_limit": 500}),
        await call(http, "GET", f"{base}/opportunity/oppo_x/", headers=auth),
        await call(http, "GET", f"{base}/opportunity/"),
        await call(http, "GET", f"{base}/lead/", headers=auth),
    ]
    assert [r.status for r in replies] == [200, 400, 404, 401, 404]
    for reply in replies:
        match = RATE_LIMIT.match(reply.headers["RateLimit"])
        assert match, reply.headers["RateLimit"]
        assert int(match[2]) <= int(match[1])
        assert 0 <= float(match[3]) <= 1.0
        assert reply.headers["Content-Type"].startswith("application/json")


async def test_limiter_answers_429_with_the_headers(http: aiohttp.ClientSession) -> None:
    options = CloseOptions(rate_limit=RateLimitPolicy(limit=3, window=3600.0))
    async with Sandbox(vendors=["close"], close=options) as sb:
        statuses = []
        for _ in range(4):
            reply = await call(
                http, "GET", f"{sb.close.base_url}/opportunity/", headers=sb.close.auth_headers
            )
            statuses.append(reply.status)
        assert statuses == [200, 200, 200, 429]
        match = RATE_LIMIT.match(reply.headers["RateLimit"])
        assert match and match[1] == "3" and match[2] == "0" and 0 < float(match[3]) <= 3600
        assert reply.body == b""


async def test_auth(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    url = f"{sandbox.close.base_url}/opportunity/"
    key = sandbox.close.api_key
    ok_basic = await call(http, "GET", url, headers=sandbox.close.auth_headers)
    token = base64.b64encode(f"{key}:".encode()).decode()
    raw_basic = await call(http, "GET", url, headers={"Authorization": f"Basic {token}"})
    assert raw_basic.status == 200
    ok_bearer = await call(http, "GET", url, headers={"Authorization": f"Bearer {key}"})
    missing = await call(http, "GET", url)
    wrong_token = base64.b64encode(b"wrong-key:").decode()
    reply = await call(http, "GET", url, headers={"Authorization": f"Basic {wrong_token}"})
    wrong = reply.status, reply.json()
    garbage = await call(http, "GET", url, headers={"Authorization": "Basic %%%"})
    assert garbage.status == 401
    bearer_wrong = await call(http, "GET", url, headers={"Authorization": "Bearer nope"})
    assert ok_basic.status == ok_bearer.status == 200
    assert missing.status == 401 and set(missing.json()) == {"error"}
    assert wrong[0] == 401 and set(wrong[1]) == {"error"}
    assert bearer_wrong.status == 401


async def test_pages_by_date_updated_cover_everything_once(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    ids = await _all_ids(sandbox, http, _order_by="date_updated")
    assert sorted(ids) == sorted(sandbox.close.ids)
    records = [sandbox.close.record(i) for i in ids]
    keys = [(r["date_updated"], r["id"]) for r in records]
    assert keys == sorted(keys), "date_updated ascending, ties by id"
    assert len({r["date_updated"] for r in records}) < len(records), "there are ties"
    descending = await _all_ids(sandbox, http, _order_by="-date_updated")
    assert sorted(descending) == sorted(ids)
    stamps = [sandbox.close.record(i)["date_updated"] for i in descending]
    assert stamps == sorted(stamps, reverse=True)


async def test_order_is_stable_by_default(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    first = await _all_ids(sandbox, http)
    assert first == await _all_ids(sandbox, http)
    created = [sandbox.close.record(i)["date_created"] for i in first]
    assert created == sorted(created, reverse=True)


async def test_date_filters(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    records = sandbox.close.records
    stamps = sorted({r["date_updated"] for r in records})
    middle = stamps[len(stamps) // 2]
    gte = await _all_ids(sandbox, http, date_updated__gte=middle, _order_by="date_updated")
    gt = await _all_ids(sandbox, http, date_updated__gt=middle, _order_by="date_updated")
    assert set(gte) == {r["id"] for r in records if r["date_updated"] >= middle}
    assert set(gt) == {r["id"] for r in records if r["date_updated"] > middle}
    tied = {r["id"] for r in records if r["date_updated"] == middle}
    assert set(gte) - set(gt) == tied
    # a date alone, and another offset, are understood
    day = datetime.fromisoformat(middle).date().isoformat()
    lt = await _all_ids(sandbox, http, date_updated__lt=day)
    assert set(lt) == {r["id"] for r in records if r["date_updated"][:10] < day}
    moment = datetime.fromisoformat(middle).astimezone(UTC)
    shifted = moment.astimezone(timezone(timedelta(hours=-3)))
    same = await _all_ids(sandbox, http, date_updated__gte=shifted.isoformat())
    assert set(same) == set(gte)
    won = await _all_ids(sandbox, http, date_won__gte="2025-09-01")
    assert set(won) == {r["id"] for r in records if r["date_won"] and r["date_won"] >= "2025-09-01"}


async def test_other_filters_and_fields(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    records = sandbox.close.records
    ids = await _all_ids(sandbox, http, status_type__in="won,lost")
    assert set(ids) == {r["id"] for r in records if r["status_type"] != "active"}
    user = records[0]["user_id"]
    ids = await _all_ids(sandbox, http, user_id=user, value_period="monthly")
    assert set(ids) == {
        r["id"] for r in records if r["user_id"] == user and r["value_period"] == "monthly"
    }
    name = records[5]["lead_name"]
    ids = await _all_ids(sandbox, http, query=name.lower())
    needle = name.lower()
    assert set(ids) == {
        r["id"] for r in records if needle in r["lead_name"].lower() or needle in r["note"].lower()
    }
    status, body = await _list(sandbox, http, _fields="id,value,date_updated", _limit=3)
    assert status == 200
    assert all(set(r) == {"id", "date_updated", "value"} for r in body["data"])
    status, body = await _list(sandbox, http, _group_by="user_id")
    assert status == 400 and "_group_by" in body["error"]


async def test_aggregates_follow_the_documented_rules(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body = await _list(sandbox, http, status_type="active", _limit=2)
    assert status == 200
    matched = [r for r in sandbox.close.records if r["status_type"] == "active"]
    assert body["total_results"] == len(matched)
    for period in ("one_time", "monthly", "annual"):
        of = [r for r in matched if r["value_period"] == period]
        assert body["count_by_value_period"][period] == len(of)
        assert body[f"total_value_{period}"] == sum(r["value"] for r in of)
        assert body[f"expected_value_{period}"] == sum(
            r["value"] * r["confidence"] // 100 for r in of
        )
    annualized = sum(r["value"] * (12 if r["value_period"] == "monthly" else 1) for r in matched)
    assert body["total_value_annualized"] == annualized
    assert body["total_value_annualized_formatted"].startswith("$")


async def test_value_formatting_matches_the_example() -> None:
    from close_opps.sandbox._data import format_close_money

    for record in EXAMPLE["data"]:
        text = format_close_money(record["value"], record["value_currency"])
        if record["value_period"] == "monthly":
            text += " monthly"
        assert text == record["value_formatted"]
    assert format_close_money(292500, "USD") == EXAMPLE["expected_value_annualized_formatted"]


@pytest.mark.parametrize("order", ["value", "-confidence", "date_won", "-date_won", "user_name"])
async def test_every_documented_order_works(
    sandbox: Sandbox, http: aiohttp.ClientSession, order: str
) -> None:
    ids = await _all_ids(sandbox, http, _order_by=order)
    assert sorted(ids) == sorted(sandbox.close.ids)


async def test_legacy_rate_limit_headers(http: aiohttp.ClientSession) -> None:
    options = CloseOptions(rate_limit_headers="legacy")
    async with Sandbox(vendors=["close"], close=options) as sb:
        reply = await call(
            http, "GET", f"{sb.close.base_url}/opportunity/", headers=sb.close.auth_headers
        )
        sb.close.script(Fault.rate_limit(0.25))
        limited = await call(
            http, "GET", f"{sb.close.base_url}/opportunity/", headers=sb.close.auth_headers
        )
    assert "RateLimit" not in reply.headers
    assert reply.headers["X-Rate-Limit-Limit"] == "1000"
    assert reply.headers["X-Rate-Limit-Remaining"] == "999"
    assert 0 <= float(reply.headers["X-Rate-Limit-Reset"]) <= 1
    assert limited.status == 429
    assert limited.headers["X-Rate-Limit-Remaining"] == "0"
    assert limited.headers["X-Rate-Limit-Reset"] == "0.25"
