"""Reevo's typed attribute values: one small decoder per ``value_type``, in a registry.

Every attribute of a Reevo record is an envelope ``{"value": ..., "value_type": "..."}`` (or a
list of envelopes for list attributes). :func:`decode_attribute` turns one attribute into a
Python value through :data:`VALUE_DECODERS`:

- a ``null`` envelope or a ``null`` value is ``None``;
- a known ``value_type`` whose value has the wrong shape is a :class:`~close_opps.DecodeError`
  naming the attribute's path (``$.data.attributes.amount.value.amount``);
- a ``value_type`` nobody has seen before is kept exactly as it came (the envelope itself), and
  logged at debug level: never fatal.

Pure functions of decoded JSON; no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

import attrs

from close_opps._decoding import parse_date, parse_datetime, parse_decimal, parse_int
from close_opps._redact import get_logger
from close_opps.errors import DecodeError
from close_opps.model import Money, freeze

__all__ = [
    "CURRENCY_CODE_KEYS",
    "VALUE_DECODERS",
    "AccountDomain",
    "Address",
    "ContactEmail",
    "ContactPhoneNumber",
    "Option",
    "RecordReference",
    "Stage",
    "ValueDecoder",
    "decode_attribute",
    "decode_attributes",
    "decode_value",
]

logger = get_logger("close_opps.reevo")

PROVIDER: Final = "reevo"

#: Keys under which a ``currency`` value may carry its ISO 4217 code, in order of preference.
CURRENCY_CODE_KEYS: Final = ("currency_code", "currency", "iso_currency_code")


# ------------------------------------------------------------------------------ value classes


@attrs.frozen(kw_only=True)
class Option:
    """A ``select``, ``contact_stage`` or ``account_stage`` value: one option of a picklist."""

    id: str | None = None
    display_value: str | None = None
    api_name: str | None = None
    color: str | None = None


@attrs.frozen(kw_only=True)
class Stage(Option):
    """An ``opportunity_stage`` value: an option with the stage's forecast figures.

    ``closing_probability`` is kept as the text Reevo sent (``"40"``, ``"0.4"``, documented as
    a string); the adapter reads it into :attr:`close_opps.Opportunity.confidence`.
    """

    closing_probability: str | None = None
    expected_days: int | None = None


@attrs.frozen(kw_only=True)
class RecordReference:
    """A ``record_reference`` value: the id (and type) of another Reevo record."""

    id: str
    type: str | None = None


@attrs.frozen(kw_only=True)
class ContactEmail:
    """A ``contact_email`` value."""

    email: str
    is_primary: bool | None = None
    labels: tuple[str, ...] = ()
    id: str | None = None


@attrs.frozen(kw_only=True)
class ContactPhoneNumber:
    """A ``contact_phone_number`` value."""

    phone_number: str
    is_primary: bool | None = None
    labels: tuple[str, ...] = ()
    id: str | None = None


@attrs.frozen(kw_only=True)
class AccountDomain:
    """An ``account_domain`` value."""

    domain_name: str
    is_primary: bool | None = None
    id: str | None = None


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    frozen: Mapping[str, Any] = freeze(value)
    return frozen


@attrs.frozen(kw_only=True)
class Address:
    """An ``address`` value (its keys are not documented by Reevo).

    The usual parts get attributes; every key of the object, these included, is in
    ``fields`` exactly as sent, so nothing Reevo says is lost.
    """

    street_one: str | None = None
    street_two: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    fields: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen, repr=False)


# ------------------------------------------------------------------------- shape checking


class _ShapeError(ValueError):
    """A value does not have its type's shape; ``where`` is the path inside the value."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, Decimal, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict) and not isinstance(value, Mapping):  # dict: no ABC check
        raise _ShapeError(f"expected an object, got {_kind(value)}")
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _ShapeError(f"expected a string, got {_kind(value)}", f".{key}")


def _req_str(obj: Mapping[str, Any], key: str) -> str:
    value = _opt_str(obj, key)
    if value is None:
        raise _ShapeError("required field is missing", f".{key}")
    return value


