"""The Getraze adapter: decoding of every record form, envelopes, errors, rate limits, listing."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yarl
from aioresponses import CallbackResult, aioresponses
from multidict import CIMultiDict

from close_opps.adapters.getraze import (
    GetrazeAdapter,
    GetrazeDialect,
    getraze_to_opportunity,
)
from close_opps.errors import (
    APIError,
    AuthenticationError,
    DecodeError,
    InvalidArgumentError,
    InvalidRequestError,
    NotFoundError,
    PaginationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from close_opps.http import Secret
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus, Ref
from tests.conftest import FIXTURES, load_fixture

BASE = "https://app.getraze.com/external/v1"
KEY = "grz_live_S3CR3T_k3y_0123456789"
LIST_URL = re.compile(r"^https://app\.getraze\.com/external/v1/opportunities(\?.*)?$")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def exact_fixture(name: str) -> Any:
    """A fixture parsed as the transport parses bodies: numbers with a fraction as Decimal."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"), parse_float=Decimal)


def rate_headers(remaining: int = 990) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(time.time()) + 1800),
    }


@pytest.fixture
def mock() -> Iterator[Any]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def adapter() -> AsyncIterator[GetrazeAdapter]:
    async with GetrazeAdapter(KEY) as getraze:
        yield getraze


async def collect(iterator: AsyncIterator[Opportunity]) -> list[Opportunity]:
    return [item async for item in iterator]


# ================================================================== decoding (no HTTP at all)


def live_list_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for name in ("getraze_list_page1.json", "getraze_list_page2.json"):
        records.extend(exact_fixture(name)["body"]["data"])
    return records


def test_every_live_list_record_decodes() -> None:
    records = live_list_records()
    opportunities = [
        getraze_to_opportunity(raw, path=f"$.data[{i}]") for i, raw in enumerate(records)
    ]
    assert [o.id for o in opportunities] == [r["id"] for r in records]
    for opp, raw in zip(opportunities, records, strict=True):
        assert opp.provider == "getraze"
        assert opp.raw == raw
        assert opp.name == raw["title"]
        assert opp.amount == Money(amount=Decimal(raw["value"]), currency=raw["currency"])
        assert opp.confidence == raw["probability"]
        assert opp.stage == Ref(id=raw["stage_id"], name=raw["stage_name"])
        assert opp.pipeline == Ref(id=raw["pipeline_id"], name="Sales")
        assert opp.company == Ref(name=raw["contact_company"])
        assert opp.created_at.tzinfo is not None and opp.updated_at.tzinfo is not None
        assert opp.custom_fields == {}


def test_live_won_record() -> None:
    opp = getraze_to_opportunity(live_list_records()[0])
    assert opp.status is OpportunityStatus.WON
    assert opp.status_label == "won"
    won = datetime(2026, 1, 20, 10, tzinfo=UTC)
    assert (opp.won_at, opp.lost_at, opp.closed_at) == (won, None, won)
    assert opp.amount == Money(amount=Decimal("120000.00"), currency="BRL")
    assert str(opp.amount.amount) == "120000.00"
    assert opp.owner == Ref(id="aaaaaaaa-0000-0000-0000-000000000001", name="Ana Owner")
    assert opp.contact == Contact(
        id="eeeeeeee-0000-0000-0000-000000000003", name="Chen Wei", title="Founder"
    )
    assert opp.expected_close_at == datetime(2026, 2, 1, tzinfo=UTC)
    assert opp.source == "google_maps"
    assert opp.created_at == datetime(2026, 1, 12, 10, tzinfo=UTC)


def test_live_open_record_without_owner() -> None:
    opp = getraze_to_opportunity(live_list_records()[1])
    assert opp.status is OpportunityStatus.OPEN
    assert opp.status_label == "leads"
    assert opp.owner is None
    assert opp.closed_at is None and opp.won_at is None and opp.lost_at is None
    assert opp.expected_close_at is None
    assert opp.contact is not None and opp.contact.email == "john@initech.test"
    assert opp.confidence == 20


def test_live_get_record() -> None:
    data = exact_fixture("getraze_get.json")["body"]["data"]
    opp = getraze_to_opportunity(data, path="$.data")
    assert opp.id == "ffffffff-0000-0000-0000-000000000001"
    assert opp.name == "Globex - Platform deal"
    assert opp.status is OpportunityStatus.OPEN
    assert opp.status_label is None  # the get form has stage_id but no stage_name
    assert opp.stage == Ref(id="cccccccc-0000-0000-0000-000000000002")
    assert opp.pipeline == Ref(id="bbbbbbbb-0000-0000-0000-000000000001")
    assert opp.amount == Money(amount=Decimal("25000.00"), currency="USD")
    assert opp.confidence == 60
    assert opp.owner == Ref(id="aaaaaaaa-0000-0000-0000-000000000001", name="Ana Owner")
    assert opp.company == Ref(name="Globex")
    assert opp.contact == Contact(
        id="eeeeeeee-0000-0000-0000-000000000001",
        name="Maria Silva",
        email="maria@globex.test",
        phone="+55 11 90000-0001",
        title="CTO",
    )
    assert opp.note == "Hot lead"
    assert opp.source == "linkedin"
    assert opp.expected_close_at == datetime(2026, 3, 31, tzinfo=UTC)
    assert opp.updated_at == datetime(2026, 1, 12, 10, tzinfo=UTC)
    assert opp.custom_fields == {}
    assert opp.raw["comments"][0]["content"] == "Call scheduled for next week"  # kept in raw


