"""The Getraze emulator against the responses recorded from Getraze's own server."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import aiohttp

from close_opps.sandbox import GetrazeOptions, RateLimitPolicy, Sandbox

from ._support import Reply, call, getraze_case

LIST_1 = getraze_case("list, page 1 of 2")
LIST_2 = getraze_case("list, page 2 of 2")
GET = getraze_case("get")
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
#: The record form of getraze-get-opportunity.md.
DOCUMENTED_KEYS = {
    "id",
    "name",
    "email",
    "phone",
    "company",
    "position",
    "status",
    "source",
    "deal_value",
    "deal_currency",
    "linkedin_url",
    "notes",
    "campaign",
    "responsible_user",
    "won_at",
    "lost_at",
    "created_at",
    "updated_at",
}


async def _get(
    sb: Sandbox,
    http: aiohttp.ClientSession,
    path: str,
    headers: dict[str, str] | None = None,
    /,
    **params: str | int,
) -> Reply:
    return await call(
        http,
        "GET",
        sb.getraze.base_url + path,
        headers=sb.getraze.auth_headers if headers is None else headers,
        params=params,
    )


def _same_shape(actual: dict[str, Any], recorded: dict[str, Any]) -> None:
    assert set(actual) == set(recorded)


def _rate_headers_like_recorded(reply: Reply) -> None:
    for name in RATE_HEADERS:
        assert reply.headers[name].isdigit(), name
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Retry-After" not in reply.headers


async def test_list_matches_the_recorded_live_form(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    first = await _get(sandbox, http, "/opportunities", limit=2)
    assert first.status == LIST_1["status"]
    body = first.json()
    _same_shape(body, LIST_1["body"])
    _same_shape(body["pagination"], LIST_1["body"]["pagination"])
    assert body["pagination"] == {
        "page": 1,
        "per_page": 2,
        "total": 60,
        "total_pages": 30,
        "has_next": True,
        "has_prev": False,
    }
    recorded_keys = set(LIST_1["body"]["data"][0])
    for record in body["data"]:
        assert set(record) == recorded_keys
    _rate_headers_like_recorded(first)
    assert set(LIST_1["headers"]) <= set(first.headers)

    last = await _get(sandbox, http, "/opportunities", limit=2, page=30)
    pagination = last.json()["pagination"]
    assert pagination["has_next"] is LIST_2["body"]["pagination"]["has_next"] is False
    assert pagination["has_prev"] is LIST_2["body"]["pagination"]["has_prev"] is True


async def test_every_listed_record_has_the_recorded_types(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await _get(sandbox, http, "/opportunities", limit=100)
    recorded = LIST_1["body"]["data"] + LIST_2["body"]["data"]
    for record in reply.json()["data"]:
        Decimal(record["value"])
        assert isinstance(record["value"], str) and isinstance(record["probability"], int)
        for key in record:
            samples = {type(r[key]) for r in recorded if r[key] is not None}
            if record[key] is not None and samples:
                assert type(record[key]) in samples, key


async def test_get_matches_the_recorded_live_form(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    with_comments = next(i for i in sandbox.getraze.ids if sandbox.getraze.record(i)["comments"])
    reply = await _get(sandbox, http, f"/opportunities/{with_comments}")
    assert reply.status == 200
    body = reply.json()
    _same_shape(body, GET["body"])
    assert body["success"] is True
    assert set(body["data"]) == set(GET["body"]["data"])
    recorded_comment = GET["body"]["data"]["comments"][0]
    for comment in body["data"]["comments"]:
        assert set(comment) == set(recorded_comment)
    assert isinstance(body["data"]["custom_fields"], dict)
    _rate_headers_like_recorded(reply)


async def test_errors_match_the_recorded_cases(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    cases = {
        "get, another account's record": await _get(
            sandbox, http, f"/opportunities/{uuid.UUID(int=4)}"
        ),
        "get, id that is not a uuid": await _get(sandbox, http, "/opportunities/not-a-uuid"),
        "wrong key": await _get(sandbox, http, "/opportunities", {"X-API-Key": "nope"}),
        "no key": await _get(sandbox, http, "/opportunities", {}),
    }
    for name, reply in cases.items():
        case = getraze_case(name)
        assert reply.status == case["status"], name
        assert reply.json() == case["body"], name
        assert reply.headers["Content-Type"] == case["headers"]["Content-Type"]
        has_rate = "X-RateLimit-Limit" in case["headers"]
        assert ("X-RateLimit-Limit" in reply.headers) is has_rate, name


async def test_missing_permission_is_403(http: aiohttp.ClientSession) -> None:
    case = getraze_case("key without opportunities:read")
    options = GetrazeOptions(permissions=("contacts:read",))
    async with Sandbox(vendors=["getraze"], getraze=options) as sb:
        reply = await _get(sb, http, "/opportunities")
    assert reply.status == 403
    assert reply.json() == case["body"]
    _rate_headers_like_recorded(reply)


async def test_hourly_limit_is_the_recorded_429(http: aiohttp.ClientSession) -> None:
    case = getraze_case("rate limit exceeded (key limited to 2 requests an hour)")
    options = GetrazeOptions(rate_limit=RateLimitPolicy(limit=2, window=3600))
    async with Sandbox(vendors=["getraze"], getraze=options) as sb:
        replies = [await _get(sb, http, "/opportunities", limit=1) for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["1", "0", "0"]
    body = replies[2].json()
    _same_shape(body, case["body"])
    _same_shape(body["error"], case["body"]["error"])
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["error"]["message"] == case["body"]["error"]["message"]
    assert isinstance(body["error"]["retry_after"], int)
    assert 1 <= body["error"]["retry_after"] <= 3600
    _rate_headers_like_recorded(replies[2])
    assert replies[2].headers["X-RateLimit-Limit"] == "2"


async def test_reset_header_is_the_next_full_hour(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await _get(sandbox, http, "/opportunities", limit=1)
    reset = int(reply.headers["X-RateLimit-Reset"])
    assert reset % 3600 == 0
    assert 0 < reset - time.time() <= 3600


async def test_other_ways_to_pass_the_key(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    key = sandbox.getraze.api_key
    bearer = await _get(sandbox, http, "/opportunities", {"Authorization": f"Bearer {key}"})
    query = await _get(sandbox, http, "/opportunities", {}, api_key=key)
    assert bearer.status == query.status == 200


async def test_pages_cover_everything_once(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    for sort_by in ("created_at", "updated_at", "title", "value"):
        for order in ("asc", "desc"):
            ids: list[str] = []
            page = 1
            while True:
                reply = await _get(
                    sandbox, http, "/opportunities", limit=7, page=page, sort_by=sort_by,
                    sort_order=order,
                )  # fmt: skip
                body = reply.json()
                ids += [r["id"] for r in body["data"]]
                if not body["pagination"]["has_next"]:
                    break
                page += 1
            assert sorted(ids) == sorted(sandbox.getraze.ids), (sort_by, order)
            assert page == body["pagination"]["total_pages"] == 9


async def test_default_order_is_created_at_descending(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await _get(sandbox, http, "/opportunities", limit=100)
    records = reply.json()["data"]
    keys = [r["created_at"] for r in records]
    assert keys == sorted(keys, reverse=True)
    ties = [r["id"] for r in records if r["created_at"] == records[0]["created_at"]]
    assert ties == sorted(ties)


async def test_filters(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    records = sandbox.getraze.records

    async def ids(**params: str | int) -> set[str]:
        reply = await _get(sandbox, http, "/opportunities", limit=100, **params)
        assert reply.status == 200
        return {r["id"] for r in reply.json()["data"]}

    assert await ids(status="won") == {r["id"] for r in records if r["stage_name"] == "won"}
    owner = next(r["owner_user_id"] for r in records if r["owner_user_id"])
    expected = {r["id"] for r in records if r["owner_user_id"] == owner}
    assert await ids(owner_user_id=owner) == expected == await ids(responsible_user_id=owner)
    company = records[0]["contact_company"]
    assert await ids(company=company.upper()) == {
        r["id"] for r in records if r["contact_company"] == company
    }
    assert await ids(source="linkedin") == {r["id"] for r in records if r["source"] == "linkedin"}
    assert await ids(search="zzz-nothing") == set()


async def test_limit_over_100(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    reply = await _get(sandbox, http, "/opportunities", limit=101)
    assert reply.status == 400
    body = reply.json()
    assert body["success"] is False and body["error"]["code"] == "VALIDATION_ERROR"
    _rate_headers_like_recorded(reply)
    assert (await _get(sandbox, http, "/opportunities", limit=0)).status == 400
    assert (await _get(sandbox, http, "/opportunities", page=0)).status == 400
    options = GetrazeOptions(over_max_limit="clamp")
    async with Sandbox(vendors=["getraze"], getraze=options) as sb:
        reply = await _get(sb, http, "/opportunities", limit=500)
    assert reply.status == 200 and reply.json()["pagination"]["per_page"] == 100


async def test_documented_forms(http: aiohttp.ClientSession) -> None:
    options = GetrazeOptions(list_form="documented", record_form="documented")
    async with Sandbox(vendors=["getraze"], getraze=options) as sb:
        listed = await _get(sb, http, "/opportunities", limit=5)
        fetched = await _get(sb, http, f"/opportunities/{sb.getraze.ids[0]}")
    body = listed.json()
    assert set(body) == {"success", "data"}
    assert set(body["data"]) == {"opportunities", "pagination"}
    assert body["data"]["pagination"] == {"page": 1, "limit": 5, "total": 60, "total_pages": 12}
    for record in body["data"]["opportunities"]:
        assert set(record) == DOCUMENTED_KEYS
        assert isinstance(record["deal_value"], float)
    assert set(fetched.json()["data"]) == DOCUMENTED_KEYS


async def test_unknown_routes_are_enveloped(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    reply = await _get(sandbox, http, "/contacts")
    assert reply.status == 404
    assert reply.json() == {
        "success": False,
        "error": {"code": "NOT_FOUND", "message": "Endpoint not found"},
    }
    _rate_headers_like_recorded(reply)
