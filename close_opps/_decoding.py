"""Shared pieces for turning vendor JSON into attrs classes with cattrs.

Each adapter owns its converter (made by :func:`make_converter`) and its vendor record classes;
this module holds what they all need: strict primitive hooks (a string field given a number is
an error, not silently ``str()``-ed), exact decimals, timezone-aware datetimes, and the
translation of cattrs' validation errors into :class:`~close_opps.errors.DecodeError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from close_opps._redact import safe_cause
from close_opps.errors import DecodeError
from close_opps.model import FrozenDict, Ref

__all__ = [
    "MAX_DECIMAL_EXPONENT",
    "decode",
    "listed",
    "make_converter",
    "parse_date",
    "parse_datetime",
    "parse_decimal",
    "parse_int",
    "ref",
]

T = TypeVar("T")

#: Decimals are accepted from 10**-MAX_DECIMAL_EXPONENT to 10**MAX_DECIMAL_EXPONENT in
#: magnitude (and zero): beyond, no amount is real, and arithmetic on the number (``int()``,
#: a division) would cost time out of proportion to its text, or overflow.
MAX_DECIMAL_EXPONENT = 60
#: Integers a record field holds: SQLite's 64-bit range, so every one can be stored.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


def parse_datetime(value: Any) -> datetime:
    """An ISO 8601 timestamp as an aware UTC datetime.

    Accepts ``2013-02-01T00:54:51.321000+00:00``, ``2023-11-07T05:31:56Z``,
    ``2026-01-12 10:00:00+00`` and a bare date (midnight UTC). A timestamp without an offset
    is taken as UTC.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip())
    else:
        raise TypeError(f"expected an ISO 8601 timestamp string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable UTC
        raise ValueError(f"{value!r} is outside the range of representable timestamps") from None


_PLAIN_MAPPINGS: frozenset[Any] = frozenset((dict, FrozenDict))


@functools.cache
def _msgspec() -> Any:
    # Imported on first use, so that ``import close_opps`` stays light.
    import msgspec

    return msgspec


def parse_date(value: Any) -> date:
    """An ISO 8601 date (``2013-02-01``); a full timestamp gives its UTC date."""
    if isinstance(value, datetime):
        return parse_datetime(value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 10:
            return date.fromisoformat(text)
        return parse_datetime(text).date()
    raise TypeError(f"expected an ISO 8601 date string, got {type(value).__name__}")


def parse_decimal(value: Any) -> Decimal:
    """An exact decimal from a JSON number (already a Decimal or an int) or a numeric string."""
    if isinstance(value, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))  # the shortest text that reads back as this float
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    if not result:
        if abs(result.as_tuple().exponent) > MAX_DECIMAL_EXPONENT:  # type: ignore[arg-type]
            result = Decimal(0)  # 0E-999999999: zero, without the absurd exponent
        return result
    if not -MAX_DECIMAL_EXPONENT <= result.adjusted() <= MAX_DECIMAL_EXPONENT:
        raise ValueError(
            f"{_short(result)} is out of range (magnitude 1e-{MAX_DECIMAL_EXPONENT} to "
            f"1e{MAX_DECIMAL_EXPONENT})"
        )
    return result


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}…{text[-10:]} ({len(text)} characters)"


