"""Reevo (https://reevo.ai): bearer key, typed attribute envelopes, cursor pagination.

Endpoints: ``GET /opportunity/{id}`` (one record, ``{"data": record}``) and
``POST /opportunity/_query`` (filters, sort, ``limit``, ``cursor``; read-only, so retried like
a GET). Attribute values are decoded by ``value_type`` through the registry of
:mod:`close_opps.adapters._reevo_values`. See ``docs/providers/reevo.md`` for the mapping.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, ClassVar, Final

import attrs

from close_opps._decoding import decode, listed, make_converter, ref
from close_opps._redact import get_logger
from close_opps.adapters._reevo_values import (
    VALUE_DECODERS,
    AccountDomain,
    Address,
    ContactEmail,
    ContactPhoneNumber,
    Option,
    RecordReference,
    Stage,
    decode_attribute,
    decode_attributes,
)
from close_opps.adapters.base import BaseAdapter, ListQuery
from close_opps.errors import (
    APIError,
    DecodeError,
    InvalidRequestError,
    NotFoundError,
)
from close_opps.http import (
    Dialect,
    ErrorFields,
    Request,
    Response,
    error_location,
    opt_str,
    path_segment,
)
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus, Ref
from close_opps.paging import PageRequest, PagingPolicy, ParsedPage

__all__ = [
    "VALUE_DECODERS",
    "AccountDomain",
    "Address",
    "ContactEmail",
    "ContactPhoneNumber",
    "Option",
    "RecordReference",
    "ReevoAdapter",
    "ReevoDialect",
    "ReevoRecord",
    "Stage",
    "decode_attribute",
    "decode_attributes",
    "reevo_to_opportunity",
]

logger = get_logger("close_opps.reevo")

PROVIDER: Final = "reevo"

_QUERY_PATH: Final = "/opportunity/_query"
#: ``outcome`` values (lower-cased) and the status they mean.
_STATUS_BY_OUTCOME: Final = {"won": OpportunityStatus.WON, "lost": OpportunityStatus.LOST}
#: ``status`` values (lower-cased) that say whether the deal is closed.
_CLOSED_BY_STATUS: Final = {"open": False, "closed": True}
#: Keys of ``**filters`` that the adapter builds itself.
_OWNED_KEYS: Final = frozenset({"limit", "cursor", "sort"})
#: Attributes read by the mapping as well as from the record's top level.
_ID_ATTRIBUTES: Final = ("id", "created_at", "updated_at")


class ReevoDialect(Dialect):
    """Reevo's HTTP: bearer key; error bodies in every form seen.

    ``{"detail": "..."}``, ``{"detail": {"code"|"error", "message"}}``, a validation list
    ``{"detail": [{"loc": [...], "msg": "...", "ctx": {...}}]}``, ``{"error": "code",
    "message": "..."}`` and empty bodies; the vendor's codes pick the error class. A rejected
    ``limit`` is read into the maximum it names, a rejected cursor into
    :attr:`~close_opps.http.ErrorFields.cursor_invalid`. A 404 is "no such record" only with
    the code ``record_not_found``; ``{"detail": "Not Found"}`` is an unknown route.
    """

    provider = PROVIDER
    error_classes_by_code: ClassVar[Mapping[str, type[APIError]]] = {
        "record_not_found": NotFoundError,
        "unknown_field": InvalidRequestError,
        "field_value_invalid": InvalidRequestError,
        "invalid_filter_field": InvalidRequestError,
        "invalid_filter_operator": InvalidRequestError,
        "invalid_sort_field": InvalidRequestError,
        "invalid_cursor": InvalidRequestError,
    }

    def error_fields(self, data: Any) -> ErrorFields:
        """Read Reevo's error bodies, the page size a rejected ``limit`` names and cursor
        errors."""
        if not isinstance(data, Mapping):
            return super().error_fields(data)
        detail = data.get("detail")
        code = opt_str(data.get("code")) or opt_str(data.get("error_code"))
        message = opt_str(data.get("message"))
        error = data.get("error")
        if isinstance(error, Mapping):
            code = code or opt_str(error.get("code"))
            message = message or opt_str(error.get("message"))
        elif isinstance(error, str):
            if message:
                code = code or error  # {"error": "record_not_found", "message": "…"}
            else:
                message = error
        field_errors: dict[str, str] = {}
        max_page_size = None
        if isinstance(detail, Mapping):  # {"detail": {"code"|"error", "message"}}
            code = code or opt_str(detail.get("code")) or opt_str(detail.get("error"))
            message = message or opt_str(detail.get("message"))
        elif isinstance(detail, str):
            message = message or detail
        elif isinstance(detail, list):  # a validation list: [{"loc": [...], "msg": "..."}]
            for item in detail:
                if not isinstance(item, Mapping):
                    message = message or str(item)
                    continue
                where = error_location(item.get("loc"))
                field_errors[where] = str(item.get("msg", ""))
                ctx = item.get("ctx")
                le = ctx.get("le") if isinstance(ctx, Mapping) else None
                if where == "limit" and isinstance(le, int) and not isinstance(le, bool) and le > 0:
                    max_page_size = le
        if not message and field_errors:
            message = "; ".join(f"{k}: {v}" for k, v in field_errors.items())
        if max_page_size is None:
            text = field_errors.get("limit") or (
                message if message and "limit" in message.lower() else ""
            )
            found = _AT_MOST.search(text.lower())
            max_page_size = int(found.group(1)) if found and int(found.group(1)) > 0 else None
        cursor_invalid = "cursor" in f"{code or ''} {message or ''}".lower()
        return ErrorFields(
            code=code,
            message=message,
            field_errors=field_errors,
            max_page_size=max_page_size,
            cursor_invalid=cursor_invalid,
            record_missing=code == "record_not_found",
        )


_AT_MOST = re.compile(
    r"(?:less than or equal to|at most|maximum(?: is| of)?|max_limit\s*=)\s*(\d{1,9})"
)


# ------------------------------------------------------------------------- the vendor record


@attrs.frozen(kw_only=True)
class ReevoRecord:
    """A Reevo record's envelope: top-level fields, attributes still as received."""

    id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    record_type: str | None = None
    attributes: dict[str, Any] | None = None


