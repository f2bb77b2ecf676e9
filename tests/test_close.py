"""The Close adapter: decoding from the vendor's own payloads, and request-level behaviour."""

from __future__ import annotations

import copy
import logging
import operator
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from close_opps import (
    AuthenticationError,
    CloseAdapter,
    Contact,
    DecodeError,
    InvalidRequestError,
    Money,
    NotFoundError,
    Opportunity,
    OpportunityStatus,
    PaginationError,
    RateLimitError,
    Ref,
    ServerError,
    TransportError,
)
from close_opps.adapters.close import close_to_opportunity
from tests.conftest import load_fixture

BASE = "https://api.close.com/api/v1"
KEY = "api_SECRETSECRET_close"
LIST_URL = re.compile(r"^https://api\.close\.com/api/v1/opportunity/\?.*$")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, sec, us, tzinfo=UTC)


def query_of(url: URL | str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(URL(str(url)).query_string).items()}


def calls(mocked: aioresponses) -> list[tuple[str, URL, dict[str, Any]]]:
    return [(m, u, c.kwargs) for (m, u), cs in mocked.requests.items() for c in cs]


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


# ----------------------------------------------------------------------------- decoding


class TestDecodeVendorExamples:
    page = load_fixture("close_list_page.json")

    def test_first_record_field_by_field(self) -> None:
        raw = self.page["data"][0]
        opp = close_to_opportunity(raw)
        assert opp == Opportunity(
            provider="close",
            id="oppo_KXyJj2PT74U1wOPvhBDO37jCC89mmrnoW0DylcDDWrL",
            name="Bluth Company (Sample Lead)",
            status=OpportunityStatus.OPEN,
            status_label="Active",
            stage=Ref(id="stat_4ZdiZqcSIkoGVnNOyxiEY58eTGQmFNG3LPlEVQ4V7Nk", name="Active"),
            pipeline=Ref(id="pipe_04fC628PVB0HjK2Qq5EqEf", name="Sales"),
            amount=Money(amount=Decimal("3000"), currency="USD"),
            value_period="one_time",
            confidence=75,
            owner=Ref(id="user_N6KhMpzHRCYQHdn4gRNIFNN5JExnsrprKA6ekxM63XA", name="John Doe"),
            company=Ref(
                id="lead_s6vHFTK1TSRoH6otXOexWDO9jM4xyb1kELHDoU7Fdsp",
                name="Bluth Company (Sample Lead)",
            ),
            contact=None,
            note="Gob's ready to buy a $3,000 suit.",
            created_at=utc(2013, 2, 1, 0, 54, 51, 321000),
            updated_at=utc(2013, 2, 1, 0, 54, 51, 321000),
            raw=raw,
        )
        assert opp.raw == raw

    @pytest.mark.parametrize(
        "index,amount,period",
        [(0, "3000", "one_time"), (1, "500", "annual"), (2, "50", "monthly")],
    )
    def test_values_are_cents(self, index: int, amount: str, period: str) -> None:
        opp = close_to_opportunity(self.page["data"][index])
        assert opp.amount == Money(amount=Decimal(amount), currency="USD")
        assert opp.value_period == period

    def test_custom_fields(self) -> None:
        assert close_to_opportunity(self.page["data"][2]).custom_fields == {
            "cf_j0P7kHmgFTZZnYBFtyPSZ3uQw4dpW8xKcW7Krps8atj": "https://www.example.com/contract.pdf"
        }
        assert close_to_opportunity(self.page["data"][0]).custom_fields == {}

    def test_every_record_is_aware_and_hashable(self) -> None:
        opps = {close_to_opportunity(r) for r in self.page["data"]}
        assert len(opps) == 3
        assert all(o.created_at.tzinfo is not None for o in opps)