def parse_int(value: Any) -> int:
    """An integer within SQLite's 64-bit range from a JSON integer, or from a JSON number
    with no fraction (``40.0``, ``4e1``).

    The range is checked before any conversion, so no text costs more than linear time.
    """
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, int):
        result = value
    elif isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 18:  # before int(): 1e999999999
            raise ValueError(f"{_short(value)} is out of the 64-bit integer range")
        if value != value.to_integral_value():
            raise TypeError(f"expected an integer, got {_short(value)}")
        result = int(value)
    else:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if not _INT_MIN <= result <= _INT_MAX:
        raise ValueError(f"{_short(result)} is out of the 64-bit integer range")
    return result


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _: type) -> int:
    return parse_int(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _must_be(kind: type, noun: str, inner: Any) -> Any:
    """Wrap a structure hook so that it first checks the JSON value's kind.

    cattrs would otherwise iterate a string as a list of characters, or read attributes of a
    non-object; a vendor sending the wrong kind must get a DecodeError instead.
    """

    def hook(value: Any, target: Any) -> Any:
        if not isinstance(value, kind) or isinstance(value, (str, bytes)):
            raise TypeError(f"expected {noun}, got {type(value).__name__}")
        return inner(value, target)

    return hook


def _sequence_factory(cls: Any, converter: cattrs.Converter) -> Any:
    """``tuple[X, ...]`` fields become tuples (a frozen record stays immutable), others lists."""
    if get_origin(cls) is tuple or cls is tuple:
        return homogenous_tuple_structure_factory(cls, converter)
    return list_structure_factory(cls, converter)


class _VendorConverter(cattrs.Converter):
    """The converter :func:`make_converter` returns: a :class:`cattrs.Converter` that knows
    whether hooks were registered on it after it was made (its records then always take
    the detailed path of :func:`decode`, which honours them)."""

    _standard_hooks_only = False

    def register_structure_hook(self, *args: Any, **kwargs: Any) -> Any:
        self._standard_hooks_only = False
        return super().register_structure_hook(*args, **kwargs)

    def register_structure_hook_func(self, *args: Any, **kwargs: Any) -> Any:
        self._standard_hooks_only = False
        return super().register_structure_hook_func(*args, **kwargs)

    def register_structure_hook_factory(self, *args: Any, **kwargs: Any) -> Any:
        self._standard_hooks_only = False
        return super().register_structure_hook_factory(*args, **kwargs)


def make_converter() -> cattrs.Converter:
    """A converter for vendor records: strict primitives, exact money, aware datetimes.

    Unknown keys are ignored (a vendor adding a field never breaks a record); a known field
    with the wrong type is an error that names its path.
    """
    converter = _VendorConverter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(Decimal, lambda v, _: parse_decimal(v))
    converter.register_structure_hook(datetime, lambda v, _: parse_datetime(v))
    converter.register_structure_hook(date, lambda v, _: parse_date(v))
    converter.register_structure_hook_factory(
        attrs.has,
        lambda cls: _must_be(
            Mapping, "an object", cattrs.gen.make_dict_structure_fn(cls, converter)
        ),
    )
    converter.register_structure_hook_factory(
        is_sequence,
        lambda cls: _must_be(list, "a list", _sequence_factory(cls, converter)),
    )
    converter.register_structure_hook_factory(
        is_mapping,
        lambda cls: _must_be(Mapping, "an object", mapping_structure_factory(cls, converter)),
    )
    converter._standard_hooks_only = True
    return converter


def _first_path(exc: BaseException, prefix: str) -> tuple[str, str]:
    """The path and message of the first leaf failure inside a cattrs validation error."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, _ = exc.group_exceptions()
        for inner, note in with_notes:
            name = getattr(note, "name", None)
            index = getattr(note, "index", None)
            step = f".{name}" if name is not None else f"[{index}]"
            return _first_path(inner, prefix + step)
        for inner in exc.exceptions:
            return _first_path(inner, prefix)
    if isinstance(exc, KeyError):
        return prefix, "required field is missing"
    return prefix, str(exc) or type(exc).__name__


def decode(
    converter: cattrs.Converter,
    data: Any,
    cls: type[T],
    *,
    provider: str,
    path: str = "$",
) -> T:
    """``data`` structured as ``cls``; any mismatch becomes a :class:`DecodeError`.

    The error names the provider, the record's ``id`` when it has one, and the path of the
    first offending field (``$.data[2].date_updated``).
    """
    record_id = data.get("id") if isinstance(data, Mapping) else None
    record_id = record_id if isinstance(record_id, str) else None
    if not isinstance(data, Mapping):
        raise DecodeError(
            f"expected an object, got {type(data).__name__}",
            provider=provider,
            record_id=record_id,
            path=path,
        )
    if getattr(converter, "_standard_hooks_only", False):
        fast = _fast_structure(data, cls)
        if fast is not _NO_FAST_RESULT:
            return fast
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        where, why = _first_path(exc, path)
        details = "; ".join(cattrs.transform_error(exc, path=path))
        raise DecodeError(
            f"{why} (all problems: {details})",
            provider=provider,
            record_id=record_id,
            path=where,
        ) from safe_cause(exc)
    except (TypeError, ValueError, KeyError, ArithmeticError) as exc:  # a hook outside validation
        raise DecodeError(
            str(exc), provider=provider, record_id=record_id, path=path
        ) from safe_cause(exc)


# ------------------------------------------------------------------ the fast path of decode()
#
# msgspec builds the same attrs classes from the same annotations, in C, several times faster
# than cattrs. It is used only where its result is provably what the detailed path gives: a
# converter with the standard hooks only; a class whose field types are all understood below;
# timestamps read by parse_datetime itself (before msgspec sees the record: vendors send forms
# RFC 3339 does not allow, and the two parsers round differently); and a result whose every
# decimal and integer the standard hook keeps unchanged (finite and in range, within 64 bits).
# Anything else, including every invalid record, takes the detailed path, which names the
# offending field.

_NO_FAST_RESULT: Any = object()
_Check = Callable[[Any], bool]


class _NoFastPath(Exception):
    """A field type the fast path does not handle."""


@attrs.frozen
class _FastPlan:
    """How the fast path builds one class: which top-level fields are timestamps, and the
    check of msgspec's result."""

    timestamps: tuple[str, ...]
    check: _Check


def _fast_structure(data: Any, cls: type[T]) -> T:
    plan = _fast_plan(cls)  # type: ignore[arg-type]
    if plan is None or type(data) not in _PLAIN_MAPPINGS:
        return _NO_FAST_RESULT  # type: ignore[no-any-return]
    msgspec = _msgspec()
    try:
        if plan.timestamps:
            data = dict(data)
            for name in plan.timestamps:
                text = data.get(name)
                if text is not None:
                    data[name] = parse_datetime(text)
        value: T = msgspec.convert(data, cls)
    except (ValueError, TypeError, ArithmeticError):  # msgspec.ValidationError: a ValueError
        return _NO_FAST_RESULT  # type: ignore[no-any-return]
    return value if plan.check(value) else _NO_FAST_RESULT


def _unchanged_by(hook: Callable[[Any], Any]) -> _Check:
    def check(value: Any) -> bool:
        try:
            return hook(value) is value
        except (TypeError, ValueError, ArithmeticError):
            return False

    return check


def _int64(value: Any) -> bool:
    return bool(_INT_MIN <= value <= _INT_MAX)


_CHECKS: dict[Any, _Check | None] = {
    Decimal: _unchanged_by(parse_decimal),
    int: _int64,
    # msgspec gives a date (never a datetime) for a date field, which parse_date keeps.
    date: None,
    str: None,
    bool: None,
    Any: None,
    type(None): None,
}
_OPTIONAL_CHECKS: dict[_Check, _Check] = {
    _int64: lambda value: value is None or _INT_MIN <= value <= _INT_MAX,
}


def _optional(inner: _Check) -> _Check:
    # One call per field, not two, for the common optional kinds.
    return _OPTIONAL_CHECKS.get(inner) or (lambda value: value is None or inner(value))


def _every(inner: _Check) -> _Check:
    return lambda value: all(inner(item) for item in value)


def _every_value(inner: _Check) -> _Check:
    return lambda value: all(inner(item) for item in value.values())


def _type_check(tp: Any) -> _Check | None:
    """The check of one (nested) field type's fast result (``None``: nothing to check)."""
    if tp in _CHECKS:
        return _CHECKS[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return None
    if origin in (Union, UnionType) and type(None) in args and len(args) == 2:
        inner = _type_check(next(a for a in args if a is not type(None)))
        return None if inner is None else _optional(inner)
    if (origin is list and len(args) == 1) or (
        origin is tuple and len(args) == 2 and args[1] is Ellipsis
    ):
        inner = _type_check(args[0])
        return None if inner is None else _every(inner)
    if origin is dict and len(args) == 2 and args[0] is str:
        inner = _type_check(args[1])
        return None if inner is None else _every_value(inner)
    if isinstance(tp, type) and attrs.has(tp):
        return _class_check(tp)
    raise _NoFastPath(tp)  # a nested timestamp among them: only top-level ones are read first


def _class_check(cls: type, *, skip: tuple[str, ...] = ()) -> _Check | None:
    """The check of an attrs instance: each field's (but those in ``skip``)."""
    hints = get_type_hints(cls)
    checks: list[tuple[str, _Check]] = []
    for field in attrs.fields(cls):
        field_check = None if field.name in skip else _type_check(hints[field.name])
        if field_check is not None:
            checks.append((field.name, field_check))
    if not checks:
        return None

    def check_instance(value: Any) -> bool:
        for name, check_field in checks:  # noqa: SIM110 (a loop is faster than all())
            if not check_field(getattr(value, name)):
                return False
        return True

    return check_instance


def _always(value: Any) -> bool:
    return True


_TIMESTAMP_TYPES = (datetime, datetime | None)


@functools.cache
def _fast_plan(cls: type) -> _FastPlan | None:
    """The fast path's plan for ``cls``; ``None`` when its fields are not all understood
    (the class always takes the detailed path)."""
    if not (isinstance(cls, type) and attrs.has(cls)):
        return None
    try:
        hints = get_type_hints(cls)
        timestamps = tuple(f.name for f in attrs.fields(cls) if hints[f.name] in _TIMESTAMP_TYPES)
        check = _class_check(cls, skip=timestamps)
    except (_NoFastPath, NameError, TypeError, RecursionError):
        return None
    return _FastPlan(timestamps=timestamps, check=check or _always)


# ------------------------------------------------------------------------ shared references

#: One :class:`~close_opps.model.Ref` per ``(id, name)`` seen lately: the records of a
#: listing name the same few stages, pipelines and owners over and over, and sharing one
#: immutable value saves building it and the memory of every held copy.
_REFS: dict[tuple[str | None, str | None], Ref] = {}
_REFS_MAX = 4096


def ref(id_: str | None, name: str | None = None) -> Ref | None:
    """A :class:`~close_opps.model.Ref` to ``id_``/``name``; ``None`` when both are ``None``.

    Equal references are one shared (immutable) object.
    """
    if id_ is None and name is None:
        return None
    key = (id_, name)
    found = _REFS.get(key)
    if found is None:
        if len(_REFS) >= _REFS_MAX:
            _REFS.clear()
        found = _REFS[key] = Ref(id=id_, name=name)
    return found


def listed(
    body: Any, *, provider: str, key: str = "data", noun: str = "records"
) -> tuple[Mapping[str, Any], list[Any]]:
    """``body`` as an object holding a list under ``key`` (the envelope of a list page), and
    that list.

    Raises:
        DecodeError: ``body`` is not an object (path ``$``), or ``key`` holds no list.
    """
    if not isinstance(body, Mapping):
        raise DecodeError(
            f"expected an object, got {type(body).__name__}", provider=provider, path="$"
        )
    items = body.get(key)
    if not isinstance(items, list):
        raise DecodeError(
            f"expected a list of {noun}, got {type(items).__name__}",
            provider=provider,
            path=f"$.{key}",
        )
    return body, items