def test_documented_form() -> None:
    data = exact_fixture("getraze_get_documented.json")["data"]
    opp = getraze_to_opportunity(data)
    assert opp.id == "opp_abc123def456"
    assert opp.name == "John Doe"
    assert opp.status is OpportunityStatus.OPEN
    assert opp.status_label == "qualified"
    assert opp.stage == Ref(name="qualified")
    assert opp.pipeline is None
    assert opp.amount == Money(amount=Decimal("50000.00"), currency="BRL")
    assert str(opp.amount.amount) == "50000.00"
    assert opp.owner == Ref(id="usr_123", name="Sales Rep")
    assert opp.company == Ref(name="Acme Inc")
    assert opp.contact == Contact(
        name="John Doe",
        email="john@example.com",
        phone="+5511999999999",
        title="CEO",
        url="https://linkedin.com/in/johndoe",
    )
    assert opp.note == "Interested in enterprise plan"
    assert opp.source == "linkedin"
    assert opp.created_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert opp.updated_at == datetime(2024, 1, 20, 14, tzinfo=UTC)
    assert opp.raw["campaign"] == {"id": "camp_xyz789", "name": "Q1 Outreach"}


def test_flat_form() -> None:
    data = exact_fixture("getraze_get_flat.json")["data"]
    opp = getraze_to_opportunity(data)
    assert opp.name == "Lima Consulting - Annual plan"  # title wins over name
    assert opp.contact is not None and opp.contact.name == "Paula Lima"
    assert opp.contact.title == "Head of Operations"
    assert opp.owner == Ref(id="usr_456", name="Rui Seller")
    assert opp.status is OpportunityStatus.LOST
    assert opp.status_label == "lost"
    lost = datetime(2024, 3, 2, 9, 15, tzinfo=UTC)
    assert (opp.won_at, opp.lost_at, opp.closed_at) == (None, lost, lost)
    assert opp.amount == Money(amount=Decimal("1234.56"), currency="EUR")


def test_money_is_exact() -> None:
    base = {"id": "x", "created_at": "2026-01-01", "updated_at": "2026-01-01"}
    from_json = json.loads('{"deal_value": 1234.56}', parse_float=Decimal)
    for raw in (
        {**base, **from_json},
        {**base, "deal_value": 1234.56},  # even a float given by hand
        {**base, "value": "1234.56"},
        {**base, "value": " 1234.560 ", "deal_value": 1},  # value wins
    ):
        opp = getraze_to_opportunity(raw)
        assert opp.amount is not None
        assert opp.amount.amount == Decimal("1234.56")
        assert isinstance(opp.amount.amount, Decimal)
        assert str(opp.amount.amount).startswith("1234.56")


def _record(**fields: Any) -> dict[str, Any]:
    return {
        "id": "ffffffff-0000-0000-0000-00000000000a",
        "created_at": "2026-01-10 10:00:00+00",
        "updated_at": "2026-01-12 10:00:00+00",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "status", "lost_at", "closed_at"),
    [
        ({}, OpportunityStatus.OPEN, None, None),
        ({"stage_name": "qualified"}, OpportunityStatus.OPEN, None, None),
        ({"status": "brand_new_word"}, OpportunityStatus.OPEN, None, None),
        ({"stage_name": "Won"}, OpportunityStatus.WON, None, None),
        ({"status": "lost"}, OpportunityStatus.LOST, None, None),
        ({"stage_name": "discarded"}, OpportunityStatus.LOST, None, None),
        (
            {"won_at": "2026-01-11 10:00:00+00", "stage_name": "proposal"},
            OpportunityStatus.WON,
            None,
            datetime(2026, 1, 11, 10, tzinfo=UTC),
        ),
        (
            {"discarded_at": "2026-01-11 12:00:00+00"},
            OpportunityStatus.LOST,
            datetime(2026, 1, 11, 12, tzinfo=UTC),
            datetime(2026, 1, 11, 12, tzinfo=UTC),
        ),
        (
            {"won_at": "2026-01-05 10:00:00+00", "lost_at": "2026-01-11 10:00:00+00"},
            OpportunityStatus.LOST,  # the latest closing wins
            datetime(2026, 1, 11, 10, tzinfo=UTC),
            datetime(2026, 1, 11, 10, tzinfo=UTC),
        ),
    ],
)
def test_status(
    fields: dict[str, Any],
    status: OpportunityStatus,
    lost_at: datetime | None,
    closed_at: datetime | None,
) -> None:
    opp = getraze_to_opportunity(_record(**fields))
    assert opp.status is status
    assert opp.lost_at == lost_at
    assert opp.closed_at == closed_at


