"""The normalized opportunity record every adapter returns.

The classes hold data only: turning vendor JSON into them is each adapter's business, and
turning them into JSON is :mod:`close_opps.serialize`'s (``opportunity_to_dict``,
``opportunity_to_json``: decimals and datetimes as strings).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn

import attrs

__all__ = [
    "Contact",
    "FrozenDict",
    "FrozenList",
    "Money",
    "Opportunity",
    "OpportunityStatus",
    "Ref",
    "freeze",
]


class OpportunityStatus(enum.StrEnum):
    """Where a deal stands, the same for every CRM."""

    OPEN = "open"
    WON = "won"
    LOST = "lost"


def _refuse(self: object, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is read-only")


class FrozenDict(dict[str, Any]):
    """A read-only ``dict``: every mutating method raises :class:`TypeError`.

    A real ``dict`` otherwise: it compares equal to one, ``json.dumps`` writes it, and it
    pickles and deep-copies (records cross process boundaries). Build one with
    :func:`freeze`, which freezes nested values too.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))


class FrozenList(list[Any]):
    """A read-only ``list``: every mutating method raises :class:`TypeError`.

    Compares equal to a ``list`` with the same items, pickles and deep-copies.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self),))


for _name in (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
):
    setattr(FrozenDict, _name, _refuse)
for _name in (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "__imul__",
    "append",
    "clear",
    "extend",
    "insert",
    "pop",
    "remove",
    "reverse",
    "sort",
):
    setattr(FrozenList, _name, _refuse)
del _name


#: JSON's scalar types (and Decimal, which exact parsing gives): nothing to freeze.
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, Decimal, type(None)})


def freeze(value: Any) -> Any:
    """``value`` read-only all the way down: mappings become :class:`FrozenDict`, lists
    :class:`FrozenList`, tuples and sets keep their (immutable) kind with frozen items;
    anything else is returned as is. A :class:`FrozenDict` or :class:`FrozenList` (made by
    this function) is returned as it is."""
    kind = type(value)
    # Fast paths for what JSON decoding gives: every record's raw form goes through here.
    if kind in _SCALARS or kind is FrozenDict or kind is FrozenList or kind in _INERT:
        return value
    if kind is dict:
        return FrozenDict({k: v if type(v) in _SCALARS else freeze(v) for k, v in value.items()})
    if kind is list:
        return FrozenList([v if type(v) in _SCALARS else freeze(v) for v in value])
    if kind is tuple:  # not a named tuple
        return tuple([v if type(v) in _SCALARS else freeze(v) for v in value])
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if not isinstance(value, tuple) and len(_INERT) < _INERT_MAX:
        _INERT.add(kind)  # a record class, a UUID...: the (slow) ABC checks once per type
    return value


#: Types :func:`freeze` returns as they are (learned on first sight; bounded).
_INERT: set[type] = set()
_INERT_MAX = 256


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if type(value) is FrozenDict:  # a parsed record's raw form: already frozen
        return value
    frozen: Mapping[str, Any] = freeze(value)
    return frozen


@attrs.frozen(kw_only=True)
class Money:
    """An exact amount in major units (``Decimal("50")`` is fifty dollars), with its currency.

    ``currency`` is the ISO 4217 code the vendor sent, or ``None`` when it sent none.
    """

    amount: Decimal
    currency: str | None = None


@attrs.frozen(kw_only=True)
class Ref:
    """A reference to another object of the CRM (a user, a company, a stage, a pipeline)."""

    id: str | None = None
    name: str | None = None


@attrs.frozen(kw_only=True)
class Contact:
    """The deal's contact person, as far as the CRM tells."""

    id: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    title: str | None = None
    url: str | None = None


@attrs.frozen(kw_only=True, unsafe_hash=False)
class Opportunity:
    """One sales opportunity (a deal), normalized across CRMs.

    Immutable; equal when every field is equal, hashed by ``(provider, id)`` so records can go
    into sets and dict keys. Datetimes are timezone-aware. ``custom_fields`` holds the vendor's
    custom or unmapped attributes and ``raw`` the vendor's record exactly as received, both
    read-only all the way down (:class:`FrozenDict` and :class:`FrozenList`, which compare
    equal to ``dict`` and ``list``). Records pickle and deep-copy.
    """

    provider: str
    id: str
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    status: OpportunityStatus = OpportunityStatus.OPEN
    status_label: str | None = None
    stage: Ref | None = None
    pipeline: Ref | None = None
    amount: Money | None = None
    value_period: str | None = None
    confidence: int | None = None
    owner: Ref | None = None
    company: Ref | None = None
    contact: Contact | None = None
    note: str | None = None
    source: str | None = None
    won_at: datetime | None = None
    lost_at: datetime | None = None
    closed_at: datetime | None = None
    expected_close_at: datetime | None = None
    custom_fields: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, repr=False
    )
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, repr=False)

    def __attrs_post_init__(self) -> None:
        # UTC, what every adapter gives, is checked by identity alone; anything else, once.
        if (
            self.created_at.tzinfo is UTC
            and self.updated_at.tzinfo is UTC
            and (self.won_at is None or self.won_at.tzinfo is UTC)
            and (self.lost_at is None or self.lost_at.tzinfo is UTC)
            and (self.closed_at is None or self.closed_at.tzinfo is UTC)
            and (self.expected_close_at is None or self.expected_close_at.tzinfo is UTC)
        ):
            return
        for name in _TIMESTAMPS:
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware, got {value!r}")

    def __hash__(self) -> int:
        return hash((self.provider, self.id))


_TIMESTAMPS = ("created_at", "updated_at", "won_at", "lost_at", "closed_at", "expected_close_at")
