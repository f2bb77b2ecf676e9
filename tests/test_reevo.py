"""The Reevo adapter: value-type decoding, mapping, and request-level behaviour."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from aioresponses import aioresponses
from yarl import URL

from close_opps import (
    AuthenticationError,
    Contact,
    DecodeError,
    InvalidRequestError,
    Money,
    NotFoundError,
    Opportunity,
    OpportunityStatus,
    PaginationError,
    Ref,
    ServerError,
)
from close_opps.adapters._reevo_values import (
    VALUE_DECODERS,
    AccountDomain,
    Address,
    ContactEmail,
    ContactPhoneNumber,
    Option,
    RecordReference,
    Stage,
    decode_attribute,
)
from close_opps.adapters.reevo import ReevoAdapter, ReevoDialect, reevo_to_opportunity
from close_opps.sandbox import Fault, ReevoOptions, Sandbox
from tests.conftest import load_fixture

BASE = "https://api.reevo.ai/api/v2"
QUERY_URL = f"{BASE}/opportunity/_query"
KEY = "reevo_SECRET_key_0123456789"
OPP_ID = "5f0c9e2a-7b1d-4c3e-9a8f-2d6b4e1c7a90"
USER = "0b6f3c1e-8d2a-4f5b-9c7e-1a2b3c4d5e6f"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def env(value: Any, value_type: str) -> dict[str, Any]:
    return {"value": value, "value_type": value_type}


def record(record_id: str = OPP_ID, /, **attributes: Any) -> dict[str, Any]:
    """A minimal Reevo record with the given attributes (envelopes, as sent)."""
    return {
        "id": record_id,
        "created_at": "2025-03-14T09:26:53Z",
        "updated_at": "2025-06-02T16:40:11Z",
        "record_type": "opportunity",
        "attributes": attributes,
    }


def fixture_record(name: str = "reevo_get.json") -> dict[str, Any]:
    data: dict[str, Any] = load_fixture(name)["data"]
    return data


def post_bodies(mocked: aioresponses) -> list[dict[str, Any]]:
    return [call.kwargs["json"] for call in mocked.requests.get(("POST", URL(QUERY_URL)), [])]


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


# ----------------------------------------------------------------------------- mapping


class TestMapping:
    def test_documented_record_field_by_field(self) -> None:
        raw = fixture_record()
        opp = reevo_to_opportunity(raw)
        assert opp.provider == "reevo"
        assert opp.id == OPP_ID
        assert opp.name == "Northwind Traders - Analytics Platform"
        assert opp.status is OpportunityStatus.OPEN
        assert opp.status_label == "Proposal"
        assert opp.stage == Ref(id="a1c2e3f4-5b6d-4e7f-8a9b-0c1d2e3f4a5b", name="Proposal")
        assert opp.pipeline is None
        assert opp.amount == Money(amount=Decimal("48500.00"), currency="USD")
        assert opp.value_period is None
        assert opp.confidence == 60  # closing_probability "0.6"
        assert opp.owner == Ref(id=USER)
        assert opp.company == Ref(id="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
        assert opp.contact == Contact(id="4d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a")
        assert opp.note == "Send revised proposal with 3-year pricing to procurement"
        assert opp.source == "manual"
        assert opp.created_at == utc(2025, 3, 14, 9, 26, 53)
        assert opp.updated_at == utc(2025, 6, 2, 16, 40, 11)
        assert opp.closed_at is None
        assert opp.won_at is None
        assert opp.lost_at is None
        assert opp.expected_close_at == utc(2025, 7, 31)
        assert opp.raw == raw

    def test_custom_fields_are_the_unused_attributes_decoded(self) -> None:
        raw = fixture_record()
        opp = reevo_to_opportunity(raw)
        used = {
            "id",
            "created_at",
            "updated_at",
            "display_name",
            "status",
            "outcome",
            "stage",
            "amount",
            "owner_user_id",
            "account_id",
            "primary_contact_id",
            "next_step_details",
            "created_source",
            "closed_at",
            "anticipated_closing_at",
        }
        assert set(opp.custom_fields) == set(raw["attributes"]) - used
        custom = opp.custom_fields
        assert custom["organization_id"] == uuid.UUID("b7e3a1d2-4c5f-4e6a-8b9c-0d1e2f3a4b5c")
        assert custom["forecast_weighted_amount"] == Money(
            amount=Decimal("29100.00"), currency="USD"
        )
        assert custom["next_meeting_date"] == utc(2025, 6, 5, 14, 30)
        assert custom["target_go_live_date"] is None
        assert custom["type_id"] == Option(
            id="c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
            display_value="New Business",
            api_name="new_business",
            color="#3B82F6",
        )
        assert custom["competitors_mentioned_other"] == ("Contoso BI", "Fabrikam Insights")
        assert custom["participant_user_id_list"] == (
            RecordReference(id=USER, type="user"),
            RecordReference(id="7c9d8e1f-2a3b-4c5d-8e6f-9a0b1c2d3e4f", type="user"),
        )
        assert custom["closed_by_user_id"] is None

    def test_won_record(self) -> None:
        opp = reevo_to_opportunity(fixture_record("reevo_get_won.json"))
        assert opp.status is OpportunityStatus.WON
        assert opp.closed_at == utc(2025, 4, 21, 18, 30)
        assert opp.won_at == opp.closed_at
        assert opp.lost_at is None
        assert opp.status_label == "Closed Won"
        assert opp.confidence == 100  # closing_probability "100": a percentage
        # the code arrived under "currency", lower-cased
        assert opp.amount == Money(amount=Decimal("1234.56"), currency="EUR")
        assert opp.note is None
        assert opp.custom_fields["health_score"] == Decimal("87.5")
        assert opp.custom_fields["is_strategic"] is True
        assert opp.custom_fields["renewal_date"] == date(2026, 4, 21)
        assert opp.custom_fields["closed_won_custom_detail"] == "Signed after a two-week pilot"

    def test_the_verbatim_documented_example_fails_on_its_placeholder_amounts(self) -> None:
        # The vendor's page shows "<string>" where money goes: not a decimal, so not a record.
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(fixture_record("reevo_get_documented.json"))
        error = caught.value
        assert error.path == "$.data.attributes.amount.value.amount"
        assert error.record_id == "3c90c3cc-0d44-4b50-8888-8dd25736052a"
        assert "forecast_weighted_amount" in error.message  # every problem is listed

    def test_currency_is_exact(self) -> None:
        opp = reevo_to_opportunity(record(amount=env({"amount": "1234.56"}, "currency")))
        assert opp.amount == Money(amount=Decimal("1234.56"), currency=None)
        assert opp.amount is not None
        assert opp.amount.amount.as_tuple() == Decimal("1234.56").as_tuple()

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (
                {"amount": "0.10", "currency_code": "BRL"},
                Money(amount=Decimal("0.10"), currency="BRL"),
            ),
            ({"amount": "99", "currency": "gbp"}, Money(amount=Decimal("99"), currency="GBP")),
            ({"amount": Decimal("10.5")}, Money(amount=Decimal("10.5"))),
            ({"amount": 7}, Money(amount=Decimal(7))),
            ({"amount": None, "currency_code": "USD"}, None),
            (None, None),
        ],
    )
    def test_currency_forms(self, value: Any, expected: Money | None) -> None:
        opp = reevo_to_opportunity(record(amount=env(value, "currency")))
        assert opp.amount == expected

    def test_amount_as_a_plain_number(self) -> None:
        opp = reevo_to_opportunity(record(amount=env("5000", "number")))
        assert opp.amount == Money(amount=Decimal("5000"))

    @pytest.mark.parametrize(
        ("outcome", "status", "closed_at", "expected"),
        [
            (None, "open", None, OpportunityStatus.OPEN),
            (None, None, None, OpportunityStatus.OPEN),
            ("won", "closed", "2025-05-01T10:00:00Z", OpportunityStatus.WON),
            ("lost", "closed", "2025-05-01T10:00:00Z", OpportunityStatus.LOST),
            ("WON", None, None, OpportunityStatus.WON),  # outcome says it, whatever else
            ("won", "open", None, OpportunityStatus.WON),
            (None, "closed", "2025-05-01T10:00:00Z", OpportunityStatus.LOST),  # closed, not won
            (None, "closed", None, OpportunityStatus.LOST),
            (None, None, "2025-05-01T10:00:00Z", OpportunityStatus.LOST),  # closed_at alone
            (None, "open", "2025-05-01T10:00:00Z", OpportunityStatus.OPEN),  # reopened
            ("pending", "open", None, OpportunityStatus.OPEN),  # unknown outcome: ignored
            (None, "archived", "2025-05-01T10:00:00Z", OpportunityStatus.LOST),  # unknown status
            (None, "archived", None, OpportunityStatus.OPEN),
        ],
    )
    def test_status(
        self,
        outcome: str | None,
        status: str | None,
        closed_at: str | None,
        expected: OpportunityStatus,
    ) -> None:
        opp = reevo_to_opportunity(
            record(
                outcome=env(outcome, "enum"),
                status=env(status, "enum"),
                closed_at=env(closed_at, "timestamp"),
            )
        )
        assert opp.status is expected
        closed = utc(2025, 5, 1, 10) if closed_at else None
        assert opp.closed_at == closed
        assert opp.won_at == (closed if expected is OpportunityStatus.WON else None)
        assert opp.lost_at == (closed if expected is OpportunityStatus.LOST else None)

    @pytest.mark.parametrize(
        ("probability", "confidence"),
        [
            ("40", 40),
            ("0.4", 40),
            ("0.40", 40),
            ("40%", 40),
            ("1.0", 100),
            ("1", 100),
            ("0", 0),
            ("0.555", 56),
            ("100", 100),
            (Decimal("0.25"), 25),
            (None, None),
            ("", None),
            ("high", None),
            ("150", None),
            ("-5", None),
        ],
    )
    def test_confidence_from_closing_probability(
        self, probability: Any, confidence: int | None
    ) -> None:
        stage = {"id": "s1", "display_value": "Proposal", "closing_probability": probability}
        opp = reevo_to_opportunity(record(stage=env(stage, "opportunity_stage")))
        assert opp.confidence == confidence
        assert opp.status_label == "Proposal"

    def test_timestamps_fall_back_to_attributes(self) -> None:
        raw = record(
            created_at=env("2024-01-02T03:04:05Z", "timestamp"),
            updated_at=env("2024-02-03T04:05:06+02:00", "timestamp"),
        )
        del raw["created_at"], raw["updated_at"]
        opp = reevo_to_opportunity(raw)
        assert opp.created_at == utc(2024, 1, 2, 3, 4, 5)
        assert opp.updated_at == utc(2024, 2, 3, 2, 5, 6)
        assert "created_at" not in opp.custom_fields

    def test_missing_timestamps_are_an_error(self) -> None:
        raw = record()
        del raw["updated_at"]
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(raw)
        assert caught.value.path == "$.data.updated_at"
        assert caught.value.record_id == OPP_ID

    def test_id_falls_back_to_the_id_attribute(self) -> None:
        raw = record(id=env(OPP_ID, "uuid"))
        del raw["id"]
        assert reevo_to_opportunity(raw).id == OPP_ID

    def test_missing_id(self) -> None:
        raw = record()
        del raw["id"]
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(raw)
        assert caught.value.path == "$.data.id"

    def test_null_everywhere_is_fine(self) -> None:
        names = ["display_name", "status", "outcome", "stage", "amount", "owner_user_id"]
        raw = record(**dict.fromkeys(names), closed_at=env(None, "timestamp"))
        opp = reevo_to_opportunity(raw)
        assert opp.name is None
        assert opp.stage is None
        assert opp.amount is None
        assert opp.owner is None
        assert opp.status is OpportunityStatus.OPEN
        assert opp.custom_fields == {}

    def test_pipeline_only_when_present(self) -> None:
        pipeline = {"id": "p1", "display_value": "Enterprise", "api_name": "enterprise"}
        opp = reevo_to_opportunity(record(pipeline=env(pipeline, "select")))
        assert opp.pipeline == Ref(id="p1", name="Enterprise")
        reference = {"related_record_id": "p2", "related_record_type": "pipeline"}
        opp = reevo_to_opportunity(record(pipeline_id=env(reference, "record_reference")))
        assert opp.pipeline == Ref(id="p2")

    def test_a_mapped_attribute_of_an_unusable_type_goes_to_custom_fields(self) -> None:
        opp = reevo_to_opportunity(record(display_name=env(True, "boolean")))
        assert opp.name is None
        assert opp.custom_fields["display_name"] is True

    def test_not_an_object(self) -> None:
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity([])  # type: ignore[arg-type]
        assert caught.value.path == "$.data"

    def test_attributes_not_an_object(self) -> None:
        raw = record()
        raw["attributes"] = ["display_name"]
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(raw)
        assert caught.value.path == "$.data.attributes"

    def test_an_attribute_that_is_not_an_envelope(self) -> None:
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(record(display_name="Acme"))
        assert caught.value.path == "$.data.attributes.display_name"

    def test_an_envelope_without_value_type(self) -> None:
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(record(display_name={"value": "Acme"}))
        assert caught.value.path == "$.data.attributes.display_name.value_type"

    def test_result_is_immutable_and_hashable(self) -> None:
        opp = reevo_to_opportunity(fixture_record())
        assert hash(opp) == hash(("reevo", OPP_ID))
        with pytest.raises(TypeError):
            opp.custom_fields["x"] = 1  # type: ignore[index]


# ----------------------------------------------------------------------------- value types

#: value_type -> (a realistic value, what it decodes to, a wrong shape, where it is wrong)
VALUES: dict[str, tuple[Any, Any, Any, str]] = {
    "string": ("Acme Corp", "Acme Corp", 42, ""),
    "long_text": ("Call back\nafter Q3", "Call back\nafter Q3", ["x"], ""),
    "rich_text": ("<p>Hi <b>there</b></p>", "<p>Hi <b>there</b></p>", {"html": "x"}, ""),
    "number": ("12.50", Decimal("12.50"), "twelve", ""),
    "percent": (Decimal("87.5"), Decimal("87.5"), True, ""),
    "currency": (
        {"amount": "1234.56", "currency_code": "USD"},
        Money(amount=Decimal("1234.56"), currency="USD"),
        {"amount": "12,50"},
        ".amount",
    ),
    "boolean": (False, False, "false", ""),
    "timestamp": ("2023-11-07T05:31:56Z", utc(2023, 11, 7, 5, 31, 56), "yesterday", ""),
    "date": ("2026-04-21", date(2026, 4, 21), 20260421, ""),
    "time": ("14:30:00", time(14, 30), "2pm", ""),
    "email": ("sarah.chen@acme.com", "sarah.chen@acme.com", None, ""),
    "phone_number": ("+14155551234", "+14155551234", 14155551234, ""),
    "url": ("https://acme.com/pricing", "https://acme.com/pricing", {"href": "x"}, ""),
    "uuid": (OPP_ID, uuid.UUID(OPP_ID), "not-a-uuid", ""),
    "select": (
        {"id": "t1", "display_value": "Renewal", "api_name": "renewal", "color": "#14B8A6"},
        Option(id="t1", display_value="Renewal", api_name="renewal", color="#14B8A6"),
        "renewal",
        "",
    ),
    "enum": ("email_sync", "email_sync", 3, ""),
    "contact_stage": (
        {"id": "c1", "display_value": "Working", "api_name": "working", "color": "#6966FF"},
        Option(id="c1", display_value="Working", api_name="working", color="#6966FF"),
        {"id": "c1", "display_value": 7},
        ".display_value",
    ),
    "account_stage": (
        {"id": "a1", "display_value": "Customer", "api_name": "customer"},
        Option(id="a1", display_value="Customer", api_name="customer"),
        [],
        "",
    ),
    "opportunity_stage": (
        {
            "id": "s1",
            "display_value": "Negotiation",
            "api_name": "negotiation",
            "color": "#F97316",
            "closing_probability": "0.8",
            "expected_days": 14,
        },
        Stage(
            id="s1",
            display_value="Negotiation",
            api_name="negotiation",
            color="#F97316",
            closing_probability="0.8",
            expected_days=14,
        ),
        {"id": "s1", "expected_days": "two weeks"},
        ".expected_days",
    ),
    "record_reference": (
        {"related_record_id": USER, "related_record_type": "user"},
        RecordReference(id=USER, type="user"),
        {"related_record_type": "user"},
        ".related_record_id",
    ),
    "contact_email": (
        {"id": "e1", "email": "jsmith@example.com", "is_primary": True, "labels": ["WORK"]},
        ContactEmail(email="jsmith@example.com", is_primary=True, labels=("WORK",), id="e1"),
        {"email": "jsmith@example.com", "labels": "WORK"},
        ".labels",
    ),
    "contact_phone_number": (
        {"phone_number": "+14155551234", "is_primary": False, "labels": ["MOBILE"]},
        ContactPhoneNumber(phone_number="+14155551234", is_primary=False, labels=("MOBILE",)),
        {"phone_number": "+14155551234", "is_primary": "yes"},
        ".is_primary",
    ),
    "address": (
        {"street_one": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"},
        Address(
            street_one="1 Main St",
            city="Springfield",
            postal_code="62701",
            country="US",
            fields={
                "street_one": "1 Main St",
                "city": "Springfield",
                "postal_code": "62701",
                "country": "US",
            },
        ),
        "1 Main St, Springfield",
        "",
    ),
    "account_domain": (
        {"domain_name": "acme.com", "is_primary": True},
        AccountDomain(domain_name="acme.com", is_primary=True),
        {"is_primary": True},
        ".domain_name",
    ),
}


def test_every_registered_type_is_tested() -> None:
    assert set(VALUES) == set(VALUE_DECODERS)


@pytest.mark.parametrize("value_type", sorted(VALUES))
def test_value_type_decodes(value_type: str) -> None:
    good, expected, _, _ = VALUES[value_type]
    opp = reevo_to_opportunity(record(custom_attr=env(good, value_type)))
    assert opp.custom_fields["custom_attr"] == expected


@pytest.mark.parametrize("value_type", sorted(VALUES))
def test_value_type_rejects_a_wrong_shape(value_type: str) -> None:
    _, _, bad, where = VALUES[value_type]
    if bad is None:  # null is never wrong: use another shape
        bad = 12
    with pytest.raises(DecodeError) as caught:
        reevo_to_opportunity(record(custom_attr=env(bad, value_type)))
    assert caught.value.path == f"$.data.attributes.custom_attr.value{where}"
    assert caught.value.record_id == OPP_ID
    assert value_type in caught.value.message


@pytest.mark.parametrize("value_type", sorted(VALUES))
def test_value_type_null(value_type: str) -> None:
    opp = reevo_to_opportunity(record(custom_attr=env(None, value_type)))
    assert opp.custom_fields["custom_attr"] is None


def test_address_keeps_every_key() -> None:
    value = {"street_one": "1 Main St", "suite": "400", "geo": {"lat": 1}}
    address = decode_attribute(env(value, "address"))
    assert isinstance(address, Address)
    assert address.street_one == "1 Main St"
    assert address.fields == value


def test_unknown_value_type_is_kept_as_received(caplog: pytest.LogCaptureFixture) -> None:
    location = env({"lat": Decimal("52.37"), "lng": Decimal("4.9")}, "geo_point")
    with caplog.at_level(logging.DEBUG, logger="close_opps.reevo"):
        opp = reevo_to_opportunity(record(hq_location=location))
    assert opp.custom_fields["hq_location"] == location
    assert "geo_point" in caplog.text


def test_unknown_value_type_on_a_mapped_attribute_is_not_fatal() -> None:
    amount = env({"units": 1234, "nanos": 560000000, "currency_code": "USD"}, "money")
    opp = reevo_to_opportunity(record(amount=amount))
    assert opp.amount is None
    assert opp.custom_fields["amount"] == amount


class TestListAttributes:
    def test_items_are_decoded(self) -> None:
        opp = reevo_to_opportunity(
            record(
                participant_user_id_list=[
                    env(
                        {"related_record_id": "u1", "related_record_type": "user"},
                        "record_reference",
                    ),
                    env(None, "record_reference"),
                    env({"related_record_id": "u2"}, "record_reference"),
                ],
                competitors_mentioned_other=[],
                tags=[env("vip", "string"), env({"x": 1}, "sparkle")],
            )
        )
        assert opp.custom_fields["participant_user_id_list"] == (
            RecordReference(id="u1", type="user"),
            None,
            RecordReference(id="u2"),
        )
        assert opp.custom_fields["competitors_mentioned_other"] == ()
        assert opp.custom_fields["tags"] == ("vip", env({"x": 1}, "sparkle"))

    def test_a_wrong_item_names_its_index(self) -> None:
        with pytest.raises(DecodeError) as caught:
            reevo_to_opportunity(
                record(
                    participant_user_id_list=[
                        env({"related_record_id": "u1"}, "record_reference"),
                        env({"related_record_id": 7}, "record_reference"),
                    ]
                )
            )
        assert caught.value.path == (
            "$.data.attributes.participant_user_id_list[1].value.related_record_id"
        )

    def test_a_list_where_the_mapping_wants_one_value(self) -> None:
        owners = [env({"related_record_id": "u1"}, "record_reference")]
        opp = reevo_to_opportunity(record(owner_user_id=owners))
        assert opp.owner is None
        assert opp.custom_fields["owner_user_id"] == (RecordReference(id="u1"),)


# ----------------------------------------------------------------------------- error bodies


class TestErrorBodies:
    dialect = ReevoDialect()

    def test_error_and_message(self) -> None:
        error = self.dialect.error(
            404, {}, {"error": "record_not_found", "message": "Opportunity x not found."}
        )
        assert isinstance(error, NotFoundError)
        assert error.code == "record_not_found"
        assert error.message == "Opportunity x not found."

    def test_vendor_code_picks_the_class(self) -> None:
        error = self.dialect.error(400, {}, {"error": "record_not_found", "message": "gone"})
        assert isinstance(error, NotFoundError)

    def test_detail_object(self) -> None:
        body = {"detail": {"code": "invalid_filter_field", "message": "Unknown field 'x'."}}
        error = self.dialect.error(400, {}, body)
        assert isinstance(error, InvalidRequestError)
        assert error.code == "invalid_filter_field"
        assert error.message == "Unknown field 'x'."

    def test_validation_list(self) -> None:
        body = {
            "detail": [
                {
                    "type": "less_than_equal",
                    "loc": ["body", "limit"],
                    "msg": "Input should be less than or equal to 200",
                    "ctx": {"le": 200},
                }
            ]
        }
        error = self.dialect.error(422, {}, body)
        assert isinstance(error, InvalidRequestError)
        assert error.field_errors == {"limit": "Input should be less than or equal to 200"}
        assert "limit" in error.message

    def test_error_code_key(self) -> None:
        error = self.dialect.error(400, {}, {"message": "bad", "error_code": "unknown_field"})
        assert error.code == "unknown_field"

    def test_empty_body(self) -> None:
        error = self.dialect.error(500, {}, None)
        assert isinstance(error, ServerError)
        assert error.message == "the server answered HTTP 500"


# ----------------------------------------------------------------------------- requests


class TestGet:
    async def test_bearer_and_decoding(self, mocked: aioresponses) -> None:
        mocked.get(f"{BASE}/opportunity/{OPP_ID}", payload=load_fixture("reevo_get.json"))
        async with ReevoAdapter(KEY) as reevo:
            opp = await reevo.get(OPP_ID)
        assert opp.id == OPP_ID
        (call,) = mocked.requests[("GET", URL(f"{BASE}/opportunity/{OPP_ID}"))]
        assert call.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"

    @pytest.mark.parametrize("bad_id", ["../_query", "a/b", "a?x=1", "a#b"])
    async def test_ids_are_one_path_segment(self, mocked: aioresponses, bad_id: str) -> None:
        mocked.get(re.compile(r".*"), payload=load_fixture("reevo_get.json"))
        async with ReevoAdapter(KEY) as reevo:
            await reevo.get(bad_id)
        ((_, url),) = mocked.requests
        assert url.raw_path.startswith("/api/v2/opportunity/")
        assert url.raw_path.count("/") == 4  # /api/v2/opportunity/<one segment>
        assert url.query_string == ""
        assert url.fragment == ""

    async def test_not_found_keeps_the_vendor_code(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/{OPP_ID}",
            status=404,
            payload={"error": "record_not_found", "message": f"Opportunity {OPP_ID} not found."},
        )
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(NotFoundError) as caught:
                await reevo.get(OPP_ID)
        assert caught.value.code == "record_not_found"
        assert caught.value.status == 404
        assert caught.value.provider == "reevo"

    async def test_detail_401_is_authentication(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/{OPP_ID}", status=401, payload={"detail": "Invalid API key"}
        )
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(AuthenticationError) as caught:
                await reevo.get(OPP_ID)
        assert caught.value.message == "Invalid API key"
        assert len(mocked.requests[("GET", URL(f"{BASE}/opportunity/{OPP_ID}"))]) == 1

    async def test_empty_500_is_a_server_error_after_retries(self, mocked: aioresponses) -> None:
        mocked.get(f"{BASE}/opportunity/{OPP_ID}", status=500, body=b"", repeat=True)
        async with ReevoAdapter(KEY, max_retries=2) as reevo:
            with pytest.raises(ServerError) as caught:
                await reevo.get(OPP_ID)
        assert caught.value.status == 500
        assert len(mocked.requests[("GET", URL(f"{BASE}/opportunity/{OPP_ID}"))]) == 3

    async def test_non_json_body(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/{OPP_ID}",
            body=f"<html>Gateway: token {KEY} refused</html>",
            content_type="text/html",
        )
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(DecodeError) as caught:
                await reevo.get(OPP_ID)
        assert "not JSON" in str(caught.value)
        assert KEY not in str(caught.value)
        assert KEY not in repr(caught.value)

    async def test_body_without_data(self, mocked: aioresponses) -> None:
        mocked.get(f"{BASE}/opportunity/{OPP_ID}", payload={"data": None})
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(DecodeError) as caught:
                await reevo.get(OPP_ID)
        assert caught.value.path == "$.data"

    async def test_the_key_never_shows(self, mocked: aioresponses) -> None:
        mocked.get(
            f"{BASE}/opportunity/{OPP_ID}",
            status=401,
            payload={"detail": f"API key {KEY} is revoked"},
        )
        reevo = ReevoAdapter(KEY)
        assert KEY not in repr(reevo)
        assert KEY not in str(reevo)
        with pytest.raises(AuthenticationError) as caught:
            await reevo.get(OPP_ID)
        await reevo.aclose()
        assert KEY not in str(caught.value)
        assert KEY not in repr(caught.value)


def page(records: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"data": records, "next_cursor": next_cursor}


class TestList:
    async def test_query_body(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, payload=page([], None))
        since = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
        async with ReevoAdapter(KEY) as reevo:
            got = [
                o
                async for o in reevo.list(
                    updated_since=since, status="won", order_by="-updated_at", limit=5
                )
            ]
        assert got == []
        (body,) = post_bodies(mocked)
        assert body == {
            "filters": [
                {"field": "updated_at", "operator": "gte", "value": "2025-05-01T12:00:00Z"},
                {"field": "outcome", "operator": "eq", "value": "won"},
            ],
            "sort": [{"field": "updated_at", "direction": "desc"}],
            "limit": 5,
        }
        (call,) = mocked.requests[("POST", URL(QUERY_URL))]
        assert call.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"

    async def test_every_bound_and_extra_filters(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, payload=page([], None))
        async with ReevoAdapter(KEY, page_size=50) as reevo:
            async for _ in reevo.list(
                updated_before=utc(2025, 6, 1),
                created_since=utc(2025, 1, 1),
                created_before=utc(2025, 2, 1),
                status=["open"],
                query="Northwind",
                owner_user_id=USER,
                created_source=["manual", "api"],
                filters=[{"field": "amount", "operator": "gte", "value": Decimal("1000")}],
            ):
                pass
        (body,) = post_bodies(mocked)
        assert body["filters"] == [
            {"field": "updated_at", "operator": "lt", "value": "2025-06-01T00:00:00Z"},
            {"field": "created_at", "operator": "gte", "value": "2025-01-01T00:00:00Z"},
            {"field": "created_at", "operator": "lt", "value": "2025-02-01T00:00:00Z"},
            {"field": "status", "operator": "eq", "value": "open"},
            {"field": "display_name", "operator": "contains", "value": "Northwind"},
            {"field": "owner_user_id", "operator": "eq", "value": USER},
            {"field": "created_source", "operator": "in", "value": ["manual", "api"]},
            {"field": "amount", "operator": "gte", "value": "1000"},
        ]
        assert body["limit"] == 50
        assert body["sort"] == [{"field": "created_at", "direction": "asc"}]  # the default

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (["open"], {"field": "status", "operator": "eq", "value": "open"}),
            (["won"], {"field": "outcome", "operator": "eq", "value": "won"}),
            (["lost"], {"field": "status", "operator": "eq", "value": "closed"}),
            (["won", "lost"], {"field": "status", "operator": "eq", "value": "closed"}),
            (["open", "won"], None),
            (["open", "won", "lost"], None),
        ],
    )
    async def test_status_filters(
        self, mocked: aioresponses, status: list[str], expected: dict[str, Any] | None
    ) -> None:
        mocked.post(QUERY_URL, payload=page([], None))
        async with ReevoAdapter(KEY) as reevo:
            async for _ in reevo.list(status=status):
                pass
        (body,) = post_bodies(mocked)
        assert body["filters"] == ([expected] if expected else [])

    async def test_status_is_exact_locally(self, mocked: aioresponses) -> None:
        # status=lost asks the server for every closed deal; the won ones are dropped here.
        first = load_fixture("reevo_query_page_1.json")
        second = load_fixture("reevo_query_page_2.json")
        mocked.post(QUERY_URL, payload=page(first["data"] + second["data"], None))
        async with ReevoAdapter(KEY) as reevo:
            got = [o async for o in reevo.list(status="lost")]
        assert [o.name for o in got] == ["Umbrella Corp - Lab Analytics"]
        assert got[0].lost_at == utc(2025, 5, 2, 7, 59)

    async def test_cursor_pagination_yields_every_record_once(self, mocked: aioresponses) -> None:
        first = load_fixture("reevo_query_page_1.json")
        second = load_fixture("reevo_query_page_2.json")
        second["data"].insert(0, first["data"][1])  # the server repeats a record
        mocked.post(QUERY_URL, payload=first)
        mocked.post(QUERY_URL, payload=second)
        async with ReevoAdapter(KEY, page_size=2) as reevo:
            got = [o async for o in reevo.list()]
        assert [o.id[-2:] for o in got] == ["01", "02", "03"]
        assert [o.status for o in got] == [
            OpportunityStatus.OPEN,
            OpportunityStatus.LOST,
            OpportunityStatus.WON,
        ]
        bodies = post_bodies(mocked)
        assert [b.get("cursor") for b in bodies] == [None, first["next_cursor"]]
        assert all(b["limit"] == 2 for b in bodies)

    async def test_pages(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, payload=load_fixture("reevo_query_page_1.json"))
        mocked.post(QUERY_URL, payload=load_fixture("reevo_query_page_2.json"))
        async with ReevoAdapter(KEY) as reevo:
            pages = [p async for p in reevo.pages()]
        assert [len(p) for p in pages] == [2, 1]
        assert [p.has_more for p in pages] == [True, False]
        assert pages[1].meta == {"next_cursor": None}

    async def test_limit_fetches_no_more_than_needed(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, payload=load_fixture("reevo_query_page_1.json"))
        async with ReevoAdapter(KEY) as reevo:
            got = [o async for o in reevo.list(limit=2)]
        assert len(got) == 2
        (body,) = post_bodies(mocked)
        assert body["limit"] == 2

    async def test_rate_limit_then_success_retries_the_post(self, mocked: aioresponses) -> None:
        mocked.post(
            QUERY_URL,
            status=429,
            headers={"Retry-After": "1"},
            payload={"error": "rate_limit_exceeded", "message": "Too many requests."},
        )
        mocked.post(QUERY_URL, payload=load_fixture("reevo_query_page_2.json"))
        async with ReevoAdapter(KEY) as reevo:
            got = [o async for o in reevo.list()]
        assert len(got) == 1
        bodies = post_bodies(mocked)
        assert len(bodies) == 2
        assert bodies[0] == bodies[1]

    async def test_server_error_after_retries(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, status=503, body=b"", repeat=True)
        async with ReevoAdapter(KEY, max_retries=3) as reevo:
            with pytest.raises(ServerError):
                async for _ in reevo.list():
                    pass
        assert len(post_bodies(mocked)) == 4

    async def test_invalid_cursor_restarts_once_without_repeating(
        self, mocked: aioresponses
    ) -> None:
        first = load_fixture("reevo_query_page_1.json")
        mocked.post(QUERY_URL, payload=first)
        mocked.post(
            QUERY_URL,
            status=400,
            payload={"error": "invalid_cursor", "message": "The cursor is malformed."},
        )
        mocked.post(QUERY_URL, payload=first)  # the restart: the same records again
        mocked.post(QUERY_URL, payload=load_fixture("reevo_query_page_2.json"))
        async with ReevoAdapter(KEY) as reevo:
            got = [o async for o in reevo.list()]
        assert [o.id[-2:] for o in got] == ["01", "02", "03"]
        bodies = post_bodies(mocked)
        assert [b.get("cursor") for b in bodies] == [
            None,
            first["next_cursor"],
            None,
            first["next_cursor"],
        ]

    async def test_a_second_invalid_cursor_raises(self, mocked: aioresponses) -> None:
        first = load_fixture("reevo_query_page_1.json")
        invalid = {"detail": "Invalid cursor"}
        for _ in range(2):
            mocked.post(QUERY_URL, payload=first)
            mocked.post(QUERY_URL, status=400, payload=invalid)
        async with ReevoAdapter(KEY) as reevo:
            got: list[Opportunity] = []

            async def drain() -> None:
                async for opp in reevo.list():
                    got.append(opp)

            with pytest.raises(PaginationError):
                await drain()
        assert len(got) == 2  # nothing yielded twice
        assert len(post_bodies(mocked)) == 4

    async def test_other_400s_are_raised(self, mocked: aioresponses) -> None:
        mocked.post(
            QUERY_URL,
            status=400,
            payload={"error": "invalid_filter_field", "message": "Unknown field 'colour'."},
        )
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(InvalidRequestError) as caught:
                async for _ in reevo.list(colour="red"):
                    pass
        assert caught.value.code == "invalid_filter_field"
        assert len(post_bodies(mocked)) == 1

    async def test_a_repeated_cursor_stops(self, mocked: aioresponses) -> None:
        first = load_fixture("reevo_query_page_1.json")
        mocked.post(QUERY_URL, payload=first)
        mocked.post(QUERY_URL, payload=page([], first["next_cursor"]))
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(PaginationError):
                async for _ in reevo.list():
                    pass

    async def test_limit_over_the_maximum_is_learned(self, mocked: aioresponses) -> None:
        too_big = {
            "detail": [
                {
                    "type": "less_than_equal",
                    "loc": ["body", "limit"],
                    "msg": "Input should be less than or equal to 200",
                    "ctx": {"le": 200},
                }
            ]
        }
        mocked.post(QUERY_URL, status=422, payload=too_big)
        mocked.post(QUERY_URL, payload=page([], None))
        mocked.post(QUERY_URL, payload=page([], None))
        async with ReevoAdapter(KEY, page_size=500) as reevo:
            async for _ in reevo.list():
                pass
            async for _ in reevo.list():
                pass
        assert [b["limit"] for b in post_bodies(mocked)] == [500, 200, 200]

    async def test_non_json_page(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, body="<html>502</html>", content_type="text/html")
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(DecodeError):
                async for _ in reevo.list():
                    pass

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ([], "$"),
            ({"records": []}, "$.data"),
            ({"data": [], "next_cursor": 2}, "$.next_cursor"),
            (
                {"data": [{"id": "x", "attributes": {}}], "next_cursor": None},
                "$.data[0].created_at",
            ),
        ],
    )
    async def test_malformed_pages(self, mocked: aioresponses, body: Any, path: str) -> None:
        mocked.post(QUERY_URL, payload=body)
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(DecodeError) as caught:
                async for _ in reevo.list():
                    pass
        assert caught.value.path == path

    @pytest.mark.parametrize(
        "filters",
        [{"cursor": "abc"}, {"sort": []}, {"filters": "amount>3"}, {"filters": [1]}],
    )
    async def test_bad_filters(self, mocked: aioresponses, filters: dict[str, Any]) -> None:
        async with ReevoAdapter(KEY) as reevo:
            with pytest.raises(ValueError, match=r"filter|managed"):
                async for _ in reevo.list(**filters):
                    pass
        assert post_bodies(mocked) == []

    async def test_a_single_raw_filter_object(self, mocked: aioresponses) -> None:
        mocked.post(QUERY_URL, payload=page([], None))
        raw = {"field": "closed_at", "operator": "exists"}
        async with ReevoAdapter(KEY) as reevo:
            async for _ in reevo.list(filters=raw, order_by="amount,-created_at"):
                pass
        (body,) = post_bodies(mocked)
        assert body["filters"] == [raw]
        assert body["sort"] == [
            {"field": "amount", "direction": "asc"},
            {"field": "created_at", "direction": "desc"},
        ]


# ----------------------------------------------------------------------------- end to end


class TestAgainstTheSandbox:
    """The adapter against the project's own Reevo emulator, on a loopback port."""

    async def test_listing_statuses_bounds_and_get(self) -> None:
        options = ReevoOptions(max_limit=40)
        async with Sandbox(seed=11, records=173, vendors=["reevo"], reevo=options) as sb:
            server = sb.reevo
            async with ReevoAdapter(
                server.api_key, base_url=server.base_url, page_size=60
            ) as reevo:
                every = [o async for o in reevo.list()]
                assert len({o.id for o in every}) == len(every) == 173
                for status in OpportunityStatus:
                    got = {o.id async for o in reevo.list(status=status)}
                    assert got == {o.id for o in every if o.status is status}
                since = sorted(o.updated_at for o in every)[100]
                recent = [o async for o in reevo.list(updated_since=since, order_by="-updated_at")]
                assert {o.id for o in recent} == {o.id for o in every if o.updated_at >= since}
                assert [o.updated_at for o in recent] == sorted(
                    (o.updated_at for o in recent), reverse=True
                )
                assert await reevo.get(every[9].id) == every[9]

    async def test_faults_and_an_invalid_cursor(self) -> None:
        async with Sandbox(seed=5, records=30, vendors=["reevo"]) as sb:
            server = sb.reevo
            server.script(
                Fault.rate_limit(0.01),
                Fault.server_error(503),
                Fault.ok(),
                Fault.respond(400, {"error": "invalid_cursor", "message": "Cursor expired."}),
            )
            async with ReevoAdapter(server.api_key, base_url=server.base_url, page_size=7) as reevo:
                got = [o async for o in reevo.list()]
            # 429, 503, page 1, the rejected cursor, then pages 1 to 5 again
            assert server.request_count == 9
        assert len({o.id for o in got}) == len(got) == 30