def test_unknown_fields_are_kept_and_never_fatal() -> None:
    raw = _record(
        title="Deal",
        brand_new_field={"nested": [1, 2]},
        status="a_status_nobody_knows",
        custom_fields={"industry": "SaaS", "seats": 40},
    )
    opp = getraze_to_opportunity(raw)
    assert opp.raw["brand_new_field"] == {"nested": [1, 2]}
    assert opp.status is OpportunityStatus.OPEN
    assert opp.status_label == "a_status_nobody_knows"
    assert opp.custom_fields == {"industry": "SaaS", "seats": 40}


@pytest.mark.parametrize(
    ("fields", "field_path"),
    [
        ({"value": True}, "$.data[3].value"),
        ({"value": "12,5"}, "$.data[3].value"),
        ({"probability": "high"}, "$.data[3].probability"),
        ({"title": 42}, "$.data[3].title"),
        ({"responsible_user": "usr_1"}, "$.data[3].responsible_user"),
        ({"responsible_user": {"id": 7}}, "$.data[3].responsible_user.id"),
        ({"won_at": "yesterday"}, "$.data[3].won_at"),
        ({"custom_fields": ["a"]}, "$.data[3].custom_fields"),
        ({"updated_at": None}, "$.data[3].updated_at"),
    ],
)
def test_wrong_type_names_the_field(fields: dict[str, Any], field_path: str) -> None:
    with pytest.raises(DecodeError) as info:
        getraze_to_opportunity(_record(**fields), path="$.data[3]")
    assert info.value.path == field_path
    assert info.value.record_id == "ffffffff-0000-0000-0000-00000000000a"
    assert info.value.provider == "getraze"
    assert field_path in str(info.value)


def test_missing_required_field() -> None:
    raw = _record()
    del raw["created_at"]
    with pytest.raises(DecodeError) as info:
        getraze_to_opportunity(raw)
    assert info.value.path == "$.created_at"


def test_dialect_reads_the_envelope() -> None:
    dialect = GetrazeDialect()
    assert dialect.auth_headers(Secret("k")) == {"X-API-Key": "k"}
    body = load_fixture("getraze_errors.json")["cases"][-1]["body"]
    fields = dialect.error_fields(body)
    assert (fields.code, fields.retry_after) == ("RATE_LIMIT_EXCEEDED", 3419.0)
    error = dialect.check(200, {}, body)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 3419.0
    assert dialect.check(200, {}, {"success": True, "data": []}) is None
    assert dialect.check(200, {}, {"no": "envelope"}) is None  # the adapter refuses it


