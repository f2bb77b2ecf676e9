"""The Getraze emulator against the responses recorded from Getraze's own server."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import yarl

from close_opps.sandbox import GetrazeOptions, RateLimitPolicy, Sandbox

from ._support import Reply, call, getraze_case, load_fixture

LIST_1 = getraze_case("list, page 1 of 2")
LIST_2 = getraze_case("list, page 2 of 2")
#: The second recording's ``get`` (the server now also sends ``lead_source_id``).
GET = next(c for c in load_fixture("getraze-live-responses-2.json")["cases"] if c["case"] == "get")


def live2(name: str) -> dict[str, Any]:
    """One case of ``getraze-live-responses-2.json``."""
    cases = load_fixture("getraze-live-responses-2.json")["cases"]
    return dict(next(c for c in cases if c["case"] == name))


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
    assert 0 <= body["error"]["retry_after"] <= 3600
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


async def test_pages_cover_everything_once_with_stable_ties(http: aiohttp.ClientSession) -> None:
    # tie_order="stable": the old behaviour (ties by id), kept as an option
    async with Sandbox(seed=7, getraze=GetrazeOptions(tie_order="stable")) as sandbox:
        await _cover_everything(sandbox, http)


async def _cover_everything(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
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


async def test_filters(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    records = sandbox.getraze.records

    async def ids(**params: str | int) -> set[str]:
        reply = await _get(sandbox, http, "/opportunities", limit=100, **params)
        assert reply.status == 200
        return {r["id"] for r in reply.json()["data"]}

    owner = next(r["owner_user_id"] for r in records if r["owner_user_id"])
    expected = {r["id"] for r in records if r["owner_user_id"] == owner}
    assert await ids(owner_user_id=owner) == expected
    company = records[0]["contact_company"]
    assert await ids(company=company.upper()) == {
        r["id"] for r in records if r["contact_company"] == company
    }
    assert await ids(search="zzz-nothing") == set()
    stage = records[0]["stage_id"]
    assert await ids(stage_id=stage) == {r["id"] for r in records if r["stage_id"] == stage}


async def test_unknown_parameters_are_ignored(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # Not server filters any more (recorded): the whole list comes back, as the real server
    every = {r["id"] for r in sandbox.getraze.records}
    owner = next(r["owner_user_id"] for r in sandbox.getraze.records if r["owner_user_id"])
    unknown: tuple[dict[str, str | int], ...] = (
        {"status": "won"},
        {"source": "linkedin"},
        {"responsible_user_id": owner},
        {"updated_since": "2026-01-15T00:00:00Z"},
    )
    for params in unknown:
        reply = await _get(sandbox, http, "/opportunities", limit=100, **params)
        assert reply.status == 200, params
        assert {r["id"] for r in reply.json()["data"]} == every, params
        assert reply.json()["pagination"]["total"] == 60


async def test_malformed_parameters_are_500(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    cases: dict[str, dict[str, str | int]] = {
        "list, limit=-1": {"limit": -1},
        "list, limit=abc": {"limit": "abc"},
        "list, page=0": {"page": 0},
        "list, page=abc": {"page": "abc"},
        "list, owner_user_id not a uuid": {"owner_user_id": "nobody"},
    }
    for name, params in cases.items():
        case = live2(name)
        reply = await _get(sandbox, http, "/opportunities", **params)
        assert reply.status == case["status"] == 500, name
        assert reply.json() == case["body"], name
        _rate_headers_like_recorded(reply)


async def test_limit_over_100_is_clamped_and_0_is_empty(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    for limit in (101, 1000):
        reply = await _get(sandbox, http, "/opportunities", limit=limit)
        assert reply.status == 200
        assert reply.json()["pagination"]["per_page"] == 100
        assert len(reply.json()["data"]) == 60
    zero = await _get(sandbox, http, "/opportunities", limit=0)
    recorded = live2("list, limit=0")["body"]
    assert zero.status == 200
    assert zero.json()["data"] == recorded["data"] == []
    assert zero.json()["pagination"] == {**recorded["pagination"], "total": 60}
    options = GetrazeOptions(over_max_limit="error")
    async with Sandbox(vendors=["getraze"], getraze=options) as sb:
        reply = await _get(sb, http, "/opportunities", limit=500)
    assert reply.status == 400
    body = reply.json()
    assert body["success"] is False and body["error"]["code"] == "VALIDATION_ERROR"


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


async def test_unknown_routes_are_expresss_404(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    case = live2("unknown route under /external/v1")
    reply = await _get(sandbox, http, "/opportunity")
    assert reply.status == 404
    assert reply.json() == case["body"]  # no error object, no code
    _rate_headers_like_recorded(reply)
    outside = live2("base URL without /external/v1 (a misconfigured client)")
    record_id = "ffffffff-0000-0000-0000-000000000001"
    wrong_base = await call(
        http,
        "GET",
        f"{sandbox.getraze.origin}/opportunities/{record_id}",
        headers=sandbox.getraze.auth_headers,
    )
    assert wrong_base.status == 404
    assert wrong_base.json() == outside["body"]
    assert "X-RateLimit-Limit" not in wrong_base.headers  # before auth and the limiter
    unauthenticated = await call(http, "GET", f"{sandbox.getraze.origin}/nothing?x=1")
    assert unauthenticated.json()["message"] == "Route not found: GET /nothing?x=1"


async def test_get_and_list_rows_differ_as_recorded(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    record_id = sandbox.getraze.ids[0]
    fetched = (await _get(sandbox, http, f"/opportunities/{record_id}")).json()["data"]
    listed = next(
        r
        for r in (await _get(sandbox, http, "/opportunities", limit=100)).json()["data"]
        if r["id"] == record_id
    )
    for key in ("stage_name", "pipeline_name"):
        assert key in listed and key not in fetched
    for key in ("custom_fields", "discarded_at", "comments", "lead_source_id"):
        assert key in fetched and key not in listed


async def _read_every_page_once(
    sb: Sandbox, http: aiohttp.ClientSession, limit: int, **params: str | int
) -> tuple[list[str], int]:
    ids: list[str] = []
    page = 1
    while True:
        body = (await _get(sb, http, "/opportunities", limit=limit, page=page, **params)).json()
        ids += [r["id"] for r in body["data"]]
        if not body["pagination"]["has_next"]:
            return ids, body["pagination"]["total"]
        page += 1


async def test_ties_come_in_a_fresh_order_on_every_request(http: aiohttp.ClientSession) -> None:
    # As the real server over 250 records sharing one timestamp: pages overlap, records
    # are lost, and pagination.total still announces them all
    tied_at = datetime(2026, 2, 11, 10, tzinfo=UTC)
    async with Sandbox(seed=3, records=250, vendors=["getraze"]) as sb:
        sb.getraze.share_timestamp(tied_at)
        first = await _get(sb, http, "/opportunities", limit=100)
        again = await _get(sb, http, "/opportunities", limit=100)
        assert [r["id"] for r in first.json()["data"]] != [r["id"] for r in again.json()["data"]]
        ids, total = await _read_every_page_once(sb, http, 50, sort_by="updated_at")
        assert total == 250 and len(ids) == 250
        assert len(set(ids)) < 250  # overlapping pages: some records never came
        assert set(ids) <= set(sb.getraze.ids)
        page = (await _get(sb, http, "/opportunities", limit=100, page=2)).json()["data"]
        assert len({r["id"] for r in page}) == 100  # one page never repeats a record


async def test_tie_order_is_reproducible_and_can_be_turned_off(
    http: aiohttp.ClientSession,
) -> None:
    tied_at = datetime(2026, 2, 11, 10, tzinfo=UTC)

    async def run(options: GetrazeOptions) -> list[str]:
        async with Sandbox(seed=3, records=120, vendors=["getraze"], getraze=options) as sb:
            sb.getraze.share_timestamp(tied_at)
            ids, _ = await _read_every_page_once(sb, http, 25)
            return ids

    assert await run(GetrazeOptions(tie_seed=5)) == await run(GetrazeOptions(tie_seed=5))
    assert await run(GetrazeOptions(tie_seed=5)) != await run(GetrazeOptions(tie_seed=6))
    stable = await run(GetrazeOptions(tie_order="stable"))
    assert stable == sorted(stable) and len(set(stable)) == 120


async def test_distinct_timestamps_are_never_shuffled(http: aiohttp.ClientSession) -> None:
    async with Sandbox(seed=3, records=80, vendors=["getraze"]) as sb:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for offset, record_id in enumerate(sb.getraze.ids):
            sb.getraze.touch(record_id, start + timedelta(minutes=offset))
        ids, _ = await _read_every_page_once(sb, http, 7, sort_by="updated_at")
    assert len(ids) == len(set(ids)) == 80


async def test_a_path_that_does_not_decode_is_expresss_400(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    case = live2("get, malformed percent-encoding")
    url = yarl.URL(f"{sandbox.getraze.base_url}/opportunities/%E0%A4%A", encoded=True)
    async with http.get(url, headers=sandbox.getraze.auth_headers) as response:
        body = await response.json()
        assert response.status == 400
        assert "X-RateLimit-Limit" in response.headers
    assert body == case["body"]
    slash = yarl.URL(f"{sandbox.getraze.base_url}/opportunities/a%2Fb", encoded=True)
    async with http.get(slash, headers=sandbox.getraze.auth_headers) as response:
        assert response.status == 500  # decodes, but is no UUID (recorded)
        assert await response.json() == live2("get, id with an encoded slash")["body"]


async def test_retry_after_is_rounded_down_to_0_in_the_hours_last_second(
    http: aiohttp.ClientSession,
) -> None:
    options = GetrazeOptions(rate_limit=RateLimitPolicy(limit=1, window=3600))
    async with Sandbox(vendors=["getraze"], getraze=options) as sb:
        sb.getraze.state.limiter.clock = lambda: 1795834800 - 0.4  # 0.4 s before the hour
        replies = [await _get(sb, http, "/opportunities", limit=1) for _ in range(2)]
        sb.getraze.state.limiter.clock = lambda: 1795834800 - 35.5
        late = await _get(sb, http, "/opportunities", limit=1)
    assert [r.status for r in replies] == [200, 429]
    assert replies[1].json()["error"]["retry_after"] == 0
    assert late.json()["error"]["retry_after"] == 35
