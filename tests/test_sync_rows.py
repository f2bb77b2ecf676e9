"""The sync store's rows: one serialization per record, a digest that means what it says.

``record`` and ``raw`` are written as canonical JSON (``canonical_json``) and the content
digest is computed from those very bytes. These tests pin down that

- the canonical form is ``json.dumps(jsonable(value), sort_keys=True)`` (compact, UTF-8)
  byte for byte, so digests written by earlier releases stay valid (no rewrite on upgrade);
- equal content gives an equal digest whatever order mappings were built in, and a change
  to any field, any nested part or the raw record gives another;
- the flat columns are what the generic per-column conversion gives, for any values;
- rows read back equal the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import close_opps
from close_opps import Change, Contact, Money, Opportunity, OpportunityStatus, Ref
from close_opps.feed import ChangeFeed
from close_opps.sandbox import Sandbox
from close_opps.serialize import (
    FIELDS,
    _record_json,
    canonical_json,
    flatten,
    jsonable,
    opportunity_to_dict,
)
from close_opps.sync import (
    _FLAT,
    _HASH,
    SyncError,
    SyncStore,
    _row,
    _sql_value,
    open_store,
    sync,
)

NOW = "2025-01-01T00:00:00.000000+00:00"


def earlier_form(value: Any) -> bytes:
    """How releases up to 0.1 wrote JSON for the digest."""
    return json.dumps(
        jsonable(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True
    ).encode()


def earlier_digest(opp: Opportunity) -> str:
    """The content digest as releases up to 0.1 computed it (two sorted dumps)."""
    record = opportunity_to_dict(opp)
    raw = record.pop("raw")
    return hashlib.sha256(earlier_form(record) + b"\n" + earlier_form(raw)).hexdigest()


def digest(opp: Opportunity) -> str:
    return str(_row("c", opp, NOW)[_HASH])


@attrs.frozen
class Probability:
    id: UUID
    value: Decimal


@dataclasses.dataclass(frozen=True)
class Note:
    text: str


class Tier(enum.Enum):
    GOLD = "gold"


def full_record() -> Opportunity:
    """Every field set, custom fields of every kind a value decoder may make."""
    moment = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    return Opportunity(
        provider="reevo",
        id="r1",
        created_at=moment,
        updated_at=moment + timedelta(days=1),
        name="Acme — Ünïcode 😀",
        status=OpportunityStatus.WON,
        status_label="Won",
        stage=Ref(id="s1", name="Stage"),
        pipeline=Ref(id="p1", name="Pipe"),
        amount=Money(amount=Decimal("1234.560"), currency="EUR"),
        value_period="annual",
        confidence=70,
        owner=Ref(id="u1", name="Ana"),
        company=Ref(id="c1", name="Acme"),
        contact=Contact(id="k1", name="Bo", email="b@x", phone="+1", title="CEO", url="u"),
        note='quote " backslash \\ newline \n tab \t nul \x00',
        source="web",
        won_at=moment,
        lost_at=None,
        closed_at=moment,
        expected_close_at=datetime(2025, 3, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        custom_fields={
            "probability": Probability(UUID(int=1), Decimal("0.4")),
            "meeting": time(14, 30),
            "day": date(2025, 1, 2),
            "tags": ("a", "b"),
            "set": frozenset({"x"}),
            "note": Note("dataclass"),
            "tier": Tier.GOLD,
            "nested": {"b": [1, {"d": None, "c": True}], "a": Decimal("1E+2")},
            "odd offset": datetime(1900, 1, 1, tzinfo=timezone(timedelta(seconds=1172))),
        },
        raw={"value": Decimal("1234.560"), "z": {"y": 1, "x": [Decimal("-0.0"), "é"]}},
    )


ODD_VALUES = [
    None,
    "text",
    7,
    True,
    Decimal("1.50"),
    datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    OpportunityStatus.OPEN,
    {"b": 1, "a": Decimal("2.0")},
    Ref(id="x", name="y"),
    UUID(int=5),
]


def odd_record(value: Any) -> Opportunity:
    """A record built elsewhere, ``value`` in fields of other types."""
    plain = {"name": value, "status_label": value, "note": value, "custom_fields": {"k": value}}
    return attrs.evolve(
        full_record(),
        **plain,
        owner=Ref(id=value, name=value),
        amount=Money(amount=value, currency=value),
        won_at=value if isinstance(value, datetime) else None,
        status=value if isinstance(value, OpportunityStatus) else OpportunityStatus.LOST,
    )


# ------------------------------------------------------------------- canonical JSON


def test_canonical_json_is_the_earlier_sorted_form_byte_for_byte() -> None:
    opp = full_record()
    for value in (opportunity_to_dict(opp, raw=False), opp.raw, opp.custom_fields):
        assert canonical_json(value) == earlier_form(value)


def test_canonical_json_falls_back_for_what_orjson_refuses() -> None:
    # an integer beyond 64 bits, a key that is not text: still written as before
    odd: list[Any] = [{"big": 2**80}, {1: "one", "b": 2}, [[[[[]]]]] * 2]
    for value in odd:
        assert canonical_json(value) == earlier_form(value)
    with pytest.raises(UnicodeEncodeError):
        canonical_json({"lone": "\ud800"})


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.datetimes(timezones=st.timezones()),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(value=JSON_VALUES)
def test_canonical_json_matches_the_earlier_form_for_any_json_value(value: Any) -> None:
    try:
        expected = earlier_form(value)
    except UnicodeEncodeError:  # a lone surrogate: refused by both
        with pytest.raises(UnicodeEncodeError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


@pytest.mark.parametrize("value", [None, *ODD_VALUES], ids=repr)
def test_record_json_is_the_canonical_record_without_raw(value: Any) -> None:
    """The record's JSON is made in one pass, the custom fields' inside it: the same bytes
    as the long way, for records of any content (odd values in any field)."""
    for opp in (full_record(), odd_record(value)):
        record, custom = _record_json(opp)
        assert record == earlier_form(opportunity_to_dict(opp, raw=False))
        assert custom == earlier_form(opp.custom_fields)
        assert set(json.loads(record)) == set(FIELDS) - {"raw"}


# ------------------------------------------------------------------------- the digest


def test_the_digest_is_the_one_earlier_releases_stored() -> None:
    opp = full_record()
    assert digest(opp) == earlier_digest(opp)


def test_equal_content_gives_an_equal_digest_whatever_the_key_order() -> None:
    opp = full_record()
    reordered = attrs.evolve(
        opp,
        raw=dict(reversed(list(opp.raw.items()))),
        custom_fields=dict(reversed(list(opp.custom_fields.items()))),
    )
    assert list(reordered.raw) != list(opp.raw)
    assert digest(reordered) == digest(opp)


def changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, OpportunityStatus):
        return OpportunityStatus.LOST
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "!"
    if isinstance(value, Money):
        return attrs.evolve(value, amount=Decimal("1234.56"))  # a trailing zero less
    return None


@pytest.mark.parametrize("field", [f for f in FIELDS if f not in ("provider", "id")])
def test_a_change_to_any_field_changes_the_digest(field: str) -> None:
    opp = full_record()
    before = getattr(opp, field)
    if field in ("custom_fields", "raw"):
        after: Any = {**before, "nested": {"b": [1, {"d": None, "c": False}]}}
    elif attrs.has(type(before)):  # a nested record: each of its attributes
        for part in attrs.fields(type(before)):
            if part.name == "amount":
                continue
            edited = attrs.evolve(before, **{part.name: changed(getattr(before, part.name))})
            assert digest(attrs.evolve(opp, **{field: edited})) != digest(opp), part.name
        after = changed(before)
    else:
        after = changed(before) if before is not None else "2025-01-01"
        if field.endswith("_at"):
            after = changed(opp.created_at)
    assert digest(attrs.evolve(opp, **{field: after})) != digest(opp)


def test_a_change_deep_in_raw_changes_the_digest() -> None:
    opp = full_record()
    edited = {**opp.raw, "z": {"y": 1, "x": [Decimal("0.0"), "é"]}}
    assert digest(attrs.evolve(opp, raw=edited)) != digest(opp)
    # a value moving between the record and raw is a change too
    assert digest(attrs.evolve(opp, raw={})) != digest(opp)


# ----------------------------------------------------------------------- flat columns


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_flat_columns_are_the_generic_conversion_of_any_value(value: Any) -> None:
    """Records built elsewhere may hold any value in any field: each column is what
    converting the flattened value one by one gives."""
    for record in (full_record(), odd_record(value)):
        row = _row("c", record, NOW)
        flat = flatten(record)
        assert row[3 : 3 + len(_FLAT)] == tuple(_sql_value(flat[name]) for name in _FLAT)


def test_text_columns_are_stored_as_text() -> None:
    row = _row("c", full_record(), NOW)
    columns = dict(zip(("connection", "id", "provider", *_FLAT), row, strict=False))
    assert columns["amount"] == "1234.560"
    assert columns["created_at"] == "2025-01-02T03:04:05.678000+00:00"
    assert columns["expected_close_at"] == "2025-02-28T18:30:00.000000+00:00"
    assert columns["status"] == "won"
    assert json.loads(columns["custom_fields"])["nested"] == {
        "a": "1E+2",
        "b": [1, {"c": True, "d": None}],
    }


# ------------------------------------------------------------------- through the store


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=4, records=60) as running:
        yield running


async def test_rows_round_trip_and_keep_earlier_digests(sb: Sandbox, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        adapters = [
            await stack.enter_async_context(
                close_opps.connect(name, api_key=sb[name].api_key, base_url=sb[name].base_url)
            )
            for name in ("close", "getraze", "reevo")
        ]
        store = await stack.enter_async_context(open_store(tmp_path / "o.db"))
        await sync(adapters, store)
        for adapter in adapters:
            listed = [opp async for opp in adapter.list()]
            for opp in listed:
                row = await store.get(adapter.provider, opp.id)
                assert row is not None
                assert row["record"] == opportunity_to_dict(opp, raw=False)
                assert row["raw"] == jsonable(opp.raw)
                assert row["content_hash"] == earlier_digest(opp)
                # what the store held before this release is what it holds now: a record
                # stored by it is unchanged, not rewritten
            counts = await store.upsert(adapter.provider, listed)
            assert counts.unchanged == len(listed)
            assert counts.inserted == counts.updated == 0


# ------------------------------------------------------------------ writes overlap reads


class HeldStore(SyncStore):
    """Holds its first write back until the feed has delivered the next batch too (or gave
    up waiting): a sync that waits for each write before reading on never gets there."""

    def __init__(self, path: Path, delivered: list[int]) -> None:
        super().__init__(path)
        self.delivered = delivered
        self.seen_during_first_write: int | None = None

    async def apply(self, provider: str, changes: Any, **options: Any) -> Any:
        batch = list(changes)
        if self.seen_during_first_write is None and batch:
            for _ in range(2000):  # turns of the event loop, not time
                if self.delivered[0] >= 2 * len(batch):
                    break
                await asyncio.sleep(0)
            self.seen_during_first_write = self.delivered[0]
        return await super().apply(provider, batch, **options)


async def test_the_next_batch_is_read_while_one_is_written(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivered = [0]
    original = ChangeFeed.__anext__

    async def counted(self: ChangeFeed) -> Change:
        change = await original(self)
        delivered[0] += 1
        return change

    monkeypatch.setattr(ChangeFeed, "__anext__", counted)
    server = sb["close"]
    async with (
        close_opps.connect("close", api_key=server.api_key, base_url=server.base_url) as close,
        HeldStore(tmp_path / "o.db", delivered) as store,
    ):
        reports = await sync([close], store, batch_size=10)
        assert reports["close"].inserted == len(server.ids)
        assert await store.count("close") == len(server.ids)
    assert store.seen_during_first_write is not None
    assert store.seen_during_first_write >= 20


class FailingStore(SyncStore):
    """Refuses the records of one batch, as a store refuses a record it cannot hold."""

    def __init__(self, path: Path, fail_on_call: int) -> None:
        super().__init__(path)
        self.calls = 0
        self.fail_on_call = fail_on_call

    async def apply(self, provider: str, changes: Any, **options: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise close_opps.DecodeError("the record cannot be stored", provider=provider)
        return await super().apply(provider, changes, **options)


async def test_a_batch_that_could_not_be_written_is_not_checkpointed_past(
    sb: Sandbox, tmp_path: Path
) -> None:
    server = sb["close"]
    path = tmp_path / "o.db"
    async with close_opps.connect(
        "close", api_key=server.api_key, base_url=server.base_url
    ) as close:
        async with FailingStore(path, fail_on_call=2) as failing:
            with pytest.raises(SyncError) as caught:
                await sync([close], failing, batch_size=10)
            assert isinstance(caught.value.errors["close"], close_opps.DecodeError)
        # The next run (the store now takes every record) must store every record: the
        # refused batch was never stored, so no checkpoint may say it was.
        async with SyncStore(path) as store:
            await sync([close], store, batch_size=10)
            assert await store.count("close") == len(server.ids)