class TestDecodeRetrieveSchema:
    raw = load_fixture("close_retrieve_full.json")

    def test_every_mapped_field(self) -> None:
        opp = close_to_opportunity(self.raw)
        assert opp.id == "oppo_FullSchema0000000000000000000000000000001"
        assert opp.status is OpportunityStatus.WON
        assert opp.status_label == "Won"
        assert opp.amount == Money(amount=Decimal("2000"), currency="EUR")
        assert opp.value_period == "monthly"
        assert opp.confidence == 90
        assert opp.pipeline == Ref(id="pipe_04fC628PVB0HjK2Qq5EqEf", name="Renewals")
        assert opp.contact == Contact(
            id="cont_9sDk2Lq1",
            name="Lucille Bluth",
            email="lucille@bluth.example",
            phone="+16505550100",
        )
        assert opp.note == "Annual renewal, signed."
        assert opp.created_at == utc(2025, 3, 4, 9, 15, 0, 123456)
        # -04:00 converted to UTC
        assert opp.updated_at == utc(2025, 6, 30, 21, 45, 12, 654321)
        assert opp.updated_at.utcoffset() == timedelta(0)

    def test_date_won_is_midnight_utc(self) -> None:
        opp = close_to_opportunity(self.raw)
        assert opp.won_at == utc(2025, 6, 30)
        assert opp.closed_at == opp.won_at
        assert opp.lost_at is None

    def test_lost(self) -> None:
        raw = {**self.raw, "status_type": "lost", "date_won": None}
        raw["date_lost"] = "2025-07-01T08:00:00+02:00"
        opp = close_to_opportunity(raw)
        assert opp.status is OpportunityStatus.LOST
        assert opp.lost_at == opp.closed_at == utc(2025, 7, 1, 6)

    def test_custom_fields_and_raw(self) -> None:
        opp = close_to_opportunity(self.raw)
        assert opp.custom_fields == {
            "cf_contract_url": "https://www.example.com/contract.pdf",
            "cf_seats": 25,
        }
        assert opp.raw == self.raw

    def test_unknown_fields_and_statuses_never_fail(self) -> None:
        raw = {**self.raw, "brand_new_field": {"x": [1, 2]}, "status_type": "paused"}
        opp = close_to_opportunity(raw)
        assert opp.status is OpportunityStatus.OPEN
        assert opp.raw["brand_new_field"] == {"x": [1, 2]}

    def test_result_is_immutable(self) -> None:
        opp = close_to_opportunity(self.raw)
        with pytest.raises(AttributeError):
            opp.name = "x"  # type: ignore[misc]
        with pytest.raises(TypeError):
            opp.raw["id"] = "other"  # type: ignore[index]


class TestDecodeBadInput:
    raw = load_fixture("close_list_page.json")["data"][0]

    def test_missing_id(self) -> None:
        raw = {k: v for k, v in self.raw.items() if k != "id"}
        with pytest.raises(DecodeError) as info:
            close_to_opportunity(raw, path="$.data[0]")
        assert info.value.path == "$.data[0].id"
        assert info.value.provider == "close"
        assert "close" in str(info.value) and "$.data[0].id" in str(info.value)

    @pytest.mark.parametrize(
        "field,value",
        [
            ("id", 12),
            ("confidence", "high"),
            ("value", "lots"),
            ("date_updated", "yesterday"),
            ("date_won", "2025-13-45"),
            ("lead_name", ["a"]),
            ("lead_primary_phone", "555"),
        ],
    )
    def test_wrong_types_name_the_field(self, field: str, value: Any) -> None:
        raw = {**self.raw, field: value}
        with pytest.raises(DecodeError) as info:
            close_to_opportunity(raw)
        assert info.value.path is not None and info.value.path.startswith(f"$.{field}")

    def test_error_names_the_record(self) -> None:
        with pytest.raises(DecodeError) as info:
            close_to_opportunity({**self.raw, "confidence": "high"})
        assert info.value.record_id == self.raw["id"]
        assert self.raw["id"] in str(info.value)

    def test_not_an_object(self) -> None:
        with pytest.raises(DecodeError, match="expected an object"):
            close_to_opportunity(["not", "a", "record"])  # type: ignore[arg-type]


# ------------------------------------------------------------------------- get, requests


