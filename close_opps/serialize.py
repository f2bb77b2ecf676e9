"""Plain-JSON forms of the normalized record, for files, databases and command lines.

The model holds no serialization logic; this module is the one place that turns an
:class:`~close_opps.Opportunity` into JSON-ready data: decimals and datetimes become strings
(``"50.00"``, ``"2025-01-01T00:00:00+00:00"``), so nothing is lost to floats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime, time
from enum import Enum
from typing import Any

import attrs

from close_opps.model import Opportunity

__all__ = ["FIELDS", "opportunity_to_dict", "opportunity_to_json"]


def _jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold turned into strings, recursively.

    Custom fields may hold what a provider's value decoders made (decimals, times, UUIDs,
    small attrs classes); none of them may make a record unwritable.
    """
    if isinstance(value, Enum):  # before str: OpportunityStatus is a StrEnum
        return _jsonable(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if attrs.has(type(value)):
        return _jsonable(attrs.asdict(value, recurse=False))
    return str(value)  # Decimal, UUID, and anything else with a faithful text form


#: The top-level keys of :func:`opportunity_to_dict`, in order.
FIELDS: tuple[str, ...] = tuple(a.name for a in Opportunity.__attrs_attrs__)


def opportunity_to_dict(opportunity: Opportunity, *, raw: bool = True) -> dict[str, Any]:
    """``opportunity`` as JSON-ready data: every field, decimals and datetimes as strings.

    ``raw=False`` leaves the vendor payload out (it can be large).
    """
    data: dict[str, Any] = _jsonable(opportunity)
    if not raw:
        data.pop("raw", None)
    return data


def opportunity_to_json(opportunity: Opportunity, *, raw: bool = True) -> str:
    """``opportunity`` as one line of JSON (for JSONL)."""
    return json.dumps(opportunity_to_dict(opportunity, raw=raw), ensure_ascii=False)
