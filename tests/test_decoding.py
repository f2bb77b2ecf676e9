"""The shared converter of vendor records."""

from __future__ import annotations

import attrs
import pytest

from close_opps import DecodeError
from close_opps._decoding import decode, make_converter


@attrs.frozen(kw_only=True)
class Shapes:
    many: tuple[int, ...] = ()
    pair: tuple[str, int] | None = None
    items: list[int] | None = None


def test_tuple_fields_stay_tuples_and_lists_stay_lists() -> None:
    shapes = decode(
        make_converter(),
        {"many": [1, 2], "pair": ["a", 1], "items": [3]},
        Shapes,
        provider="test",
    )
    assert shapes.many == (1, 2)
    assert isinstance(shapes.many, tuple)
    assert shapes.pair == ("a", 1)
    assert shapes.items == [3]


def test_a_tuple_field_checks_its_items_and_its_kind() -> None:
    with pytest.raises(DecodeError) as info:
        decode(make_converter(), {"many": [1, "x"]}, Shapes, provider="test")
    assert info.value.path == "$.many[1]"
    with pytest.raises(DecodeError):
        decode(make_converter(), {"many": "12"}, Shapes, provider="test")
