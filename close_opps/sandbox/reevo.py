"""An emulator of Reevo's opportunity API (``/api/v2``), as an aiohttp application.

Serves ``GET /api/v2/opportunity/{id}`` (``{"data": record}``) and
``POST /api/v2/opportunity/_query`` (filters, sort, ``limit``, opaque ``cursor`` bound to its
filters and sort). Records are ``{id, created_at, updated_at, record_type, attributes}`` with
every attribute a ``{value, value_type}`` object (or a list of them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from ._common import (
    JSON,
    RECORDS,
    STATE,
    Desc,
    Entry,
    SortedView,
    WindowLimiter,
    monotonic_clock,
    parse_datetime,
    vendor_app,
)
from ._data import REEVO_LIST_ATTRIBUTES, REEVO_VALUE_TYPES, Deal, render_reevo
from ._faults import Fault, format_seconds, gateway_page
from ._options import ReevoOptions

__all__ = ["BASE_PATH", "OPERATORS", "make_app"]

#: Where the API lives on the emulator's host: the base URL an adapter takes ends with it.
BASE_PATH: Final = "/api/v2"

#: The filter operators ``_query`` understands.
OPERATORS: Final = frozenset(
    {
        "eq",
        "ne",
        "in",
        "not_in",
        "contains",
        "starts_with",
        "ends_with",
        "gt",
        "gte",
        "lt",
        "lte",
        "between",
        "exists",
        "not_exists",
    }
)
_TOP_LEVEL: Final = {"id": "uuid", "created_at": "timestamp", "updated_at": "timestamp"}
_TEXT_TYPES: Final = frozenset(
    {"string", "long_text", "enum", "uuid", "select", "opportunity_stage", "record_reference"}
)
_NUMBER_TYPES: Final = frozenset({"currency", "number", "percent"})
_ORDERED_TYPES: Final = _TEXT_TYPES | _NUMBER_TYPES | {"timestamp"}


class _ApiError(Exception):
    def __init__(self, status: int, body: JSON) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _bad(code: str, message: str) -> _ApiError:
    return _ApiError(400, {"error": code, "message": message})


def _invalid_body(
    loc: Sequence[str | int], kind: str, msg: str, given: Any, **ctx: Any
) -> _ApiError:
    detail: JSON = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": given}
    if ctx:
        detail["ctx"] = ctx
    return _ApiError(422, {"detail": [detail]})


# ----------------------------------------------------------------------------- faults, auth


def _too_many_requests(wait: str, *, header: bool = True) -> web.Response:
    """Reevo's 429: the wait in ``Retry-After`` (unless ``header`` is false) and the body."""
    return web.json_response(
        {
            "error": "rate_limit_exceeded",
            "message": f"Too many requests. Retry after {wait} seconds.",
        },
        status=429,
        headers={"Retry-After": wait} if header else {},
    )


class _Renderer:
    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        wait = format_seconds(fault.seconds)
        return _too_many_requests(wait, header=fault.retry_after_header is not False)

    def server_error(self, request: web.Request, status: int) -> web.StreamResponse:
        if status == 500:
            return web.Response(status=500, text="Internal Server Error")
        return web.Response(status=status, text=gateway_page(status), content_type="text/html")


def _api_key(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("X-Api-Key", "").strip() or None


@web.middleware
async def _reevo_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    key = _api_key(request)
    if key is None:
        return web.json_response({"detail": "Not authenticated"}, status=401)
    if key != state.api_key:
        return web.json_response({"detail": "Invalid API key"}, status=401)
    limit = state.limiter.hit(key)
    if not limit.allowed:
        return _too_many_requests(str(max(1, math.ceil(limit.reset_in))))
    try:
        return await handler(request)
    except _ApiError as exc:
        return web.json_response(exc.body, status=exc.status)
    except web.HTTPException as exc:
        return web.json_response({"detail": exc.reason}, status=exc.status)


# ----------------------------------------------------------------------------- values


def _value_type(field: str) -> str:
    if field in _TOP_LEVEL:
        return _TOP_LEVEL[field]
    return REEVO_VALUE_TYPES[field]


def _comparable(value: Any, value_type: str) -> Any:
    """What filters and sorts compare for one attribute value (``None`` stays ``None``)."""
    if value is None:
        return None
    if value_type in ("select", "opportunity_stage"):
        return value.get("api_name")
    if value_type == "record_reference":
        return value.get("related_record_id")
    if value_type == "currency":
        return Decimal(value["amount"])
    if value_type in ("number", "percent"):
        return Decimal(str(value))
    if value_type == "timestamp":
        return parse_datetime(value)
    return value


def _values(record: JSON, field: str) -> list[Any]:
    """The comparable values of ``field`` in ``record``: [] when null, many for lists."""
    if field in _TOP_LEVEL:
        raw = record[field]
        return [] if raw is None else [_comparable(raw, _TOP_LEVEL[field])]
    attribute = record["attributes"].get(field)
    if attribute is None:
        return []
    items = attribute if isinstance(attribute, list) else [attribute]
    values = (_comparable(item["value"], item["value_type"]) for item in items)
    return [value for value in values if value is not None]


def _target(field: str, value_type: str, value: Any) -> Any:
    """A filter's value, coerced to what :func:`_comparable` yields for ``value_type``."""
    try:
        if value_type in _NUMBER_TYPES:
            if isinstance(value, bool):
                raise TypeError
            return Decimal(str(value))
        if value_type == "timestamp":
            if not isinstance(value, str):
                raise TypeError
            return parse_datetime(value)
        if value_type == "boolean":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if value_type in _TEXT_TYPES:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError, InvalidOperation):
        raise _bad(
            "field_value_invalid", f"Invalid value {value!r} for field {field!r} ({value_type})."
        ) from None
    return value