def test_dialect_429_without_body_wait_uses_the_reset_header() -> None:
    reset = int(time.time()) + 600
    headers = CIMultiDict(
        {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    )  # aiohttp's headers are case-insensitive
    error = GetrazeDialect().error(429, headers, {"success": False, "error": {"code": "X"}})
    assert isinstance(error, RateLimitError)
    assert error.retry_after is not None and 590 < error.retry_after <= 600


# ========================================================================= get, over HTTP

GET_URL = f"{BASE}/opportunities/ffffffff-0000-0000-0000-000000000001"


async def test_get_sends_the_key_and_exposes_rate_limits(
    mock: Any, adapter: GetrazeAdapter
) -> None:
    case = load_fixture("getraze_get.json")
    headers = {**case["headers"], **rate_headers(995)}
    mock.get(GET_URL, status=200, body=json.dumps(case["body"]), headers=headers)
    before = adapter.rate_limit
    assert before is None
    opp = await adapter.get("ffffffff-0000-0000-0000-000000000001")
    assert opp.name == "Globex - Platform deal"
    assert opp.amount == Money(amount=Decimal("25000.00"), currency="USD")
    (call,) = mock.requests[("GET", yarl.URL(GET_URL))]
    assert call.kwargs["headers"]["X-API-Key"] == KEY
    assert "Authorization" not in call.kwargs["headers"]
    rate_limit = adapter.rate_limit
    assert rate_limit is not None
    assert (rate_limit.limit, rate_limit.remaining) == (1000, 995)
    assert rate_limit.reset is not None and 1790 < rate_limit.reset <= 1800
    assert rate_limit.resets_at is not None


async def test_get_money_travels_exactly(mock: Any, adapter: GetrazeAdapter) -> None:
    body = (FIXTURES / "getraze_get_flat.json").read_text(encoding="utf-8")
    mock.get(f"{BASE}/opportunities/opp_flat0001", status=200, body=body)
    opp = await adapter.get("opp_flat0001")
    assert opp.amount is not None
    assert opp.amount.amount == Decimal("1234.56")
    assert str(opp.amount.amount) == "1234.56"


async def test_get_documented_form(mock: Any, adapter: GetrazeAdapter) -> None:
    body = (FIXTURES / "getraze_get_documented.json").read_text(encoding="utf-8")
    mock.get(f"{BASE}/opportunities/opp_abc123def456", status=200, body=body)
    opp = await adapter.get("opp_abc123def456")
    assert opp.amount == Money(amount=Decimal("50000.00"), currency="BRL")
    assert opp.raw == exact_fixture("getraze_get_documented.json")["data"]


async def test_get_encodes_the_id_as_one_segment(mock: Any, adapter: GetrazeAdapter) -> None:
    seen: list[yarl.URL] = []

    def answer(url: yarl.URL, **kwargs: Any) -> CallbackResult:
        seen.append(url)
        body = {"success": True, "data": _record(id="a/../b?x=1")}
        return CallbackResult(status=200, body=json.dumps(body))

    mock.get(
        re.compile(r"^https://app\.getraze\.com/external/v1/opportunities/.*"), callback=answer
    )
    opp = await adapter.get("a/../b?x=1")
    assert opp.id == "a/../b?x=1"
    (url,) = seen
    assert url.raw_path == "/external/v1/opportunities/a%2F..%2Fb%3Fx%3D1"
    assert not url.query


ERROR_CODES = [
    ("NOT_FOUND", 404, NotFoundError),
    ("INVALID_API_KEY", 401, AuthenticationError),
    ("MISSING_API_KEY", 401, AuthenticationError),
    ("EXPIRED_API_KEY", 401, AuthenticationError),
    ("UNAUTHORIZED", 401, AuthenticationError),
    ("INSUFFICIENT_PERMISSIONS", 403, PermissionDeniedError),
    ("RATE_LIMIT_EXCEEDED", 429, RateLimitError),
    ("VALIDATION_ERROR", 400, InvalidRequestError),
    ("INVALID_PARAMETER", 400, InvalidRequestError),
    ("CONFLICT", 409, InvalidRequestError),
    ("INTERNAL_ERROR", 500, ServerError),
]


@pytest.mark.parametrize("under_200", [False, True], ids=["own-status", "status-200"])
@pytest.mark.parametrize(("code", "status", "cls"), ERROR_CODES)
async def test_envelope_errors(
    mock: Any, code: str, status: int, cls: type[APIError], under_200: bool
) -> None:
    body = {"success": False, "error": {"code": code, "message": f"it failed: {code}"}}
    sent_status = 200 if under_200 else status
    mock.get(GET_URL, status=sent_status, body=json.dumps(body), headers=rate_headers())
    async with GetrazeAdapter(KEY, max_retries=0) as getraze:
        with pytest.raises(cls) as info:
            await getraze.get("ffffffff-0000-0000-0000-000000000001")
    assert type(info.value) is cls
    assert info.value.code == code
    assert info.value.status == sent_status
    assert info.value.message == f"it failed: {code}"
    assert info.value.body == body


async def test_recorded_errors(mock: Any) -> None:
    classes = {401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError}
    classes |= {429: RateLimitError, 500: ServerError}
    cases = load_fixture("getraze_errors.json")["cases"]
    async with GetrazeAdapter(KEY, max_retries=0) as getraze:
        for case in cases:
            mock.get(GET_URL, status=case["status"], body=json.dumps(case["body"]))
            with pytest.raises(classes[case["status"]]) as info:
                await getraze.get("ffffffff-0000-0000-0000-000000000001")
            assert info.value.code == case["body"]["error"]["code"]
            assert info.value.message == case["body"]["error"]["message"]


async def test_a_malformed_id_costs_one_request_and_says_so(mock: Any) -> None:
    case = next(c for c in load_fixture("getraze_errors.json")["cases"] if c["status"] == 500)
    url = f"{BASE}/opportunities/not-a-uuid"
    mock.get(url, status=500, body=json.dumps(case["body"]), repeat=True)
    async with GetrazeAdapter(KEY, max_retries=2) as getraze:
        with pytest.raises(InvalidArgumentError, match="malformed") as info:
            await getraze.get("not-a-uuid")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.__cause__, ServerError)
    assert len(mock.requests[("GET", yarl.URL(url))]) == 1


async def test_a_uuid_id_that_fails_is_still_retried(mock: Any, adapter: GetrazeAdapter) -> None:
    mock.get(GET_URL, status=500, body=json.dumps({"success": False}), repeat=True)
    async with GetrazeAdapter(KEY, max_retries=2) as getraze:
        with pytest.raises(ServerError):
            await getraze.get("ffffffff-0000-0000-0000-000000000001")
    assert len(mock.requests[("GET", yarl.URL(GET_URL))]) == 3


@pytest.mark.parametrize("name", ["stage_id", "pipeline_id", "campaign_id", "owner_user_id"])
def test_a_malformed_id_filter_is_refused_at_the_call(name: str) -> None:
    adapter = GetrazeAdapter(KEY)
    with pytest.raises(InvalidArgumentError, match=name):
        adapter.list(**{name: "opp_abc123def456"})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=name):
        adapter.pages(**{name: ["ffffffff-0000-0000-0000-000000000001", "x"]})  # type: ignore[arg-type]


def test_a_filter_the_server_ignores_is_refused_at_the_call() -> None:
    adapter = GetrazeAdapter(KEY)
    with pytest.raises(ValueError, match="ignores the 'responsible_user_id' filter"):
        adapter.list(responsible_user_id="ffffffff-0000-0000-0000-000000000001")