class TestGet:
    async def test_get_sends_basic_auth_and_decodes(self, mocked: aioresponses) -> None:
        raw = load_fixture("close_retrieve_full.json")
        mocked.get(f"{BASE}/opportunity/{raw['id']}/", payload=raw)
        async with CloseAdapter(KEY) as close:
            opp = await close.get(raw["id"])
        assert opp.id == raw["id"]
        ((_, _, kwargs),) = calls(mocked)
        assert kwargs["headers"]["Authorization"] == aiohttp.encode_basic_auth(KEY)
        assert kwargs["timeout"].total == 30.0

    async def test_fields_always_include_what_the_mapping_needs(self, mocked: aioresponses) -> None:
        raw = load_fixture("close_list_page.json")["data"][0]
        mocked.get(re.compile(r".*/opportunity/oppo_1/\?.*"), payload=raw)
        async with CloseAdapter(KEY) as close:
            await close.get("oppo_1", fields=["value", "note"])
        ((_, url, _),) = calls(mocked)
        assert query_of(url)["_fields"] == "id,date_created,date_updated,value,note"

    @pytest.mark.parametrize("bad_id", ["../../me", "a/b", "a?x=1", "a#b"])
    async def test_ids_cannot_reach_another_endpoint(
        self, mocked: aioresponses, bad_id: str
    ) -> None:
        mocked.get(re.compile(r".*"), status=404, payload={"error": "not found"})
        async with CloseAdapter(KEY) as close:
            with pytest.raises(NotFoundError):
                await close.get(bad_id)
        ((_, url, _),) = calls(mocked)
        assert url.raw_path.startswith("/api/v1/opportunity/")
        assert url.raw_path.count("/") == 5  # /api/v1/opportunity/<one segment>/
        assert url.query_string == "" and url.fragment == ""

    async def test_not_found(self, mocked: aioresponses) -> None:
        body = {"error": "Empty query: Opportunity matching query does not exist."}
        mocked.get(f"{BASE}/opportunity/oppo_x/", status=404, payload=body)
        async with CloseAdapter(KEY) as close:
            with pytest.raises(NotFoundError) as info:
                await close.get("oppo_x")
        assert info.value.status == 404
        assert info.value.message == body["error"]
        assert info.value.body == body

    async def test_bad_key(self, mocked: aioresponses) -> None:
        mocked.get(f"{BASE}/opportunity/oppo_x/", status=401, payload={"error": "Unauthorized"})
        async with CloseAdapter(KEY) as close:
            with pytest.raises(AuthenticationError) as info:
                await close.get("oppo_x")
        assert KEY not in str(info.value) and KEY not in repr(info.value)

    async def test_html_body_is_a_decode_error(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/oppo_x/",
            body="<html><body>Maintenance</body></html>",
            content_type="text/html",
        )
        async with CloseAdapter(KEY) as close:
            with pytest.raises(DecodeError, match="not JSON"):
                await close.get("oppo_x")

    async def test_429_then_success_honours_ratelimit_reset(
        self, mocked: aioresponses, caplog: pytest.LogCaptureFixture
    ) -> None:
        raw = load_fixture("close_list_page.json")["data"][0]
        url = f"{BASE}/opportunity/oppo_x/"
        mocked.get(
            url, status=429, headers={"RateLimit": "limit=100, remaining=0, reset=1.5"}, body=""
        )
        mocked.get(url, payload=raw, headers={"RateLimit": "limit=100, remaining=99, reset=2"})
        with caplog.at_level(logging.DEBUG, logger="close_opps"):
            async with CloseAdapter(KEY) as close:
                opp = await close.get("oppo_x")
                assert close.rate_limit is not None
                assert (close.rate_limit.limit, close.rate_limit.remaining) == (100, 99)
        assert opp.id == raw["id"]
        assert len(calls(mocked)) == 2
        assert "retrying in 1.50 s" in caplog.text
        assert KEY not in caplog.text

    async def test_503_then_success(self, mocked: aioresponses) -> None:
        raw = load_fixture("close_list_page.json")["data"][0]
        url = f"{BASE}/opportunity/oppo_x/"
        mocked.get(url, status=503, body="")
        mocked.get(url, payload=raw)
        async with CloseAdapter(KEY) as close:
            assert (await close.get("oppo_x")).id == raw["id"]
        assert len(calls(mocked)) == 2

    async def test_retries_run_out(self, mocked: aioresponses) -> None:
        url = f"{BASE}/opportunity/oppo_x/"
        mocked.get(url, status=502, body="Bad gateway", repeat=True)
        async with CloseAdapter(KEY, max_retries=2) as close:
            with pytest.raises(ServerError) as info:
                await close.get("oppo_x")
        assert info.value.status == 502
        assert len(calls(mocked)) == 3

    async def test_max_retries_zero_turns_retries_off(self, mocked: aioresponses) -> None:
        mocked.get(f"{BASE}/opportunity/oppo_x/", status=503, body="", repeat=True)
        async with CloseAdapter(KEY, max_retries=0) as close:
            with pytest.raises(ServerError):
                await close.get("oppo_x")
        assert len(calls(mocked)) == 1

    async def test_a_wait_over_the_cap_raises_at_once(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/oppo_x/",
            status=429,
            headers={"Retry-After": "3419"},
            body="",
            repeat=True,
        )
        async with CloseAdapter(KEY, max_retry_wait=60) as close:
            with pytest.raises(RateLimitError) as info:
                await close.get("oppo_x")
        assert info.value.retry_after == 3419
        assert len(calls(mocked)) == 1

    async def test_connection_errors_become_transport_errors(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/oppo_x/",
            exception=aiohttp.ServerDisconnectedError(),
            repeat=True,
        )
        async with CloseAdapter(KEY, max_retries=1) as close:
            with pytest.raises(TransportError) as info:
                await close.get("oppo_x")
        assert isinstance(info.value.__cause__, aiohttp.ServerDisconnectedError)
        assert len(calls(mocked)) == 2

    async def test_cross_origin_redirect_is_not_followed(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/oppo_x/",
            status=302,
            headers={"Location": "https://evil.example/steal"},
            body="",
        )
        async with CloseAdapter(KEY, max_retries=0) as close:
            with pytest.raises(TransportError, match="another origin"):
                await close.get("oppo_x")
        assert [str(u) for _, u, _ in calls(mocked)] == [f"{BASE}/opportunity/oppo_x/"]

    async def test_same_origin_redirect_is_followed(self, mocked: aioresponses) -> None:
        raw = load_fixture("close_list_page.json")["data"][0]
        mocked.get(
            f"{BASE}/opportunity/oppo_old/",
            status=301,
            headers={"Location": "/api/v1/opportunity/oppo_new/"},
            body="",
        )
        mocked.get(f"{BASE}/opportunity/oppo_new/", payload=raw)
        async with CloseAdapter(KEY) as close:
            opp = await close.get("oppo_old")
        assert opp.id == raw["id"]
        urls = [str(u) for _, u, _ in calls(mocked)]
        assert urls == [f"{BASE}/opportunity/oppo_old/", f"{BASE}/opportunity/oppo_new/"]


