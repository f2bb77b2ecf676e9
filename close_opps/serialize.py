"""Plain-JSON forms of the normalized record, for files, databases and command lines.

The model holds no serialization logic; this module is the one place that turns an
:class:`~close_opps.Opportunity` into JSON-ready data: decimals and datetimes become strings
(``"50.00"``, ``"2025-01-01T00:00:00+00:00"``), so nothing is lost to floats.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Any, Final

import attrs
import orjson

from close_opps.model import Contact, FrozenDict, FrozenList, Money, Opportunity, Ref

__all__ = [
    "FIELDS",
    "FlatColumn",
    "canonical_json",
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


def canonical_json(value: Any) -> bytes:
    """``jsonable(value)`` as canonical JSON: UTF-8, compact, keys sorted at every level.

    The same value always gives the same bytes, whatever order its mappings were built in,
    so the bytes can be hashed (the sync store's content digest is computed from them).
    Written by orjson in one pass over the value; what orjson refuses (an integer beyond 64
    bits, a key that is not text, a lone surrogate, nesting deeper than 254) is written as
    ``json.dumps(jsonable(value), sort_keys=True, ensure_ascii=False)`` with compact
    separators, which is also the form of everything else byte for byte, floats aside
    (``1e16`` here, ``1e+16`` there; both read back as the same number; NaN and infinities
    become ``null`` here).

    Raises:
        UnicodeEncodeError: the value holds text that is not UTF-8 (a lone surrogate).
        ValueError, RecursionError: what ``json.dumps`` raises for the rest.
    """
    try:
        return orjson.dumps(value, default=_orjson_default, option=_CANONICAL)
    except orjson.JSONEncodeError:
        plain = jsonable(value)
        return json.dumps(plain, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


#: orjson writes the rest itself, exactly as ``jsonable`` + ``json.dumps`` would.
_CANONICAL: Final = (
    orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)
#: The model's nested records (``jsonable`` writes them as their attributes too).
_MODEL_PARTS: Final = frozenset({Money, Ref, Contact})


@cache
def _attribute_names(kind: type) -> tuple[str, ...]:
    return tuple(a.name for a in attrs.fields(kind))


def _orjson_default(value: Any) -> Any:
    """What orjson does not write itself (or is told not to), as ``jsonable`` writes it."""
    kind: Any = type(value)
    if kind is Decimal:
        return str(value)
    if kind is datetime:
        return value.isoformat()
    if kind in _MODEL_PARTS:  # its values go through orjson (and here) in turn
        return {name: getattr(value, name) for name in _attribute_names(kind)}
    return jsonable(value)


def _ready(hint: Any, read: str, depth: int, namespace: dict[str, Any]) -> str:
    """An expression giving the value ``read`` (declared as ``hint``) as :func:`jsonable`
    gives it, or as a value orjson writes the same way itself: a value of the declared type
    inline (a UTC datetime as it is: orjson writes it as ``isoformat()`` does), anything
    else through ``J`` (``jsonable``), so that what orjson receives is plain."""
    kind = _plain_type(hint)
    if kind is datetime:
        utc = "type(v) is datetime and v.tzinfo is UTC"
        return f"(v if (v := {read}) is None or {utc} else J(v))"
    if kind is Decimal:
        return f"(v if (v := {read}) is None else str(v) if type(v) is Decimal else J(v))"
    if kind is str or kind is int:  # exact types: a bool, an enum or a subclass goes to J
        return f"(v if (v := {read}) is None or type(v) is {kind.__name__} else J(v))"
    if (
        isinstance(kind, type)
        and issubclass(kind, Enum)
        and kind.__name__.isidentifier()
        and all(type(member.value) in (str, int) for member in kind)
    ):
        namespace[kind.__name__] = kind
        return f"(v.value if type(v := {read}) is {kind.__name__} else J(v))"
    if kind in _MODEL_PARTS:
        var = f"p{depth}"
        hints = typing.get_type_hints(kind)
        items = ", ".join(
            f"{name!r}: {_ready(hints[name], f'{var}.{name}', depth + 1, namespace)}"
            for name in _attribute_names(kind)
        )
        return (
            f"(None if ({var} := {read}) is None else {{{items}}} "
            f"if type({var}) is {kind.__name__} else J({var}))"
        )
    return f"J({read})"


def _compile_fields() -> Any:
    """``fields(opportunity, custom) -> dict``: every field but ``raw`` as
    :func:`opportunity_to_dict` has it, ``custom_fields`` being ``custom`` (its JSON, made
    beforehand), and UTC datetimes left for orjson to write.

    Generated from the model, as attrs generates its methods: reading the nested records
    and formatting the datetimes inline (the latter in orjson) costs half of handing each
    value to a Python callback from orjson.
    """
    hints = typing.get_type_hints(Opportunity)
    namespace: dict[str, Any] = {"datetime": datetime, "Decimal": Decimal, "UTC": UTC}
    namespace.update({"J": jsonable}, **{kind.__name__: kind for kind in _MODEL_PARTS})
    items = ", ".join(
        f"{name!r}: "
        + ("custom" if name == "custom_fields" else _ready(hints[name], f"o.{name}", 0, namespace))
        for name in FIELDS
        if name != "raw"
    )
    source = f"def fields(o, custom):\n    return {{{items}}}\n"
    exec(compile(source, "<close_opps.serialize fields>", "exec"), namespace)  # noqa: S102
    return namespace["fields"]


def _record_json(opportunity: Opportunity) -> tuple[bytes, bytes]:
    """``canonical_json(opportunity_to_dict(opportunity, raw=False))`` and
    ``canonical_json(opportunity.custom_fields)``, the custom fields serialized once for
    both (the sync store writes both: its ``record`` and ``custom_fields`` columns)."""
    custom = canonical_json(opportunity.custom_fields)
    try:
        record = orjson.dumps(_fields(opportunity, orjson.Fragment(custom)), option=_SORTED)
    except orjson.JSONEncodeError:  # what orjson refuses: the long way, as canonical_json
        record = canonical_json(opportunity_to_dict(opportunity, raw=False))
    return record, custom


_SORTED: Final = orjson.OPT_SORT_KEYS


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


#: ``_fields(opportunity, custom)``: its fields but ``raw``, for :func:`_record_json`.
_fields: Final[Callable[[Opportunity, Any], dict[str, Any]]] = _compile_fields()