def _opt_bool(obj: Mapping[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _ShapeError(f"expected a boolean, got {_kind(value)}", f".{key}")


def _labels(obj: Mapping[str, Any], key: str = "labels") -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _ShapeError(f"expected a list of strings, got {_kind(value)}", f".{key}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _ShapeError(f"expected a string, got {_kind(item)}", f".{key}[{index}]")
    return tuple(value)


# ------------------------------------------------------------------------------- decoders


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _ShapeError(f"expected a string, got {_kind(value)}")
    return value


def _number(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal, float)):
        raise _ShapeError(f"expected a number or a numeric string, got {_kind(value)}")
    try:
        return parse_decimal(value)
    except (TypeError, ValueError) as exc:
        raise _ShapeError(str(exc)) from None


def _currency(value: Any) -> Money | None:
    obj = _object(value)
    amount = obj.get("amount")
    code: str | None = None
    for key in CURRENCY_CODE_KEYS:
        code = _opt_str(obj, key)
        if code is not None:
            break
    if amount is None:
        return None  # a currency field left empty: no amount, whatever the code
    try:
        return Money(amount=_number(amount), currency=code.upper() if code else None)
    except _ShapeError as exc:
        raise _ShapeError(str(exc), ".amount") from None


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _ShapeError(f"expected a boolean, got {_kind(value)}")
    return value


def _timestamp(value: Any) -> datetime:
    text = _text(value)
    try:
        return parse_datetime(text)
    except ValueError:
        raise _ShapeError(f"{text!r} is not an ISO 8601 timestamp") from None


def _date(value: Any) -> date:
    text = _text(value)
    try:
        return parse_date(text)
    except ValueError:
        raise _ShapeError(f"{text!r} is not an ISO 8601 date") from None


def _time(value: Any) -> time:
    text = _text(value)
    try:
        return time.fromisoformat(text.strip())
    except ValueError:
        raise _ShapeError(f"{text!r} is not an ISO 8601 time") from None


def _uuid(value: Any) -> uuid.UUID:
    text = _text(value)
    try:
        return uuid.UUID(text)
    except ValueError:
        raise _ShapeError(f"{text!r} is not a UUID") from None


def _option(value: Any) -> Option:
    obj = _object(value)
    return Option(
        id=_opt_str(obj, "id"),
        display_value=_opt_str(obj, "display_value"),
        api_name=_opt_str(obj, "api_name"),
        color=_opt_str(obj, "color"),
    )


def _stage(value: Any) -> Stage:
    obj = _object(value)
    probability = obj.get("closing_probability")
    if isinstance(probability, (int, Decimal, float)) and not isinstance(probability, bool):
        probability = str(probability)  # documented as a string; a number is read as its text
    elif probability is not None and not isinstance(probability, str):
        raise _ShapeError(f"expected a string, got {_kind(probability)}", ".closing_probability")
    days = obj.get("expected_days")
    if days is not None:
        try:
            days = parse_int(days)
        except TypeError:
            raise _ShapeError(f"expected an integer, got {_kind(days)}", ".expected_days") from None
        except ValueError as exc:
            raise _ShapeError(str(exc), ".expected_days") from None
    return Stage(
        id=_opt_str(obj, "id"),
        display_value=_opt_str(obj, "display_value"),
        api_name=_opt_str(obj, "api_name"),
        color=_opt_str(obj, "color"),
        closing_probability=probability,
        expected_days=days,
    )


def _reference(value: Any) -> RecordReference:
    obj = _object(value)
    return RecordReference(
        id=_req_str(obj, "related_record_id"), type=_opt_str(obj, "related_record_type")
    )


def _contact_email(value: Any) -> ContactEmail:
    obj = _object(value)
    return ContactEmail(
        email=_req_str(obj, "email"),
        is_primary=_opt_bool(obj, "is_primary"),
        labels=_labels(obj),
        id=_opt_str(obj, "id"),
    )


def _contact_phone_number(value: Any) -> ContactPhoneNumber:
    obj = _object(value)
    return ContactPhoneNumber(
        phone_number=_req_str(obj, "phone_number"),
        is_primary=_opt_bool(obj, "is_primary"),
        labels=_labels(obj),
        id=_opt_str(obj, "id"),
    )


def _account_domain(value: Any) -> AccountDomain:
    obj = _object(value)
    return AccountDomain(
        domain_name=_req_str(obj, "domain_name"),
        is_primary=_opt_bool(obj, "is_primary"),
        id=_opt_str(obj, "id"),
    )


def _address(value: Any) -> Address:
    obj = _object(value)
    return Address(
        street_one=_opt_str(obj, "street_one"),
        street_two=_opt_str(obj, "street_two"),
        city=_opt_str(obj, "city"),
        state=_opt_str(obj, "state"),
        postal_code=_opt_str(obj, "postal_code"),
        country=_opt_str(obj, "country"),
        fields=obj,
    )


#: A decoder: the ``value`` of a non-null envelope in, a Python value out; raises
#: ``ValueError`` or ``TypeError`` when the value does not have its type's shape.
ValueDecoder = Callable[[Any], Any]

#: ``value_type`` -> its decoder: every type of Reevo's documented list.
VALUE_DECODERS: Final[Mapping[str, ValueDecoder]] = MappingProxyType(
    {
        "string": _text,
        "long_text": _text,
        "rich_text": _text,
        "number": _number,
        "percent": _number,
        "currency": _currency,
        "boolean": _boolean,
        "timestamp": _timestamp,
        "date": _date,
        "time": _time,
        "email": _text,
        "phone_number": _text,
        "url": _text,
        "uuid": _uuid,
        "select": _option,
        "enum": _text,
        "contact_stage": _option,
        "account_stage": _option,
        "opportunity_stage": _stage,
        "record_reference": _reference,
        "contact_email": _contact_email,
        "contact_phone_number": _contact_phone_number,
        "address": _address,
        "account_domain": _account_domain,
    }
)


# ------------------------------------------------------------------------------ entry points


def decode_value(value_type: str, value: Any) -> Any:
    """One value by its type: ``None`` for ``null``; raises ``KeyError`` for an unknown type.

    Raises:
        KeyError: no decoder is registered for ``value_type``.
        ValueError: the value does not have the type's shape.
    """
    decoder = VALUE_DECODERS[value_type]
    if value is None:
        return None
    return decoder(value)


def _envelope(
    envelope: Any,
    path: str,
    name: str | None,
    index: int | None,
    record_id: str | None,
    errors: list[tuple[str, str]],
) -> Any:
    # The path (``path.name[index]``) is formatted only for a problem: a record has dozens
    # of attributes and nearly all are fine.
    if envelope is None:
        return None
    if not isinstance(envelope, dict) and not isinstance(envelope, Mapping):
        why = f"expected a {{value, value_type}} object, got {_kind(envelope)}"
        errors.append((_at(path, name, index), why))
        return None
    value_type = envelope.get("value_type")
    decoder = VALUE_DECODERS.get(value_type) if type(value_type) is str else None
    if decoder is None:
        if not isinstance(value_type, str):
            why = f"expected a string, got {_kind(value_type)}"
            errors.append((f"{_at(path, name, index)}.value_type", why))
            return None
        logger.debug(
            "reevo: record %s: %s has the unknown value_type %r, kept as received",
            record_id,
            _at(path, name, index),
            value_type,
        )
        return envelope
    value = envelope.get("value")
    if value is None:
        return None
    try:
        return decoder(value)
    except _ShapeError as exc:
        errors.append((f"{_at(path, name, index)}.value{exc.where}", f"{value_type}: {exc}"))
    except (TypeError, ValueError) as exc:
        errors.append((f"{_at(path, name, index)}.value", f"{value_type}: {exc}"))
    return None


def _at(path: str, name: str | None, index: int | None) -> str:
    where = path if name is None else f"{path}.{name}"
    return where if index is None else f"{where}[{index}]"


def _attribute(
    envelope: Any,
    *,
    path: str,
    name: str | None = None,
    record_id: str | None,
    errors: list[tuple[str, str]],
) -> Any:
    if isinstance(envelope, list):
        return tuple(
            _envelope(item, path, name, i, record_id, errors) for i, item in enumerate(envelope)
        )
    return _envelope(envelope, path=path, name=name, index=None, record_id=record_id, errors=errors)


def _raise(errors: list[tuple[str, str]], record_id: str | None) -> None:
    if not errors:
        return
    where, why = errors[0]
    others = "; ".join(f"{p}: {m}" for p, m in errors[1:])
    message = why if not others else f"{why} (other problems: {others})"
    raise DecodeError(message, provider=PROVIDER, record_id=record_id, path=where)


def decode_attribute(envelope: Any, *, path: str = "$", record_id: str | None = None) -> Any:
    """One attribute (an envelope, a list of envelopes, or ``null``) as a Python value.

    A list attribute becomes a tuple of its decoded items.

    Raises:
        DecodeError: a known type's value has the wrong shape (its ``path`` names the spot).
    """
    errors: list[tuple[str, str]] = []
    result = _attribute(envelope, path=path, record_id=record_id, errors=errors)
    _raise(errors, record_id)
    return result


def decode_attributes(
    attributes: Mapping[str, Any], *, path: str = "$.attributes", record_id: str | None = None
) -> dict[str, Any]:
    """Every attribute of a record decoded, by name.

    Raises:
        DecodeError: at least one attribute has the wrong shape; the error names the first
            one's path and its message lists every other problem of the record.
    """
    errors: list[tuple[str, str]] = []
    decoded = {
        name: _attribute(envelope, path=path, name=name, record_id=record_id, errors=errors)
        for name, envelope in attributes.items()
    }
    _raise(errors, record_id)
    return decoded