_converter = make_converter()


class _Attributes:
    """The decoded attributes of one record, remembering which ones the mapping used."""

    def __init__(self, decoded: dict[str, Any], record_id: str, path: str) -> None:
        self._decoded = decoded
        self._record_id = record_id
        self._path = path
        self._used: set[str] = set()

    def get(self, name: str, *kinds: type) -> Any:
        """The attribute's value if it is one of ``kinds`` (``None`` if null or absent).

        A value of another kind (an unknown value type kept raw, a list, a type the mapping
        cannot use) is not used: it stays in ``custom_fields``.
        """
        if name not in self._decoded:
            return None
        value = self._decoded[name]
        if value is None:
            self._used.add(name)
            return None
        if isinstance(value, kinds):
            self._used.add(name)
            return value
        logger.info(
            "reevo: record %s: %s.%s is %s, which the mapping cannot use; kept in custom_fields",
            self._record_id,
            self._path,
            name,
            type(value).__name__,
        )
        return None

    def unused(self) -> dict[str, Any]:
        return {k: v for k, v in self._decoded.items() if k not in self._used}


def _moment(value: date | datetime | None) -> datetime | None:
    """A timestamp as is; a date as 00:00 UTC."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.combine(value, time(0), tzinfo=UTC)


def _confidence(stage: Option | None, record_id: str) -> int | None:
    """A stage's ``closing_probability`` as a percentage 0-100.

    ``"40"`` and ``"40%"`` are percentages; a number from 0 to 1 (``"0.4"``, ``"1.0"``) is a
    fraction. Text that is not a number, or out of range, gives ``None`` (logged).
    """
    if not isinstance(stage, Stage) or stage.closing_probability is None:
        return None
    text = stage.closing_probability.strip()
    if not text:
        return None
    is_percent = text.endswith("%")
    try:
        number = Decimal(text.rstrip("%").strip())
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite() or number < 0 or number > 100:
        logger.info(
            "reevo: record %s: closing_probability %r is not a probability, confidence unset",
            record_id,
            stage.closing_probability,
        )
        return None
    if not is_percent and number <= 1:
        number *= 100
    return int(number.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _status(
    outcome: str | None, status: str | None, closed_at: datetime | None, record_id: str
) -> OpportunityStatus:
    """Won or lost by ``outcome``; else closed (by ``status``, or ``closed_at`` without a
    known ``status``) is lost; else open."""
    if outcome is not None:
        known = _STATUS_BY_OUTCOME.get(outcome.strip().lower())
        if known is not None:
            return known
        logger.info("reevo: record %s has unknown outcome %r, ignored", record_id, outcome)
    closed = _CLOSED_BY_STATUS.get(status.strip().lower()) if status is not None else None
    if closed is None:
        if status is not None:
            logger.info("reevo: record %s has unknown status %r, ignored", record_id, status)
        closed = closed_at is not None
    return OpportunityStatus.LOST if closed else OpportunityStatus.OPEN


def _ref(value: RecordReference | Option | None) -> Ref | None:
    if value is None:
        return None
    if isinstance(value, RecordReference):
        return ref(value.id)
    return ref(value.id, value.display_value)


def _required_moment(
    top: datetime | None, attributes: _Attributes, name: str, path: str, record_id: str
) -> datetime:
    """A record timestamp from the top level, else from its attribute; required."""
    moment = top or _moment(attributes.get(name, datetime, date))
    if moment is None:
        raise DecodeError(
            "required field is missing (neither at the top level nor in attributes)",
            provider=PROVIDER,
            record_id=record_id,
            path=f"{path}.{name}",
        )
    return moment


def reevo_to_opportunity(raw: Mapping[str, Any], *, path: str = "$.data") -> Opportunity:
    """Map one Reevo opportunity record (the object inside ``data``) to an :class:`Opportunity`.

    Raises:
        DecodeError: the record does not match Reevo's documented form, or an attribute of a
            known value type has the wrong shape (the error names its path).
    """
    record = decode(_converter, raw, ReevoRecord, provider=PROVIDER, path=path)
    raw_attributes = record.attributes or {}
    record_id = record.id
    if record_id is None:
        fallback = decode_attribute(raw_attributes.get("id"), path=f"{path}.attributes.id")
        if isinstance(fallback, (str, uuid.UUID)):
            record_id = str(fallback)
    if record_id is None:
        raise DecodeError("required field is missing", provider=PROVIDER, path=f"{path}.id")
    attributes = _Attributes(
        decode_attributes(raw_attributes, path=f"{path}.attributes", record_id=record_id),
        record_id,
        f"{path}.attributes",
    )
    for name in _ID_ATTRIBUTES:
        attributes.get(name, str, uuid.UUID, datetime, date)
    created_at = _required_moment(record.created_at, attributes, "created_at", path, record_id)
    updated_at = _required_moment(record.updated_at, attributes, "updated_at", path, record_id)

    closed_at = _moment(attributes.get("closed_at", datetime, date))
    status = _status(
        attributes.get("outcome", str), attributes.get("status", str), closed_at, record_id
    )
    stage: Option | None = attributes.get("stage", Option)
    amount = attributes.get("amount", Money, Decimal)
    pipeline = attributes.get("pipeline", Option, RecordReference) or attributes.get(
        "pipeline_id", Option, RecordReference
    )
    contact = attributes.get("primary_contact_id", RecordReference)
    return Opportunity(
        provider=PROVIDER,
        id=record_id,
        name=attributes.get("display_name", str),
        status=status,
        status_label=stage.display_value if stage else None,
        stage=_ref(stage),
        pipeline=_ref(pipeline),
        amount=Money(amount=amount) if isinstance(amount, Decimal) else amount,
        confidence=_confidence(stage, record_id),
        owner=_ref(attributes.get("owner_user_id", RecordReference)),
        company=_ref(attributes.get("account_id", RecordReference)),
        contact=Contact(id=contact.id) if contact else None,
        note=attributes.get("next_step_details", str),
        source=attributes.get("created_source", str),
        created_at=created_at,
        updated_at=updated_at,
        closed_at=closed_at,
        won_at=closed_at if status is OpportunityStatus.WON else None,
        lost_at=closed_at if status is OpportunityStatus.LOST else None,
        expected_close_at=_moment(attributes.get("anticipated_closing_at", datetime, date)),
        custom_fields=attributes.unused(),
        raw=raw,
    )


# --------------------------------------------------------------------------------- listing


def _json_value(value: Any) -> Any:
    """A filter value as JSON can carry it (timestamps in Reevo's ``...Z`` form)."""
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"a datetime filter value must be timezone-aware, got {value!r}")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return _json_value(value.value)
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(v) for v in value]
    return value


