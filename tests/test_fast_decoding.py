"""The fast paths of decoding give exactly what the careful paths give, or step aside.

``load_json`` reads bodies with msgspec and falls back to :mod:`json` with its checks;
``decode`` builds vendor records with msgspec and falls back to the detailed cattrs path.
Each property here compares the two on the same input.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from close_opps import DecodeError
from close_opps._constants import MAX_JSON_DEPTH
from close_opps._decoding import _NO_FAST_RESULT, _fast_structure, decode, make_converter
from close_opps.adapters import close, getraze, reevo
from close_opps.http import _careful_load, _frozen_tree, load_json
from close_opps.model import FrozenDict, FrozenList

FIXTURES = Path(__file__).parent / "fixtures"


def _thawed(value: Any) -> Any:
    """``value`` with exact types kept, for comparisons that see FrozenDict vs dict."""
    if isinstance(value, dict):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_thawed(v) for v in value]
    return (type(value), value)


def _careful(body: bytes) -> Any:
    data = _careful_load(body)
    return _frozen_tree(data, 0) if type(data) in (dict, list) else data


# ------------------------------------------------------------------------------ load_json

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.decimals(allow_nan=False, allow_infinity=False, places=None)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def _dumps(value: Any) -> bytes:
    """``value`` as JSON text, decimals written exactly (``json.dumps`` would need floats)."""

    def text(item: Any) -> str:
        if isinstance(item, Decimal):
            return str(item)
        if isinstance(item, dict):
            return "{" + ",".join(f"{json.dumps(k)}:{text(v)}" for k, v in item.items()) + "}"
        if isinstance(item, list):
            return "[" + ",".join(text(v) for v in item) + "]"
        return json.dumps(item, ensure_ascii=False)

    return text(value).encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_msgspec_and_json_read_every_body_alike(value: Any) -> None:
    body = _dumps(value)
    assert _thawed(load_json(body)) == _thawed(_careful(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1.10, "b": 1e400, "c": -0.0, "d": 12345678901234567890123}',
        '{"é": "\u00e9\u4e2d\U0001f600"}'.encode(),
        b'{"pair": "\\ud83d\\ude00", "a": [1, [2, [3]]]}',
        '{"a": 1}'.encode("utf-16"),  # json reads UTF-16; msgspec does not: the fallback does
        b'  [1, 2, {"x": null}]  ',
        b'"just a string"',
        b"42",
    ],
)
def test_known_bodies_are_read_alike(body: bytes) -> None:
    assert _thawed(load_json(body)) == _thawed(_careful(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": "\\ud800"}',
        b'{"\\udc00": 1}',
        b'{"a": ' + b"9" * 101 + b"}",
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
        b"[" * 5000 + b"]" * 5000,
        b'{"a": "\xff"}',
        b'{"a": 1',
    ],
)
def test_refused_bodies_stay_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        load_json(body)


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_JSON_DEPTH
    assert load_json(b"[" * depth + b"]" * depth) is not None


def test_bodies_are_read_only_all_the_way_down() -> None:
    data = load_json(b'{"a": {"b": [1, {"c": 2}]}, "l": [[1]]}')
    assert type(data) is FrozenDict
    assert type(data["a"]) is FrozenDict
    assert type(data["a"]["b"]) is FrozenList
    assert type(data["a"]["b"][1]) is FrozenDict
    assert type(data["l"][0]) is FrozenList
    with pytest.raises(TypeError):
        data["a"]["b"].append(3)
    with pytest.raises(TypeError):
        data["a"]["b"][1]["c"] = 3
    assert data == {"a": {"b": [1, {"c": 2}]}, "l": [[1]]}


# --------------------------------------------------------------------------------- decode


def _both(converter: Any, data: Any, cls: type) -> tuple[Any, Any]:
    """(the fast path's result or _NO_FAST_RESULT, the detailed path's result or its error)"""
    fast: Any = _fast_structure(data, cls)
    try:
        detailed: Any = converter.structure(data, cls)
    except Exception as exc:
        detailed = exc
    return fast, detailed


def _fixture_records() -> list[tuple[Any, Any, type]]:
    cases: list[tuple[Any, Any, type]] = []
    for raw in load_json((FIXTURES / "close_list_page.json").read_bytes())["data"]:
        cases.append((close._converter, raw, close.CloseOpportunity))
    for name in ("getraze_list_page1.json", "getraze_list_page2.json"):
        for raw in load_json((FIXTURES / name).read_bytes())["body"]["data"]:
            cases.append((getraze._converter, raw, getraze.GetrazeOpportunity))
    for name in ("reevo_query_page_1.json", "reevo_query_page_2.json"):
        for raw in load_json((FIXTURES / name).read_bytes())["data"]:
            cases.append((reevo._converter, raw, reevo.ReevoRecord))
    return cases


@pytest.mark.parametrize("converter,raw,cls", _fixture_records())
def test_recorded_records_take_the_fast_path_to_the_same_result(
    converter: Any, raw: Any, cls: type
) -> None:
    fast, detailed = _both(converter, raw, cls)
    assert fast is not _NO_FAST_RESULT, "a valid recorded record should not need the slow path"
    assert fast == detailed
    assert type(fast) is type(detailed)


timestamps = st.one_of(
    st.sampled_from(
        [
            "2026-01-12T10:00:00Z",
            "2026-01-12T10:00:00+00:00",
            "2026-01-12T10:00:00.123456+00:00",
            "2026-01-12T10:00:00.123456789Z",  # more digits than a datetime holds
            "2026-01-12T10:00:00+02:00",
            "2026-01-12T10:00:00",  # no offset: UTC
            "2026-01-12 10:00:00+00",  # Getraze's PostgreSQL form
            "2026-01-12t10:00:00z",
            "2026-01-12",
            "0001-01-01T00:00:00+01:00",
            "not a time",
            "",
        ]
    ),
    st.integers(),
    st.none(),
)
amounts = st.one_of(
    st.integers(min_value=-(10**70), max_value=10**70),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(["12.50", " 7 ", "NaN", "1e999", "x", True]),
    st.none(),
)
ints = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([True, Decimal("40.0"), Decimal("4E+1"), Decimal("0.5"), "3"]),
    st.none(),
)
dates = st.one_of(
    st.sampled_from(["2026-01-12", "20260112", "2026-02-30", "2026-01-12T23:30:00-02:00", 5]),
    st.none(),
)
texts = st.one_of(st.text(max_size=5), st.none(), st.integers(), st.booleans())


@settings(max_examples=400, deadline=None)
@given(
    created=timestamps,
    updated=timestamps,
    lost=timestamps,
    won=dates,
    value=amounts,
    confidence=ints,
    label=texts,
    phones=st.one_of(
        st.none(), st.lists(st.fixed_dictionaries({"phone": texts}), max_size=2), texts
    ),
)
def test_close_records_decode_alike_on_both_paths(
    created: Any,
    updated: Any,
    lost: Any,
    won: Any,
    value: Any,
    confidence: Any,
    label: Any,
    phones: Any,
) -> None:
    raw = {
        "id": "oppo_1",
        "date_created": created,
        "date_updated": updated,
        "date_lost": lost,
        "date_won": won,
        "value": value,
        "confidence": confidence,
        "status_label": label,
        "lead_primary_phone": phones,
    }
    raw = {k: v for k, v in raw.items() if v is not None or k == "date_lost"}
    fast, detailed = _both(close._converter, raw, close.CloseOpportunity)
    if fast is _NO_FAST_RESULT:
        return  # stepped aside: the detailed path decides, as before
    assert not isinstance(detailed, Exception), f"fast path accepted what is refused: {raw}"
    assert fast == detailed
    for name in ("date_created", "date_updated", "date_lost"):
        moment = getattr(fast, name)
        assert moment is None or moment.tzinfo is UTC


def test_getraze_timestamps_take_the_fast_path() -> None:
    raw = {
        "id": "e5cee1d1-d6f7-4ab6-96c1-66d42f3c6771",
        "created_at": "2026-11-27 02:32:04+00",
        "updated_at": "2026-11-27T04:32:04+02:00",
        "value": "3500.50",
    }
    fast, detailed = _both(getraze._converter, raw, getraze.GetrazeOpportunity)
    assert fast is not _NO_FAST_RESULT
    assert fast == detailed
    assert fast.updated_at == datetime(2026, 11, 27, 2, 32, 4, tzinfo=UTC)
    assert fast.updated_at.tzinfo is UTC
    assert fast.value == Decimal("3500.50")


def test_invalid_records_still_name_the_field() -> None:
    raw = {"id": "oppo_1", "date_created": "2026-01-12T10:00:00Z", "date_updated": "soon"}
    with pytest.raises(DecodeError) as info:
        decode(close._converter, raw, close.CloseOpportunity, provider="close")
    assert info.value.path == "$.date_updated"
    assert info.value.record_id == "oppo_1"


@attrs.frozen(kw_only=True)
class Shouting:
    name: str
    when: date | None = None


def test_a_converter_with_hooks_of_its_own_always_takes_the_detailed_path() -> None:
    converter = make_converter()
    assert decode(converter, {"name": "quiet"}, Shouting, provider="test").name == "quiet"
    converter.register_structure_hook(str, lambda value, _: str(value).upper())
    assert decode(converter, {"name": "quiet"}, Shouting, provider="test").name == "QUIET"


@attrs.frozen
class Unusual:
    ratio: float
    tags: frozenset[str] = frozenset()


def test_classes_with_types_the_fast_path_does_not_know_take_the_detailed_path() -> None:
    assert _fast_structure({"ratio": 1}, Unusual) is _NO_FAST_RESULT
    decoded = decode(make_converter(), {"ratio": 1, "tags": ["a"]}, Unusual, provider="test")
    assert decoded == Unusual(ratio=1.0, tags=frozenset({"a"}))
