"""Plain-JSON forms of the normalized record, for files, databases and command lines.

The model holds no serialization logic; this module is the one place that turns an
:class:`~close_opps.Opportunity` into JSON-ready data: decimals and datetimes become strings
(``"50.00"``, ``"2025-01-01T00:00:00+00:00"``), so nothing is lost to floats.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Any

import attrs

from close_opps.model import FrozenDict, FrozenList, Money, Opportunity

__all__ = [
    "FIELDS",
    "FlatColumn",
    "flat_columns",
    "flatten",
    "jsonable",
    "opportunity_to_dict",
    "opportunity_to_json",
]


#: Types JSON holds as they are (exact types: a subclass such as a StrEnum goes the long way).
_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold turned into strings, recursively
    (decimals and datetimes as text, enums as their value, mappings as dicts).

    Custom fields may hold what a provider's value decoders made (decimals, times, UUIDs,
    small attrs classes); none of them may make a record unwritable.
    """
    kind = type(value)
    # Fast paths for what records hold most (every record of a JSONL export comes here).
    if kind in _PLAIN:
        return value
    if kind is dict or kind is FrozenDict:
        return {
            (k if type(k) is str else str(k)): (v if type(v) in _PLAIN else jsonable(v))
            for k, v in value.items()
        }
    if kind is list or kind is FrozenList:
        return [v if type(v) in _PLAIN else jsonable(v) for v in value]
    if kind is Decimal:
        return str(value)
    if kind is datetime:
        return value.isoformat()
    if isinstance(value, Enum):  # before str: OpportunityStatus is a StrEnum
        return jsonable(value.value)
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if attrs.has(kind):
        return {a.name: jsonable(getattr(value, a.name)) for a in attrs.fields(kind)}
    return str(value)  # UUID, and anything else with a faithful text form


#: The top-level keys of :func:`opportunity_to_dict`, in order.
FIELDS: tuple[str, ...] = tuple(a.name for a in Opportunity.__attrs_attrs__)


def opportunity_to_dict(opportunity: Opportunity, *, raw: bool = True) -> dict[str, Any]:
    """``opportunity`` as JSON-ready data: every field, decimals and datetimes as strings.

    ``raw=False`` leaves the vendor payload out (it can be large).
    """
    data: dict[str, Any] = jsonable(opportunity)
    if not raw:
        data.pop("raw", None)
    return data


def opportunity_to_json(opportunity: Opportunity, *, raw: bool = True) -> str:
    """``opportunity`` as one line of JSON (for JSONL)."""
    return json.dumps(opportunity_to_dict(opportunity, raw=raw), ensure_ascii=False)


# ------------------------------------------------------------------------ flat columns


@attrs.frozen
class FlatColumn:
    """One flat column: ``field`` of the record, and ``part`` of it when the field is nested."""

    name: str
    field: str
    part: str | None = None


def _plain_type(hint: Any) -> Any:
    """``hint`` without ``| None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


@cache
def flat_columns() -> tuple[FlatColumn, ...]:
    """The flat columns of a record, derived from :data:`FIELDS`: the CSV's columns and
    the SQLite store's (``close_opps.sync``).

    A nested record (``Ref``, ``Contact``) becomes one column per attribute (``owner_id``,
    ``owner_name``, ``contact_email``); ``Money`` becomes ``amount`` and ``currency``;
    ``custom_fields`` stays one column; ``raw`` is left out. A field added to
    :class:`~close_opps.Opportunity` appears here, so in both.
    """
    hints = typing.get_type_hints(Opportunity)
    columns: list[FlatColumn] = []
    for name in FIELDS:
        if name == "raw":
            continue
        kind = _plain_type(hints.get(name, Any))
        if isinstance(kind, type) and attrs.has(kind):
            for part in attrs.fields(kind):
                label = part.name if kind is Money else f"{name}_{part.name}"
                columns.append(FlatColumn(label, name, part.name))
        else:
            columns.append(FlatColumn(name, name))
    names = [c.name for c in columns]
    if len(set(names)) != len(names):  # pragma: no cover - a future field clashing
        raise RuntimeError(f"flat column names clash: {names}")
    return tuple(columns)


def flatten(opportunity: Opportunity) -> dict[str, Any]:
    """The record as ``{column: value}`` in :func:`flat_columns` order, values as Python
    holds them (``datetime``, ``Decimal``, ``OpportunityStatus``, a mapping for
    ``custom_fields``, ``None`` for none): each writer turns them into its own text."""
    row: dict[str, Any] = {}
    for column in flat_columns():
        value = getattr(opportunity, column.field)
        if column.part is not None:
            value = None if value is None else getattr(value, column.part)
        row[column.name] = value
    return row