def _condition(field: str, operator: str, value: Any) -> dict[str, Any]:
    return {"field": field, "operator": operator, "value": _json_value(value)}


def _status_filter(statuses: frozenset[OpportunityStatus] | None) -> dict[str, Any] | None:
    """The server filter that narrows a listing to ``statuses`` (a superset: the exact rule is
    checked locally), or ``None`` when no single filter can."""
    if statuses is None or len(statuses) == len(OpportunityStatus):
        return None
    if statuses == {OpportunityStatus.OPEN}:
        return _condition("status", "eq", "open")
    if statuses == {OpportunityStatus.WON}:
        return _condition("outcome", "eq", "won")
    if OpportunityStatus.OPEN not in statuses:  # {LOST} or {WON, LOST}: every closed deal
        return _condition("status", "eq", "closed")
    return None  # {OPEN, WON} or {OPEN, LOST}: filtered locally only


#: Oldest created first: an edit never moves a record in this order and new records come
#: last, so a listing neither skips nor repeats records while the CRM is being edited.
_DEFAULT_SORT: Final = ({"field": "created_at", "direction": "asc"},)


def _sort(order_by: str | None) -> list[dict[str, str]]:
    if order_by is None:
        return [dict(key) for key in _DEFAULT_SORT]
    sort = []
    for token in order_by.split(","):
        name = token.strip()
        descending = name.startswith("-")
        name = name.lstrip("-+").strip()
        if not name:
            raise ValueError(f"order_by must name Reevo fields, got {order_by!r}")
        sort.append({"field": name, "direction": "desc" if descending else "asc"})
    return sort