class TestSafety:
    def test_repr_hides_the_key(self) -> None:
        close = CloseAdapter(KEY)
        assert KEY not in repr(close) and KEY not in str(close)
        assert "***" in repr(close)

    def test_plain_http_is_refused_off_loopback(self) -> None:
        with pytest.raises(ValueError, match="plain http"):
            CloseAdapter(KEY, base_url="http://api.close.com/api/v1")

    def test_bad_options(self) -> None:
        with pytest.raises(ValueError):
            CloseAdapter("")
        with pytest.raises(ValueError):
            CloseAdapter(KEY, timeout=0)
        with pytest.raises(ValueError):
            CloseAdapter(KEY, max_retries=-1)
        with pytest.raises(ValueError):
            CloseAdapter(KEY, page_size=0)

    async def test_caller_session_is_left_open(self, mocked: aioresponses) -> None:
        raw = load_fixture("close_list_page.json")["data"][0]
        mocked.get(f"{BASE}/opportunity/oppo_x/", payload=raw)
        async with aiohttp.ClientSession() as session:
            async with CloseAdapter(KEY, session=session) as close:
                await close.get("oppo_x")
            assert not session.closed


# --------------------------------------------------------------------------- listing


BOUNDS = {
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
}


class FakeClose:
    """Close's list endpoint over a fixed data set, for aioresponses callbacks.

    Orders by ``_order_by`` (ties by id), filters on ``date_updated``/``date_created`` with
    ``__gte/gt/lte/lt`` and
    ``status_type(__in)``, and enforces a maximum ``_skip`` and ``_limit`` with Close's 400s.
    """

    def __init__(self, records: list[dict[str, Any]], *, max_skip: int, max_limit: int) -> None:
        self.records = records
        self.max_skip = max_skip
        self.max_limit = max_limit
        self.seen: list[dict[str, str]] = []

    def __call__(self, url: URL, **kwargs: Any) -> CallbackResult:
        q = query_of(url)
        self.seen.append(q)
        skip, limit = int(q.get("_skip", 0)), int(q.get("_limit", 100))
        if limit > self.max_limit:
            message = (
                "The limit you set is larger than the maximum limit for this resource "
                f"(max_limit = {self.max_limit}). Please refine your search query."
            )
            return CallbackResult(status=400, payload={"error": message})
        if skip > self.max_skip:
            message = (
                "The skip you set is larger than the maximum skip for this resource "
                f"(max_skip = {self.max_skip}). Please refine your search query."
            )
            return CallbackResult(status=400, payload={"error": message})
        rows = self.records
        for field in ("date_updated", "date_created"):
            for op, keep in BOUNDS.items():
                if f"{field}__{op}" in q:
                    bound = datetime.fromisoformat(q[f"{field}__{op}"])
                    rows = [r for r in rows if keep(datetime.fromisoformat(r[field]), bound)]
        types = q.get("status_type__in", q.get("status_type"))
        if types:
            rows = [r for r in rows if r["status_type"] in types.split(",")]
        order = q.get("_order_by", "-date_created")
        key = order.lstrip("-")
        rows = sorted(rows, key=lambda r: (r[key], r["id"]), reverse=order.startswith("-"))
        page = rows[skip : skip + limit]
        return CallbackResult(
            payload={
                "data": page,
                "has_more": skip + limit < len(rows),
                "total_results": len(rows),
                "total_value_one_time": sum(r["value"] for r in rows),
            }
        )