async def test_an_error_under_200_is_not_retried(mock: Any, adapter: GetrazeAdapter) -> None:
    body = {"success": False, "error": {"code": "INTERNAL_ERROR", "message": "boom"}}
    mock.get(GET_URL, status=200, body=json.dumps(body), repeat=True)
    with pytest.raises(ServerError):
        await adapter.get("ffffffff-0000-0000-0000-000000000001")
    assert len(mock.requests[("GET", yarl.URL(GET_URL))]) == 1


async def test_429_with_a_short_body_wait_is_retried(mock: Any, adapter: GetrazeAdapter) -> None:
    throttled = {
        "success": False,
        "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retry_after": 1},
    }
    mock.get(GET_URL, status=429, body=json.dumps(throttled), headers=rate_headers(0))
    mock.get(GET_URL, status=200, body=json.dumps(load_fixture("getraze_get.json")["body"]))
    opp = await adapter.get("ffffffff-0000-0000-0000-000000000001")
    assert opp.id == "ffffffff-0000-0000-0000-000000000001"
    assert len(mock.requests[("GET", yarl.URL(GET_URL))]) == 2


async def test_429_over_the_hour_raises_at_once(mock: Any, adapter: GetrazeAdapter) -> None:
    case = load_fixture("getraze_errors.json")["cases"][-1]
    assert case["body"]["error"]["retry_after"] == 3419
    mock.get(
        f"{BASE}/opportunities/ffffffff-0000-0000-0000-000000000001",
        status=429,
        body=json.dumps(case["body"]),
        headers=case["headers"],
        repeat=True,
    )
    started = time.monotonic()
    with pytest.raises(RateLimitError) as info:
        await adapter.get("ffffffff-0000-0000-0000-000000000001")
    assert time.monotonic() - started < 5
    assert info.value.retry_after == 3419
    assert info.value.code == "RATE_LIMIT_EXCEEDED"
    assert len(mock.requests[("GET", yarl.URL(GET_URL))]) == 1
    assert adapter.rate_limit is not None
    assert (adapter.rate_limit.limit, adapter.rate_limit.remaining) == (2, 0)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("<html><body>502 Bad Gateway</body></html>", None),
        ('{"id": "ffffffff-0000-0000-0000-000000000001"}', "$"),
        ("[1, 2]", "$"),
        ('{"success": true}', "$.data"),
        ('{"success": "yes", "data": {}}', "$.success"),
        ('{"success": true, "data": "nope"}', "$.data"),
    ],
)
async def test_bodies_that_are_not_envelopes(
    mock: Any, adapter: GetrazeAdapter, body: str, path: str | None
) -> None:
    mock.get(GET_URL, status=200, body=body)
    with pytest.raises(DecodeError) as info:
        await adapter.get("ffffffff-0000-0000-0000-000000000001")
    assert info.value.path == path


async def test_the_key_never_shows(mock: Any) -> None:
    echo = {"success": False, "error": {"code": "INVALID_API_KEY", "message": f"bad key {KEY}"}}
    async with GetrazeAdapter(KEY, max_retries=0) as getraze:
        assert KEY not in repr(getraze)
        assert KEY not in str(getraze)
        for status in (401, 200):
            mock.get(GET_URL, status=status, body=json.dumps(echo))
            with pytest.raises(AuthenticationError) as info:
                await getraze.get("ffffffff-0000-0000-0000-000000000001")
            assert KEY not in str(info.value)
            assert KEY not in repr(info.value)
            assert "***" in str(info.value)
        missing = {"success": False, "error": {"code": "NOT_FOUND", "message": f"no {KEY}"}}
        mock.get(GET_URL, status=404, body=json.dumps(missing))
        with pytest.raises(NotFoundError) as not_found:
            await getraze.get("ffffffff-0000-0000-0000-000000000001")
        assert KEY not in str(not_found.value)


# ======================================================================= listing, over HTTP


def make_record(
    index: int, *, updated: datetime, created: datetime | None = None
) -> dict[str, Any]:
    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%d %H:%M:%S+00")

    return {
        "id": f"ffffffff-0000-0000-0000-{index:012d}",
        "title": f"Deal {index}",
        "value": f"{index}000.50",
        "currency": "USD",
        "stage_name": "won" if index % 3 == 0 else "qualified",
        "won_at": stamp(updated) if index % 3 == 0 else None,
        "created_at": stamp(created or T0 + timedelta(minutes=index)),
        "updated_at": stamp(updated),
    }


def hourly(count: int) -> list[dict[str, Any]]:
    """``count`` records, record ``i`` created at T0+i min and updated at T0+i hours."""
    return [make_record(i, updated=T0 + timedelta(hours=i)) for i in range(count)]


