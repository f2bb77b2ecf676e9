"""The JSON-ready form of records: every field, exact decimals, nothing unwritable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from decimal import Decimal
from uuid import UUID

import attrs

from close_opps import Money, Opportunity, OpportunityStatus, Ref
from close_opps.serialize import FIELDS, opportunity_to_dict, opportunity_to_json


@attrs.frozen
class Stage:
    id: UUID
    probability: Decimal


def record() -> Opportunity:
    return Opportunity(
        provider="reevo",
        id="r1",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        updated_at=datetime(2025, 1, 3, tzinfo=UTC),
        status=OpportunityStatus.WON,
        amount=Money(amount=Decimal("1234.560"), currency="EUR"),
        owner=Ref(id="u1", name="Ana"),
        custom_fields={
            "stage": Stage(UUID(int=1), Decimal("0.4")),
            "meeting": time(14, 30),
            "tags": ("a", "b"),
        },
        raw={"value": Decimal("1234.560")},
    )


def test_every_field_in_order() -> None:
    data = opportunity_to_dict(record())
    assert tuple(data) == FIELDS


def test_decimals_and_datetimes_are_exact_strings() -> None:
    data = opportunity_to_dict(record())
    assert data["amount"] == {"amount": "1234.560", "currency": "EUR"}
    assert data["created_at"] == "2025-01-02T03:04:05+00:00"
    assert data["status"] == "won"
    assert data["owner"] == {"id": "u1", "name": "Ana"}
    assert data["raw"] == {"value": "1234.560"}


def test_custom_values_of_any_kind_are_written() -> None:
    line = opportunity_to_json(record())
    custom = json.loads(line)["custom_fields"]
    assert custom == {
        "stage": {"id": "00000000-0000-0000-0000-000000000001", "probability": "0.4"},
        "meeting": "14:30:00",
        "tags": ["a", "b"],
    }
    assert "\n" not in line


def test_raw_can_be_left_out() -> None:
    assert "raw" not in opportunity_to_dict(record(), raw=False)