def make_records(n: int, *, same_time_every: int = 7) -> list[dict[str, Any]]:
    """``n`` Close records whose ``date_updated`` repeats in runs of ``same_time_every``."""
    template = load_fixture("close_list_page.json")["data"][0]
    records = []
    for i in range(n):
        record = copy.deepcopy(template)
        when = utc(2025, 1, 1) + timedelta(minutes=i // same_time_every)
        record.update(
            id=f"oppo_{i:05d}",
            date_updated=when.isoformat(),
            date_created=when.isoformat(),
            value=100 * (i + 1),
            status_type=("active", "won", "lost")[i % 3],
        )
        records.append(record)
    return records


async def list_all(close: CloseAdapter, **kwargs: Any) -> list[Opportunity]:
    return [opp async for opp in close.list(**kwargs)]


class TestList:
    async def test_every_record_exactly_once_in_order(self, mocked: aioresponses) -> None:
        fake = FakeClose(make_records(95), max_skip=10_000, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=10, concurrency=3) as close:
            got = await list_all(close)
        assert [o.id for o in got] == [f"oppo_{i:05d}" for i in range(95)]
        assert sorted(int(q["_skip"]) for q in fake.seen) == list(range(0, 100, 10))

    async def test_limit_fetches_no_page_more_than_needed(self, mocked: aioresponses) -> None:
        fake = FakeClose(make_records(95), max_skip=10_000, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=10, concurrency=4) as close:
            got = await list_all(close, limit=25)
        assert len(got) == 25
        assert sorted(int(q["_skip"]) for q in fake.seen) == [0, 10, 20]

    async def test_small_limit_is_one_small_page(self, mocked: aioresponses) -> None:
        fake = FakeClose(make_records(95), max_skip=10_000, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY) as close:
            got = await list_all(close, limit=3)
        assert [o.id for o in got] == ["oppo_00000", "oppo_00001", "oppo_00002"]
        assert [(q["_skip"], q["_limit"]) for q in fake.seen] == [("0", "3")]

    async def test_filters_reach_the_server(self, mocked: aioresponses) -> None:
        fake = FakeClose(make_records(30), max_skip=10_000, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        since = utc(2025, 1, 1, 0, 2)
        async with CloseAdapter(KEY) as close:
            got = await list_all(
                close,
                updated_since=since,
                status=[OpportunityStatus.WON, "lost"],
                lead_id="lead_1",
                user_id__in=["user_a", "user_b"],
                lead_saved_search_id="save_9",
                query="note:important",
            )
        (q,) = fake.seen
        assert q["date_updated__gte"] == "2025-01-01T00:02:00+00:00"
        assert q["status_type__in"] == "lost,won"
        assert q["lead_id"] == "lead_1"
        assert q["user_id__in"] == "user_a,user_b"
        assert q["lead_saved_search_id"] == "save_9"
        assert q["query"] == "note:important"
        # updated_since is inclusive: the records updated exactly at the bound are in
        assert min(o.updated_at for o in got) == since
        assert {o.status for o in got} == {OpportunityStatus.WON, OpportunityStatus.LOST}

    async def test_single_status(self, mocked: aioresponses) -> None:
        fake = FakeClose(make_records(9), max_skip=10_000, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY) as close:
            got = await list_all(close, status="open")
        assert fake.seen[0]["status_type"] == "active"
        assert {o.status for o in got} == {OpportunityStatus.OPEN}

    async def test_skip_limit_mid_listing_loses_and_repeats_nothing(
        self, mocked: aioresponses
    ) -> None:
        # 7 records share each date_updated; the server refuses any _skip over 20.
        records = make_records(203, same_time_every=7)
        fake = FakeClose(records, max_skip=20, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=10, concurrency=2) as close:
            got = await list_all(close)
        assert [o.id for o in got] == [r["id"] for r in records]
        assert len({o.id for o in got}) == 203
        resumed = [q for q in fake.seen if "date_created__gte" in q]
        assert resumed  # the listing moved its bound instead of failing
        # once the server named its maximum, no later window asks past it
        assert max(int(q["_skip"]) for q in resumed) <= 20

    async def test_edits_during_the_listing_skip_nothing(self, mocked: aioresponses) -> None:
        # While the listing runs, the CRM is edited: after each page, an already listed
        # record gets a new date_updated. Ordered by date_updated, every edit would move a
        # record to the end and shift the rest back, so the next offset page would miss one.
        records = make_records(60, same_time_every=3)
        fake = FakeClose(records, max_skip=10_000, max_limit=100)
        edited = iter(records[::7])

        def edit_after_each_page(url: URL, **kwargs: Any) -> CallbackResult:
            result = fake(url, **kwargs)
            record = next(edited, None)
            if record is not None:
                record["date_updated"] = utc(2026, 1, 1).isoformat()
            return result

        mocked.get(LIST_URL, callback=edit_after_each_page, repeat=True)
        async with CloseAdapter(KEY, page_size=10, concurrency=1) as close:
            got = await list_all(close)
        assert sorted(o.id for o in got) == sorted(r["id"] for r in records)
        assert {q["_order_by"] for q in fake.seen} == {"date_created"}

    async def test_skip_limit_with_descending_order(self, mocked: aioresponses) -> None:
        records = make_records(64, same_time_every=5)
        fake = FakeClose(records, max_skip=15, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=5) as close:
            got = await list_all(close, order_by="-date_updated")
        assert len(got) == 64 and len({o.id for o in got}) == 64
        assert [o.updated_at for o in got] == sorted((o.updated_at for o in got), reverse=True)

    async def test_skip_limit_on_an_unresumable_order_is_a_clear_error(
        self, mocked: aioresponses
    ) -> None:
        fake = FakeClose(make_records(50), max_skip=20, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=10) as close:
            with pytest.raises(PaginationError, match="order"):
                await list_all(close, order_by="value")

    async def test_too_many_records_at_one_instant_is_a_clear_error(
        self, mocked: aioresponses
    ) -> None:
        fake = FakeClose(make_records(60, same_time_every=60), max_skip=20, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=10) as close:
            with pytest.raises(PaginationError, match="share"):
                await list_all(close)
        assert len(fake.seen) < 20  # no endless loop

    async def test_page_size_over_the_maximum_uses_the_named_one(
        self, mocked: aioresponses
    ) -> None:
        fake = FakeClose(make_records(45), max_skip=10_000, max_limit=20)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=100) as close:
            got = await list_all(close)
            assert len(got) == 45
            later = await list_all(close, limit=5)
        assert len(later) == 5
        limits = [int(q["_limit"]) for q in fake.seen]
        assert limits[0] == 100 and set(limits[1:]) <= {20, 5}

    async def test_pages_expose_totals_and_aggregates(self, mocked: aioresponses) -> None:
        fake = FakeClose(make_records(25), max_skip=10_000, max_limit=100)
        mocked.get(LIST_URL, callback=fake, repeat=True)
        async with CloseAdapter(KEY, page_size=10) as close:
            pages = [page async for page in close.pages()]
        assert [len(p) for p in pages] == [10, 10, 5]
        assert {p.total for p in pages} == {25}
        assert [p.has_more for p in pages] == [True, True, False]
        assert pages[0].meta["total_value_one_time"] == sum(100 * (i + 1) for i in range(25))
        assert "data" not in pages[0].meta

    async def test_a_bad_record_fails_the_listing_naming_it(self, mocked: aioresponses) -> None:
        records = make_records(5)
        records[3]["date_updated"] = None
        mocked.get(LIST_URL, payload={"data": records, "has_more": False, "total_results": 5})
        async with CloseAdapter(KEY) as close:
            with pytest.raises(DecodeError) as info:
                await list_all(close)
        assert info.value.path == "$.data[3].date_updated"
        assert info.value.record_id == "oppo_00003"

    @pytest.mark.parametrize(
        "body",
        [
            {"has_more": False},
            {"data": {"a": 1}, "has_more": False},
            {"data": [], "has_more": "no"},
            ["not", "an", "object"],
        ],
    )
    async def test_malformed_list_bodies(self, mocked: aioresponses, body: Any) -> None:
        mocked.get(LIST_URL, payload=body)
        async with CloseAdapter(KEY) as close:
            with pytest.raises(DecodeError):
                await list_all(close)

    async def test_arguments_are_checked_before_any_request(self) -> None:
        close = CloseAdapter(KEY)
        with pytest.raises(ValueError, match="timezone-aware"):
            close.list(updated_since=datetime(2025, 1, 1))
        with pytest.raises(ValueError, match="status"):
            close.list(status="pending")
        with pytest.raises(ValueError, match="limit"):
            close.list(limit=-1)
        await close.aclose()

    async def test_owned_parameters_are_refused(self, mocked: aioresponses) -> None:
        async with CloseAdapter(KEY) as close:
            with pytest.raises(ValueError, match="_skip"):
                await list_all(close, _skip=5)

    async def test_invalid_filter_is_an_invalid_request(self, mocked: aioresponses) -> None:
        mocked.get(LIST_URL, status=400, payload={"error": "Invalid value for status_type"})
        async with CloseAdapter(KEY) as close:
            with pytest.raises(InvalidRequestError, match="status_type"):
                await list_all(close)