def _many(field: str, value_type: str, value: Any, operator: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad("field_value_invalid", f"Operator {operator!r} takes a list of values.")
    return [_target(field, value_type, item) for item in value]


def _predicate(spec: Any, index: int) -> Callable[[JSON], bool]:
    if not isinstance(spec, dict):
        raise _invalid_body(
            ["filters", index], "dict_type", "Input should be a valid dictionary", spec
        )
    field, operator = spec.get("field"), spec.get("operator")
    if not isinstance(field, str):
        raise _invalid_body(["filters", index, "field"], "missing", "Field required", spec)
    if not isinstance(operator, str):
        raise _invalid_body(["filters", index, "operator"], "missing", "Field required", spec)
    if field not in _TOP_LEVEL and field not in REEVO_VALUE_TYPES:
        raise _bad("invalid_filter_field", f"Unknown field {field!r} for opportunity filters.")
    if operator not in OPERATORS:
        raise _bad("invalid_filter_operator", f"Unknown filter operator {operator!r}.")
    value_type = _value_type(field)
    value = spec.get("value")
    if operator == "exists":
        return lambda r: bool(_values(r, field))
    if operator == "not_exists":
        return lambda r: not _values(r, field)
    if operator in ("eq", "ne"):
        target = value if value is None else _target(field, value_type, value)
        if operator == "eq":
            return lambda r: (
                target in _values(r, field) if target is not None else not _values(r, field)
            )
        return lambda r: (
            target not in _values(r, field) if target is not None else bool(_values(r, field))
        )
    if operator in ("in", "not_in"):
        targets = _many(field, value_type, value, operator)
        if operator == "in":
            return lambda r: any(v in targets for v in _values(r, field))
        return lambda r: not any(v in targets for v in _values(r, field))
    if operator in ("contains", "starts_with", "ends_with"):
        if value_type not in _TEXT_TYPES:
            raise _bad(
                "invalid_filter_operator",
                f"Operator {operator!r} is not supported for {field!r} ({value_type}).",
            )
        needle = str(_target(field, value_type, value)).lower()
        test: Callable[[str], bool] = {
            "contains": lambda s: needle in s,
            "starts_with": lambda s: s.startswith(needle),
            "ends_with": lambda s: s.endswith(needle),
        }[operator]
        return lambda r: any(test(str(v).lower()) for v in _values(r, field))
    if value_type not in _ORDERED_TYPES:
        raise _bad(
            "invalid_filter_operator",
            f"Operator {operator!r} is not supported for {field!r} ({value_type}).",
        )
    if operator == "between":
        bounds = _many(field, value_type, value, operator)
        if len(bounds) != 2:
            raise _bad("field_value_invalid", "Operator 'between' takes [low, high].")
        low, high = bounds
        return lambda r: any(low <= v <= high for v in _values(r, field))
    bound = _target(field, value_type, value)
    compare: Callable[[Any], bool] = {
        "gt": lambda v: v > bound,
        "gte": lambda v: v >= bound,
        "lt": lambda v: v < bound,
        "lte": lambda v: v <= bound,
    }[operator]
    return lambda r: any(compare(v) for v in _values(r, field))


def _sort_terms(sort: Any) -> list[tuple[str, bool]]:
    if sort is None:
        return [("created_at", False)]
    if not isinstance(sort, list):
        raise _invalid_body(["sort"], "list_type", "Input should be a valid list", sort)
    terms = []
    for index, spec in enumerate(sort):
        if not isinstance(spec, dict) or not isinstance(spec.get("field"), str):
            raise _invalid_body(["sort", index, "field"], "missing", "Field required", spec)
        field = spec["field"]
        direction = spec.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise _invalid_body(
                ["sort", index, "direction"],
                "enum",
                "Input should be 'asc' or 'desc'",
                direction,
                expected="'asc' or 'desc'",
            )
        if field not in _TOP_LEVEL and field not in REEVO_VALUE_TYPES:
            raise _bad("unknown_field", f"Unknown field {field!r} for opportunity sort.")
        if field in REEVO_LIST_ATTRIBUTES or _value_type(field) not in _ORDERED_TYPES | {"boolean"}:
            raise _bad("invalid_sort_field", f"Field {field!r} cannot be sorted on.")
        terms.append((field, direction == "desc"))
    return terms or [("created_at", False)]


def _sort_key(terms: Sequence[tuple[str, bool]]) -> Callable[[Entry], tuple[Any, ...]]:
    """The sort terms as one ascending key (a record without a value sorts last
    ascending, first descending); the view breaks ties by id ascending."""

    def key(entry: Entry) -> tuple[Any, ...]:
        parts: list[Any] = []
        for field, descending in terms:
            values = _values(entry[1], field)
            part = (1, 0) if not values else (0, values[0])
            parts.append(Desc(part) if descending else part)
        return tuple(parts)

    return key


# ----------------------------------------------------------------------------- cursor


def _digest(filters: Any, sort: Any) -> str:
    canonical = json.dumps({"filters": filters, "sort": sort}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_cursor(offset: int, digest: str) -> str:
    """An opaque cursor: base64url of ``{"o": offset, "q": digest}``."""
    raw = json.dumps({"o": offset, "q": digest}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, digest: str) -> int:
    """The offset inside ``cursor``; 400 ``invalid_cursor`` if it is not ours or not for these
    filters and sort."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset, bound = data["o"], data["q"]
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _bad("invalid_cursor", "The cursor is malformed.") from None
    if bound != digest:
        raise _bad(
            "invalid_cursor",
            "The cursor was issued for other filters or sort; start again without a cursor.",
        )
    return offset


# ----------------------------------------------------------------------------- handlers


async def _query(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    options: ReevoOptions = state.options
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise _invalid_body(
            [], "json_invalid", "JSON decode error", raw.decode(errors="replace")
        ) from None
    if not isinstance(body, dict):
        raise _invalid_body([], "dict_type", "Input should be a valid dictionary", body)
    filters = body.get("filters") or []
    if not isinstance(filters, list):
        raise _invalid_body(["filters"], "list_type", "Input should be a valid list", filters)
    sort = body.get("sort")
    limit = body.get("limit", options.default_limit)
    if limit is None:
        limit = options.default_limit
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise _invalid_body(["limit"], "int_type", "Input should be a valid integer", limit)
    if limit < 1:
        raise _invalid_body(
            ["limit"],
            "greater_than_equal",
            "Input should be greater than or equal to 1",
            limit,
            ge=1,
        )
    if limit > options.max_limit:
        raise _invalid_body(
            ["limit"],
            "less_than_equal",
            f"Input should be less than or equal to {options.max_limit}",
            limit,
            le=options.max_limit,
        )
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise _invalid_body(["cursor"], "string_type", "Input should be a valid string", cursor)
    predicates = [_predicate(spec, i) for i, spec in enumerate(filters)]
    terms = _sort_terms(sort)
    digest = _digest(filters, sort)
    offset = decode_cursor(cursor, digest) if cursor else 0

    def build() -> SortedView:
        def match(entry: Entry) -> bool:
            return all(p(entry[1]) for p in predicates)

        return SortedView(
            state.entries(), key=_sort_key(terms), match=match if predicates else None
        )

    records = state.view(("query", digest), build).records
    page = records[offset : offset + limit]
    following = offset + len(page)
    next_cursor = encode_cursor(following, digest) if following < len(records) else None
    return state.list_response({"data": RECORDS, "next_cursor": next_cursor}, page)


async def _get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    raw = request.match_info["id"]
    try:
        record_id = str(uuid.UUID(raw))
    except ValueError:
        return web.json_response(
            {
                "detail": [
                    {
                        "type": "uuid_parsing",
                        "loc": ["path", "opportunity_id"],
                        "msg": "Input should be a valid UUID",
                        "input": raw,
                    }
                ]
            },
            status=422,
        )
    record = state.get(record_id)
    if record is None:
        return web.json_response(
            {"error": "record_not_found", "message": f"Opportunity {record_id} not found."},
            status=404,
        )
    return web.json_response({"data": record})


# ----------------------------------------------------------------------------- app


def make_app(options: ReevoOptions | None = None, *, seed: int = 0) -> web.Application:
    """Build the Reevo emulator: mount it at the root; its API lives under :data:`BASE_PATH`.

    ``options.seed``, when set, wins over ``seed``. The app's state is ``app[STATE]``; its
    fault injector is ``app[FAULTS]``.
    """
    options = options or ReevoOptions()

    def render(seed: int, deal: Deal) -> tuple[JSON, JSON]:
        record = render_reevo(seed, deal)
        return record, record

    limiter = WindowLimiter(options.rate_limit, monotonic_clock)
    app = vendor_app(
        "reevo",
        options,
        seed=seed,
        render=render,
        limiter=limiter,
        fault_renderer=_Renderer(),
        middleware=_reevo_middleware,
    )
    app.router.add_post(f"{BASE_PATH}/opportunity/_query", _query)
    app.router.add_get(f"{BASE_PATH}/opportunity/{{id}}", _get)
    return app