def _extra_filters(filters: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for key, value in filters.items():
        if key in _OWNED_KEYS:
            raise ValueError(f"{key} is managed by the adapter; use list()'s own arguments")
        if key == "filters":
            raws = [value] if isinstance(value, Mapping) else value
            if not isinstance(raws, (list, tuple)) or not all(isinstance(f, Mapping) for f in raws):
                raise ValueError(
                    "filters= takes Reevo filter objects, e.g. "
                    '[{"field": "amount", "operator": "gte", "value": "1000"}]'
                )
            out.extend(_json_value(f) for f in raws)
        elif isinstance(value, (list, tuple, set, frozenset)):
            out.append(_condition(key, "in", value))
        else:
            out.append(_condition(key, "eq", value))
    return out


def _query_body(query: ListQuery) -> dict[str, Any]:
    """The ``POST /opportunity/_query`` body of a listing (without ``cursor``)."""
    filters: list[Any] = [
        _condition(field, op, bound)
        for field, op, bound in (
            ("updated_at", "gte", query.updated_since),
            ("updated_at", "lt", query.updated_before),
            ("created_at", "gte", query.created_since),
            ("created_at", "lt", query.created_before),
        )
        if bound is not None
    ]
    status = _status_filter(query.statuses)
    if status is not None:
        filters.append(status)
    if query.query is not None:
        filters.append(_condition("display_name", "contains", query.query))
    filters.extend(_extra_filters(query.filters))
    body: dict[str, Any] = {"filters": filters}
    sort = _sort(query.order_by)
    if sort:
        body["sort"] = sort
    return body


def parse_query_page(data: Any) -> ParsedPage:
    """One ``POST /opportunity/_query`` body as a page (pure).

    Raises:
        DecodeError: the body, or one of its records, does not match Reevo's contract.
    """
    data, records = listed(data, provider=PROVIDER)
    next_cursor = data.get("next_cursor")
    if next_cursor is not None and not isinstance(next_cursor, str):
        raise DecodeError(
            f"expected a string or null, got {type(next_cursor).__name__}",
            provider=PROVIDER,
            path="$.next_cursor",
        )
    total = data.get("total")
    return ParsedPage(
        records=[reevo_to_opportunity(raw, path=f"$.data[{i}]") for i, raw in enumerate(records)],
        total=total
        if isinstance(total, int) and not isinstance(total, bool) and total >= 0
        else None,
        has_more=bool(next_cursor),
        next_cursor=next_cursor or None,
        meta={k: v for k, v in data.items() if k != "data"},
    )


class ReevoPaging(PagingPolicy):
    """Reevo's cursor paging for one listing: ``POST /opportunity/_query`` with ``cursor``.

    Date bounds and, where one filter can express it, the status are filtered by the server;
    the exact status rule (and every bound) is also checked locally.
    """

    random_access = False

    def __init__(self, query: ListQuery) -> None:
        self._query = query
        self._body = _query_body(query)
        self.filters_locally = query.statuses is not None
        sort = self._body.get("sort") or []
        first = sort[0] if sort else {}
        field = first.get("field") if len(sort) == 1 else None
        self.sort_by = field if field in ("created_at", "updated_at") else None
        self.descending = first.get("direction") == "desc"

    def request(self, page: PageRequest) -> Request:
        """``POST /opportunity/_query`` (read-only, so retried like a GET)."""
        body = {**self._body, "limit": page.size}
        if page.cursor is not None:
            body["cursor"] = page.cursor
        return Request(method="POST", path=_QUERY_PATH, json=body, idempotent=True)

    def parse(self, response: Response, page: PageRequest) -> ParsedPage:
        """See :func:`parse_query_page`."""
        return parse_query_page(response.data)

    def matches(self, record: Opportunity) -> bool:
        """The exact status rule and every bound."""
        return self._query.matches(record)


class ReevoAdapter(BaseAdapter):
    """Opportunities from Reevo.

    ``list()`` sends ``POST /opportunity/_query`` and follows ``next_cursor`` until it is null,
    one page after the other (a cursor is only known once the previous page arrived). Date
    bounds and, where one filter can express it, the status are filtered by the server; the
    exact status rule (and every bound) is also checked locally, so the result is exact.
    Records already yielded are never yielded again. An invalid cursor (a 400 that names the
    cursor) restarts the listing from its first page once, skipping the records already
    yielded; a second one raises :class:`~close_opps.PaginationError`.

    ``**filters`` are Reevo filters: ``field=value`` is ``eq`` (``in`` for a list), and
    ``filters=[{"field", "operator", "value"}, ...]`` passes filter objects as they are.
    ``order_by`` is a Reevo field (``"-updated_at"`` sorts descending; several comma-separated).
    ``query`` is a ``contains`` filter on ``display_name`` (Reevo has no free-text search).
    """

    provider = PROVIDER
    default_base_url = "https://api.reevo.ai/api/v2"
    dialect_class = ReevoDialect
    reserved_filters = _OWNED_KEYS

    def check_filters(self, filters: Mapping[str, Any]) -> None:
        """Reserved names, and ``filters=`` objects of the right shape."""
        super().check_filters(filters)
        _extra_filters(filters)

    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        """One opportunity: ``GET /opportunity/{id}``.

        ``fields`` is accepted for the common interface and ignored: Reevo's read endpoint
        always sends the whole record.
        """
        response = await self._send(Request(path=f"/opportunity/{path_segment(opportunity_id)}"))
        body = response.data
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), Mapping):
            found = body.get("data") if isinstance(body, Mapping) else body
            raise DecodeError(
                f"expected an object, got {type(found).__name__}",
                provider=PROVIDER,
                path="$.data" if isinstance(body, Mapping) else "$",
            )
        return reevo_to_opportunity(body["data"], path="$.data")

    def paging_policy(self, query: ListQuery) -> ReevoPaging:
        """Reevo's paging for ``query``."""
        return ReevoPaging(query)