class FakeGetraze:
    """Getraze's list endpoint over a fixed set of records, in either envelope form.

    ``order`` fixes the order the server answers in, ignoring ``sort_by`` (a server that does
    not honour the sort); by default the records are sorted as asked.
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        form: str = "server",
        order: list[dict[str, Any]] | None = None,
    ) -> None:
        self.records = records
        self.form = form
        self.order = order
        self.calls: list[yarl.URL] = []

    @property
    def pages(self) -> list[int]:
        return [int(url.query.get("page", "1")) for url in self.calls]

    def __call__(self, url: yarl.URL, **kwargs: Any) -> CallbackResult:
        self.calls.append(url)
        page = int(url.query.get("page", "1"))
        limit = int(url.query.get("limit", "50"))
        if self.order is not None:
            rows = list(self.order)
        else:
            key = url.query.get("sort_by", "created_at")
            descending = url.query.get("sort_order", "desc") == "desc"
            rows = sorted(self.records, key=lambda r: str(r[key]), reverse=descending)
        chunk = rows[(page - 1) * limit : page * limit]
        total_pages = math.ceil(len(rows) / limit)
        body: dict[str, Any]
        if self.form == "server":
            body = {
                "success": True,
                "data": chunk,
                "pagination": {
                    "page": page,
                    "per_page": limit,
                    "total": len(rows),
                    "total_pages": total_pages,
                    "has_next": page < total_pages,
                    "has_prev": page > 1,
                },
            }
        else:
            body = {
                "success": True,
                "data": {
                    "opportunities": chunk,
                    "pagination": {
                        "page": page,
                        "limit": limit,
                        "total": len(rows),
                        "total_pages": total_pages,
                    },
                },
            }
        return CallbackResult(status=200, body=json.dumps(body), headers=rate_headers())


def serve(mock: Any, server: FakeGetraze) -> FakeGetraze:
    mock.get(LIST_URL, callback=server, repeat=True)
    return server


async def test_list_replays_the_recorded_pages(mock: Any, adapter: GetrazeAdapter) -> None:
    def replay(url: yarl.URL, **kwargs: Any) -> CallbackResult:
        name = f"getraze_list_page{url.query.get('page', '1')}.json"
        case = load_fixture(name)
        return CallbackResult(status=200, body=json.dumps(case["body"]), headers=case["headers"])

    mock.get(LIST_URL, callback=replay, repeat=True)
    opps = await collect(adapter.list(page_size=2))
    assert [o.id[-1] for o in opps] == ["3", "2", "1"]
    assert len({o.id for o in opps}) == 3
    assert adapter.rate_limit is not None and adapter.rate_limit.remaining == 996


@pytest.mark.parametrize("form", ["server", "documented"])
async def test_list_paginates_every_record_once(
    mock: Any, adapter: GetrazeAdapter, form: str
) -> None:
    server = serve(mock, FakeGetraze(hourly(13), form=form))
    pages = [page async for page in adapter.pages(page_size=2)]
    ids = [o.id for page in pages for o in page]
    assert ids == [r["id"] for r in server.records]  # oldest created first
    assert sorted(server.pages) == list(range(1, 8))
    assert pages[0].total == 13
    assert [p.has_more for p in pages] == [True] * 6 + [False]
    first = server.calls[0].query
    assert (first["sort_by"], first["sort_order"], first["limit"]) == ("created_at", "asc", "2")
    assert "pagination" in pages[0].meta


async def test_list_documented_envelope_fixture(mock: Any, adapter: GetrazeAdapter) -> None:
    body = (FIXTURES / "getraze_list_documented.json").read_text(encoding="utf-8")
    mock.get(LIST_URL, status=200, body=body)
    opps = await collect(adapter.list())
    assert [o.id for o in opps] == ["opp_doc0001", "opp_doc0002"]
    assert opps[0].status is OpportunityStatus.WON
    assert opps[1].amount == Money(amount=Decimal("7500.5"), currency="BRL")


async def test_list_fetches_pages_concurrently_and_in_order(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(20)))
    async with GetrazeAdapter(KEY, concurrency=3, page_size=3) as getraze:
        opps = await collect(getraze.list())
    assert [o.id for o in opps] == [r["id"] for r in server.records]
    assert sorted(server.pages) == list(range(1, 8))


async def test_list_drops_a_record_seen_on_an_earlier_page(
    mock: Any, adapter: GetrazeAdapter
) -> None:
    records = hourly(4)
    pages = [records[0:2], records[1:3], records[3:4]]  # records[1] shifted onto page 2

    def shifting(url: yarl.URL, **kwargs: Any) -> CallbackResult:
        page = int(url.query["page"])
        pagination = {"page": page, "per_page": 2, "total": 4, "total_pages": 3}
        body = {"success": True, "data": pages[page - 1], "pagination": pagination}
        return CallbackResult(status=200, body=json.dumps(body))

    mock.get(LIST_URL, callback=shifting, repeat=True)
    opps = await collect(adapter.list(page_size=2))
    assert [o.id for o in opps] == [r["id"] for r in records]


async def test_list_without_pagination_reads_until_a_short_page(
    mock: Any, adapter: GetrazeAdapter
) -> None:
    records = hourly(5)
    calls: list[int] = []

    def bare(url: yarl.URL, **kwargs: Any) -> CallbackResult:
        page = int(url.query["page"])
        calls.append(page)
        body = {"success": True, "data": records[(page - 1) * 2 : page * 2]}
        return CallbackResult(status=200, body=json.dumps(body))

    mock.get(LIST_URL, callback=bare, repeat=True)
    opps = await collect(adapter.list(page_size=2))
    assert len(opps) == 5
    assert calls == [1, 2, 3]


async def test_list_refuses_a_server_that_ignores_page(mock: Any, adapter: GetrazeAdapter) -> None:
    body = {
        "success": True,
        "data": hourly(2),
        "pagination": {"page": 1, "per_page": 2, "total": 6, "total_pages": 3},
    }
    mock.get(LIST_URL, status=200, body=json.dumps(body), repeat=True)
    with pytest.raises(PaginationError):
        await collect(adapter.list(page_size=2))


async def test_list_bad_record_names_its_path(mock: Any, adapter: GetrazeAdapter) -> None:
    records = hourly(2)
    records[1]["value"] = True
    mock.get(LIST_URL, status=200, body=json.dumps({"success": True, "data": records}))
    with pytest.raises(DecodeError) as info:
        await collect(adapter.list())
    assert info.value.path == "$.data[1].value"
    assert info.value.record_id == records[1]["id"]


@pytest.mark.parametrize(
    ("since", "expected", "pages"),
    [
        (T0 + timedelta(hours=6, minutes=30), [9, 8, 7], [1, 2]),
        (T0 + timedelta(hours=6), [9, 8, 7, 6], [1, 2, 3]),  # inclusive; page 3 shows the end
        (T0 + timedelta(hours=9), [9], [1]),
        (T0 + timedelta(hours=10), [], [1]),
        (T0 - timedelta(hours=1), list(range(9, -1, -1)), [1, 2, 3, 4, 5]),
    ],
)
async def test_updated_since_stops_at_the_bound(
    mock: Any, since: datetime, expected: list[int], pages: list[int]
) -> None:
    server = serve(mock, FakeGetraze(hourly(10)))
    async with GetrazeAdapter(KEY, page_size=2) as getraze:
        opps = await collect(getraze.list(updated_since=since))
    assert [int(o.id[-12:]) for o in opps] == expected
    assert sorted(server.pages) == pages
    query = server.calls[0].query
    assert (query["sort_by"], query["sort_order"]) == ("updated_at", "desc")
    assert "updated_since" not in query


async def test_updated_since_fetches_few_pages_past_the_bound(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(100)))
    async with GetrazeAdapter(KEY, page_size=5, concurrency=8) as getraze:
        opps = await collect(getraze.list(updated_since=T0 + timedelta(hours=40)))
    assert [int(o.id[-12:]) for o in opps] == list(range(99, 39, -1))
    # 12 pages hold the 60 records, page 13 the first older one: no page is wasted when
    # updates come at a steady pace (rounds grow 1, 2, 4, 8 but follow the pace of updates).
    assert sorted(server.pages) == list(range(1, 14))


async def test_updated_since_falls_back_when_the_sort_is_ignored(
    mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    records = hourly(10)
    server = serve(mock, FakeGetraze(records, order=records))  # oldest first, sort ignored
    async with GetrazeAdapter(KEY, page_size=2) as getraze:
        with caplog.at_level(logging.WARNING, logger="close_opps.paging"):
            opps = await collect(getraze.list(updated_since=T0 + timedelta(hours=6)))
    assert [int(o.id[-12:]) for o in opps] == [6, 7, 8, 9]
    assert sorted(server.pages) == [1, 2, 3, 4, 5]
    assert "getraze: the server did not honour the listing's sort order" in caplog.text


async def test_updated_since_falls_back_on_a_later_page(
    mock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    records = hourly(11)
    order = [records[i] for i in (9, 8, 10, 2, 7, 1, 6, 0, 5, 4, 3)]
    server = serve(mock, FakeGetraze(records, order=order))
    async with GetrazeAdapter(KEY, page_size=2) as getraze:
        with caplog.at_level(logging.WARNING, logger="close_opps.paging"):
            opps = await collect(getraze.list(updated_since=T0 + timedelta(hours=7)))
    assert sorted(int(o.id[-12:]) for o in opps) == [7, 8, 9, 10]
    assert sorted(server.pages) == [1, 2, 3, 4, 5, 6]
    assert "offset 2 goes against it" in caplog.text  # page 2


async def test_updated_since_with_another_order_reads_everything(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(10)))
    async with GetrazeAdapter(KEY, page_size=2) as getraze:
        opps = await collect(
            getraze.list(updated_since=T0 + timedelta(hours=7), order_by="updated_at")
        )
    assert [int(o.id[-12:]) for o in opps] == [7, 8, 9]
    assert sorted(server.pages) == [1, 2, 3, 4, 5]
    assert server.calls[0].query["sort_order"] == "asc"


async def test_limit_stops_early(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(20)))
    async with GetrazeAdapter(KEY, page_size=4) as getraze:
        opps = await collect(getraze.list(limit=6))
        assert len(opps) == 6
        assert sorted(server.pages) == [1, 2]
        server.calls.clear()
        opps = await collect(getraze.list(limit=3))
        assert len(opps) == 3
        assert server.pages == [1]
        assert server.calls[0].query["limit"] == "3"
        server.calls.clear()
        assert await collect(getraze.list(limit=0)) == []
        assert server.calls == []


async def test_status_is_filtered_locally(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(10)))
    async with GetrazeAdapter(KEY, page_size=3) as getraze:
        won = await collect(getraze.list(status="won"))
        assert [int(o.id[-12:]) for o in won] == [0, 3, 6, 9]
        assert all("status" not in url.query for url in server.calls)
        assert sorted(server.pages) == [1, 2, 3, 4]
        server.calls.clear()
        some = await collect(getraze.list(status=["open"], limit=2))
        assert [int(o.id[-12:]) for o in some] == [1, 2]
        assert server.pages == [1]


async def test_created_and_updated_before_are_filtered_locally(mock: Any) -> None:
    serve(mock, FakeGetraze(hourly(10)))
    async with GetrazeAdapter(KEY, page_size=4) as getraze:
        opps = await collect(
            getraze.list(
                updated_before=T0 + timedelta(hours=8),
                created_since=T0 + timedelta(minutes=2),
                created_before=T0 + timedelta(minutes=7),
            )
        )
    assert [int(o.id[-12:]) for o in opps] == [2, 3, 4, 5, 6]


async def test_filters_query_and_order_by_reach_the_server(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(3)))
    async with GetrazeAdapter(KEY) as getraze:
        await collect(
            getraze.list(
                query="globex",
                order_by="-value",
                stage_id=UUIDS[0],
                pipeline_id=UUIDS[1],
                campaign_id=UUIDS[2],
                owner_user_id=UUIDS[3],
                company="Globex",
                source="linkedin",
            )
        )
    query = server.calls[0].query
    assert query["search"] == "globex"
    assert (query["sort_by"], query["sort_order"]) == ("value", "desc")
    assert query["stage_id"] == UUIDS[0] and query["pipeline_id"] == UUIDS[1]
    assert query["campaign_id"] == UUIDS[2] and query["owner_user_id"] == UUIDS[3]
    assert query["company"] == "Globex"
    assert "source" not in query  # the server ignores it: the SDK applies it to the records
    assert query["limit"] == "100" and query["page"] == "1"


UUIDS = [f"ffffffff-0000-0000-0000-00000000000{i}" for i in range(4)]


async def test_source_is_applied_to_the_records(mock: Any) -> None:
    records = hourly(4)
    records[1]["source"] = "linkedin"
    records[3]["source"] = "linkedin"
    serve(mock, FakeGetraze(records))
    async with GetrazeAdapter(KEY) as getraze:
        opps = await collect(getraze.list(source="linkedin"))
    assert [o.id for o in opps] == [records[1]["id"], records[3]["id"]]


async def test_page_size_is_capped_at_100(mock: Any) -> None:
    server = serve(mock, FakeGetraze(hourly(3)))
    async with GetrazeAdapter(KEY, page_size=500) as getraze:
        await collect(getraze.list())
        await collect(getraze.list(page_size=1000))
    assert [url.query["limit"] for url in server.calls] == ["100", "100"]


async def test_owned_parameters_are_refused(adapter: GetrazeAdapter) -> None:
    with pytest.raises(ValueError, match="page is managed"):
        await collect(adapter.list(page=2))
    with pytest.raises(ValueError, match="sort_by is managed"):
        await collect(adapter.list(sort_by="title"))
    with pytest.raises(ValueError, match="sort_order is managed"):
        await collect(adapter.list(sort_order="asc"))
    with pytest.raises(ValueError, match="not both"):
        await collect(adapter.list(query="a", search="b"))
    with pytest.raises(ValueError, match="order_by"):
        await collect(adapter.list(order_by="-"))


async def test_list_error_envelope(mock: Any, adapter: GetrazeAdapter) -> None:
    case = next(c for c in load_fixture("getraze_errors.json")["cases"] if c["status"] == 403)
    mock.get(LIST_URL, status=403, body=json.dumps(case["body"]), headers=case["headers"])
    with pytest.raises(PermissionDeniedError) as info:
        await collect(adapter.list())
    assert info.value.code == "INSUFFICIENT_PERMISSIONS"
    assert info.value.body["error"]["required_permission"] == "opportunities:read"


async def test_updated_since_on_the_recorded_pages_sees_the_ignored_sort(
    mock: Any, adapter: GetrazeAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """The recorded pages are sorted by created_at: page 2 goes up in updated_at."""

    def replay(url: yarl.URL, **kwargs: Any) -> CallbackResult:
        case = load_fixture(f"getraze_list_page{url.query['page']}.json")
        return CallbackResult(status=200, body=json.dumps(case["body"]), headers=case["headers"])

    mock.get(LIST_URL, callback=replay, repeat=True)
    with caplog.at_level(logging.WARNING, logger="close_opps.getraze"):
        opps = await collect(
            adapter.list(updated_since=datetime(2026, 1, 11, 10, tzinfo=UTC), page_size=2)
        )
    assert sorted(o.id[-1] for o in opps) == ["1", "2", "3"]
    assert "did not honour" in caplog.text
