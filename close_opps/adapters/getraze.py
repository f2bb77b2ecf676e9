"""Getraze (https://getraze.com): ``X-API-Key``, success envelopes, page/limit pagination.

Endpoints: ``GET /opportunities`` (list, ``page``/``limit``) and ``GET /opportunities/{id}``.
Every body is an envelope, ``{"success": true, "data": ...}`` or ``{"success": false,
"error": {"code", "message", ...}}``, even (sometimes) with HTTP 200. Three record forms are
in the wild (the documented one, a flat one, and the one the server sends today); they all
decode to the same :class:`~close_opps.Opportunity`. See ``docs/providers/getraze.md`` for
the mapping table, and for what ``updated_since`` and ``status`` cost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import attrs

from close_opps._decoding import decode, make_converter
from close_opps._paging import fetch_in_order
from close_opps._redact import get_logger
from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.errors import (
    APIError,
    AuthenticationError,
    DecodeError,
    InvalidRequestError,
    NotFoundError,
    PaginationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from close_opps.http import (
    Dialect,
    ErrorFields,
    Request,
    Secret,
    parse_rate_limit,
    path_segment,
)
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus, Ref

__all__ = [
    "GetrazeAdapter",
    "GetrazeDialect",
    "GetrazeOpportunity",
    "GetrazePagination",
    "GetrazeUser",
    "getraze_to_opportunity",
]

logger = get_logger("close_opps.getraze")

PROVIDER: Final = "getraze"

_ERROR_CLASSES: Final[Mapping[str, type[APIError]]] = {
    "NOT_FOUND": NotFoundError,
    "MISSING_API_KEY": AuthenticationError,
    "INVALID_API_KEY": AuthenticationError,
    "EXPIRED_API_KEY": AuthenticationError,
    "UNAUTHORIZED": AuthenticationError,
    "INSUFFICIENT_PERMISSIONS": PermissionDeniedError,
    "RATE_LIMIT_EXCEEDED": RateLimitError,
    "VALIDATION_ERROR": InvalidRequestError,
    "INVALID_PARAMETER": InvalidRequestError,
    "CONFLICT": InvalidRequestError,
    "INTERNAL_ERROR": ServerError,
}

#: Pipeline words (``status`` in the documented form, ``stage_name`` today) that close a deal.
_CLOSED_WORDS: Final = {
    "won": OpportunityStatus.WON,
    "lost": OpportunityStatus.LOST,
    "discarded": OpportunityStatus.LOST,
}
#: Pipeline words known to mean an open deal (others are read as open too, with a log line).
_OPEN_WORDS: Final = frozenset(
    {
        "new",
        "leads",
        "contacted",
        "invite_sent",
        "accepted",
        "qualifying",
        "qualified",
        "scheduled",
        "proposal",
        "negotiation",
    }
)
#: List parameters the adapter sets itself.
_LIST_PARAMS_OWNED: Final = frozenset({"page", "sort_by", "sort_order"})


class GetrazeDialect(Dialect):
    """Getraze's HTTP: ``X-API-Key``; errors in a ``success: false`` envelope, waits in the body.

    The envelope's ``error.code`` picks the error class (``NOT_FOUND`` -> ``NotFoundError``, ...)
    whatever the HTTP status, and a ``success: false`` body is an error even under HTTP 200.
    A 429's wait is the body's ``error.retry_after`` (Getraze sends no ``Retry-After``).
    """

    provider = PROVIDER
    error_classes_by_code = _ERROR_CLASSES

    def auth_headers(self, api_key: Secret) -> dict[str, str]:
        """``X-API-Key: <key>``."""
        return {"X-API-Key": api_key.reveal()}

    def error_fields(self, data: Any) -> ErrorFields:
        """The common reading, plus ``error.retry_after`` (seconds) from the body."""
        fields = super().error_fields(data)
        error = data.get("error") if isinstance(data, Mapping) else None
        if isinstance(error, Mapping):
            retry_after = _seconds(error.get("retry_after"))
            if retry_after is not None:
                fields = attrs.evolve(fields, retry_after=retry_after)
        return fields

    def retry_after(
        self, status: int, headers: Mapping[str, str], fields: ErrorFields
    ) -> float | None:
        """The body's ``error.retry_after``; else any standard header; else, for a 429, the
        time left until ``X-RateLimit-Reset`` (the next full hour)."""
        wait = super().retry_after(status, headers, fields)
        if wait is None and status == 429:
            rate_limit = parse_rate_limit(headers)
            if rate_limit is not None and rate_limit.remaining == 0:
                wait = rate_limit.reset
        return wait

    def check(
        self, status: int, headers: Mapping[str, str], data: Any, *, api_key: Secret | None = None
    ) -> APIError | None:
        """A ``{"success": false, "error": {...}}`` body is an error whatever the status."""
        if isinstance(data, Mapping) and data.get("success") is False:
            return self.error(status, headers, data, api_key=api_key)
        return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        return None
    try:
        seconds = float(value)
    except (ValueError, OverflowError):  # not a number; an integer too large for a float
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# ------------------------------------------------------------------------- the vendor record


@attrs.frozen(kw_only=True)
class GetrazeUser:
    """The documented form's nested ``responsible_user {id, name}``."""

    id: str | None = None
    name: str | None = None
    email: str | None = None


@attrs.frozen(kw_only=True)
class GetrazeOpportunity:
    """A Getraze opportunity: the union of the three record forms (the fields the mapping reads).

    Current form: ``title``, ``value`` (a decimal string), ``currency``, ``probability``,
    ``stage_*``, ``pipeline_*``, ``owner_user_*``, ``contact_*``, ``custom_fields``,
    ``discarded_at``. Documented form: ``name``, ``deal_value``, ``deal_currency``, nested
    ``responsible_user``, ``email``/``phone``/``company``/``position``/``linkedin_url``,
    ``status``. Flat form: the documented one with ``responsible_user_*`` flat.
    """

    id: str
    created_at: datetime
    updated_at: datetime
    title: str | None = None
    name: str | None = None
    status: str | None = None
    stage_id: str | None = None
    stage_name: str | None = None
    pipeline_id: str | None = None
    pipeline_name: str | None = None
    value: Decimal | None = None
    currency: str | None = None
    deal_value: Decimal | None = None
    deal_currency: str | None = None
    probability: int | None = None
    owner_user_id: str | None = None
    owner_user_name: str | None = None
    responsible_user: GetrazeUser | None = None
    responsible_user_id: str | None = None
    responsible_user_name: str | None = None
    contact_id: str | None = None
    contact_name: str | None = None
    contact_email: str | None = None
    contact_phone: str | None = None
    contact_company: str | None = None
    contact_title: str | None = None
    contact_profile_url: str | None = None
    email: str | None = None
    phone: str | None = None
    company: str | None = None
    position: str | None = None
    linkedin_url: str | None = None
    notes: str | None = None
    source: str | None = None
    won_at: datetime | None = None
    lost_at: datetime | None = None
    discarded_at: datetime | None = None
    expected_close_date: datetime | None = None
    custom_fields: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class GetrazePagination:
    """A list page's ``pagination``, in either form (``limit`` or ``per_page``, ``has_next``)."""

    page: int | None = None
    limit: int | None = None
    per_page: int | None = None
    total: int | None = None
    total_pages: int | None = None
    has_next: bool | None = None
    has_prev: bool | None = None


_converter = make_converter()


def _ref(id_: str | None, name: str | None) -> Ref | None:
    return Ref(id=id_, name=name) if id_ is not None or name is not None else None


def _status(record: GetrazeOpportunity) -> OpportunityStatus:
    """WON/LOST from the latest closing timestamp, else from the pipeline word, else OPEN."""
    stamps = [
        (moment, status)
        for moment, status in (
            (record.won_at, OpportunityStatus.WON),
            (record.lost_at, OpportunityStatus.LOST),
            (record.discarded_at, OpportunityStatus.LOST),
        )
        if moment is not None
    ]
    if stamps:
        return max(stamps, key=lambda pair: pair[0])[1]
    word = record.status if record.status is not None else record.stage_name
    if word is None:
        return OpportunityStatus.OPEN
    key = word.strip().lower()
    if key in _CLOSED_WORDS:
        return _CLOSED_WORDS[key]
    if key not in _OPEN_WORDS:
        logger.debug("getraze: record %s has unknown status %r, read as open", record.id, word)
    return OpportunityStatus.OPEN


def _owner(record: GetrazeOpportunity) -> Ref | None:
    owner = _ref(record.owner_user_id, record.owner_user_name)
    if owner is None and record.responsible_user is not None:
        owner = _ref(record.responsible_user.id, record.responsible_user.name)
    return owner or _ref(record.responsible_user_id, record.responsible_user_name)


def _contact(record: GetrazeOpportunity) -> Contact | None:
    fields = {
        "id": record.contact_id,
        "name": record.contact_name if record.contact_name is not None else record.name,
        "email": record.contact_email if record.contact_email is not None else record.email,
        "phone": record.contact_phone if record.contact_phone is not None else record.phone,
        "title": record.contact_title if record.contact_title is not None else record.position,
        "url": (
            record.contact_profile_url
            if record.contact_profile_url is not None
            else record.linkedin_url
        ),
    }
    if all(value is None for value in fields.values()):
        return None
    return Contact(**fields)


def getraze_to_opportunity(raw: Mapping[str, Any], *, path: str = "$") -> Opportunity:
    """Map one Getraze opportunity (the record inside the envelope) to an :class:`Opportunity`.

    Accepts the documented, the flat and the current record forms. Unknown fields are kept
    in ``raw`` and never fatal; unknown status words are read as open.

    Raises:
        DecodeError: a field the mapping reads has the wrong type (the error names its path).
    """
    record = decode(_converter, raw, GetrazeOpportunity, provider=PROVIDER, path=path)
    status = _status(record)
    if record.value is not None:
        amount: Money | None = Money(
            amount=record.value, currency=record.currency or record.deal_currency
        )
    elif record.deal_value is not None:
        amount = Money(amount=record.deal_value, currency=record.deal_currency or record.currency)
    else:
        amount = None
    lost_at = record.lost_at if record.lost_at is not None else record.discarded_at
    closed_at = {OpportunityStatus.WON: record.won_at, OpportunityStatus.LOST: lost_at}.get(status)
    stage = _ref(record.stage_id, record.stage_name)
    if stage is None and record.status is not None:
        stage = Ref(name=record.status)  # the documented form's pipeline status is its stage
    company = record.contact_company if record.contact_company is not None else record.company
    return Opportunity(
        provider=PROVIDER,
        id=record.id,
        name=record.title if record.title is not None else record.name,
        status=status,
        status_label=record.stage_name if record.stage_name is not None else record.status,
        stage=stage,
        pipeline=_ref(record.pipeline_id, record.pipeline_name),
        amount=amount,
        confidence=record.probability,
        owner=_owner(record),
        company=Ref(name=company) if company is not None else None,
        contact=_contact(record),
        note=record.notes,
        source=record.source,
        created_at=record.created_at,
        updated_at=record.updated_at,
        won_at=record.won_at,
        lost_at=lost_at,
        closed_at=closed_at,
        expected_close_at=record.expected_close_date,
        custom_fields=record.custom_fields or {},
        raw=raw,
    )


# ---------------------------------------------------------------------------- envelopes


def _unwrap(body: Any) -> Any:
    """The ``data`` of a ``{"success": true, "data": ...}`` envelope.

    (``success: false`` never gets here: :meth:`GetrazeDialect.check` raised its error.)
    """
    if not isinstance(body, Mapping) or "success" not in body:
        raise DecodeError(
            "the response is not a Getraze envelope ({'success': ..., 'data': ...}): "
            f"got {_shape(body)}",
            provider=PROVIDER,
            path="$",
        )
    if body["success"] is not True:
        raise DecodeError(
            f"expected true, got {body['success']!r}", provider=PROVIDER, path="$.success"
        )
    if "data" not in body:
        raise DecodeError("required field is missing", provider=PROVIDER, path="$.data")
    return body["data"]


def _shape(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(sorted(str(k) for k in value)[:8])
        return f"an object with keys [{keys}]"
    return type(value).__name__


@attrs.frozen(kw_only=True)
class _Fetched:
    """One list page as fetched: decoded records and what its pagination says."""

    number: int
    records: tuple[Opportunity, ...]
    pagination: GetrazePagination | None
    meta: Mapping[str, Any]
    has_next: bool

    @property
    def total_pages(self) -> int | None:
        return self.pagination.total_pages if self.pagination is not None else None


@attrs.define
class _Listing:
    """The state of one listing: ids yielded, the ``updated_at`` sort check, the stop bound."""

    query: ListQuery
    #: Whether the listing is sorted by updated_at descending to stop at ``updated_since``.
    stop_at_bound: bool
    seen: set[str] = attrs.Factory(set)
    yielded: int = 0
    #: The newest and the oldest updated_at seen so far, and how many records lie between.
    first_updated: datetime | None = None
    last_updated: datetime | None = None
    in_order_count: int = 0
    in_order: bool = True
    reached_bound: bool = False

    @property
    def stopping(self) -> bool:
        """Whether the listing may still end at the ``updated_since`` bound."""
        return self.stop_at_bound and self.in_order

    @property
    def exact(self) -> bool:
        """Whether every record the server sends (until the bound) is yielded."""
        q = self.query
        local = (
            q.statuses is not None
            or q.updated_before is not None
            or q.created_since is not None
            or q.created_before is not None
            or (q.updated_since is not None and not self.stopping)
        )
        return not local

    def pages_to_bound(self, page_size: int) -> int | None:
        """A guess of the pages still to read before the ``updated_since`` bound, from the
        pace of updates so far (``None``: no guess yet)."""
        bound = self.query.updated_since
        if bound is None or self.first_updated is None or self.last_updated is None:
            return None
        span = (self.first_updated - self.last_updated).total_seconds()
        if span <= 0 or self.in_order_count < 2:
            return None
        gap = max(0.0, (self.last_updated - bound).total_seconds())
        records_left = gap * (self.in_order_count - 1) / span
        # One more record than that: the listing ends on seeing a record older than the bound.
        return max(1, math.ceil((records_left + 1) / page_size))

    def wants_more(self, fetched: _Fetched) -> bool:
        """Whether pages after ``fetched`` are needed."""
        return fetched.has_next and not (self.stopping and self.reached_bound)

    def take(self, fetched: _Fetched) -> Page:
        """The page of ``fetched``'s records not yielded yet that match the query."""
        bound = self.query.updated_since
        items = []
        for item in fetched.records:
            if self.stopping:
                if self.last_updated is not None and item.updated_at > self.last_updated:
                    self.in_order = False
                    logger.warning(
                        "getraze: the server did not honour sort_by=updated_at desc (page %d "
                        "goes up in updated_at); reading every page and filtering "
                        "updated_since locally",
                        fetched.number,
                    )
                else:
                    if self.first_updated is None:
                        self.first_updated = item.updated_at
                    self.last_updated = item.updated_at
                    self.in_order_count += 1
                    if bound is not None and item.updated_at < bound:
                        self.reached_bound = True
            if item.id in self.seen:
                continue
            self.seen.add(item.id)
            if self.query.matches(item):
                items.append(item)
        self.yielded += len(items)
        total = fetched.pagination.total if fetched.pagination is not None else None
        return Page(
            items=tuple(items),
            total=total if self.exact and self.query.updated_since is None else None,
            has_more=self.wants_more(fetched),
            meta=fetched.meta,
        )


def _sort(order_by: str | None) -> tuple[str, str]:
    """``"updated_at"`` -> ``("updated_at", "asc")``, ``"-updated_at"`` -> ``(…, "desc")``."""
    if order_by is None:
        return "created_at", "asc"
    text = order_by.strip()
    descending = text.startswith("-")
    key = text.lstrip("-+").strip()
    if not key:
        raise ValueError(f"order_by must name a field, got {order_by!r}")
    return key, "desc" if descending else "asc"


# ----------------------------------------------------------------------------- the adapter


class GetrazeAdapter(BaseAdapter):
    """Opportunities from Getraze.

    ``list()`` reads ``GET /opportunities`` page by page (``limit`` at most 100), oldest
    created first unless ``order_by`` says otherwise (``"updated_at"``, ``"-updated_at"``,
    ``"created_at"``, ``"title"``, ``"-value"``, ...: a leading ``-`` sorts descending).
    Once the first page has told the number of pages, the following ones are fetched
    ``concurrency`` at a time, yielded in order.

    Getraze has no server-side date filter: with ``updated_since`` (and no other ``order_by``)
    the listing is sorted by ``updated_at`` descending and ends at the first record older than
    the bound, checking that the server honoured the sort (if not, every page is read and
    filtered locally). ``status`` is filtered locally (Getraze's own ``status`` is a pipeline
    word), and so are ``updated_before`` and ``created_*``.

    Filters of Getraze's list endpoint are passed by their own names: ``stage_id``,
    ``pipeline_id``, ``campaign_id``, ``owner_user_id``, ``responsible_user_id``, ``source``,
    ``company``, ``search`` (or ``query=``).
    """

    provider = PROVIDER
    default_base_url = "https://app.getraze.com/external/v1"
    dialect_class = GetrazeDialect
    max_page_size = 100

    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        """One opportunity: ``GET /opportunities/{id}``.

        ``fields`` is accepted for the common interface and ignored: Getraze always sends
        the whole record. An id that is not a UUID makes the server fail with 500
        ``INTERNAL_ERROR`` (a :class:`~close_opps.ServerError`), not 404.
        """
        response = await self._send(Request(path=f"/opportunities/{path_segment(opportunity_id)}"))
        data = _unwrap(response.data)
        return getraze_to_opportunity(data, path="$.data")

    # ------------------------------------------------------------------------------ listing

    def _params(self, query: ListQuery, *, stop_at_bound: bool) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, value in query.filters.items():
            if key in _LIST_PARAMS_OWNED:
                raise ValueError(
                    f"{key} is managed by the adapter; use list()'s own arguments "
                    "(page_size, order_by) instead"
                )
            params[key] = value
        if query.query is not None:
            if params.get("search") not in (None, query.query):
                raise ValueError("pass the free-text search as query= or search=, not both")
            params["search"] = query.query
        sort_by, sort_order = ("updated_at", "desc") if stop_at_bound else _sort(query.order_by)
        params["sort_by"] = sort_by
        params["sort_order"] = sort_order
        return params

    async def _fetch(self, params: Mapping[str, Any], number: int, limit: int) -> _Fetched:
        response = await self._send(
            Request(path="/opportunities", params={**params, "page": number, "limit": limit})
        )
        body = response.data
        data = _unwrap(body)
        if isinstance(data, list):  # the form the server sends today
            records, prefix = data, "$.data"
            raw_pagination, pagination_path = body.get("pagination"), "$.pagination"
            meta = {k: v for k, v in body.items() if k not in ("success", "data")}
        elif isinstance(data, Mapping) and isinstance(data.get("opportunities"), list):
            records, prefix = data["opportunities"], "$.data.opportunities"
            raw_pagination, pagination_path = data.get("pagination"), "$.data.pagination"
            meta = {k: v for k, v in data.items() if k != "opportunities"}
        else:
            raise DecodeError(
                f"expected a list of records in data or data.opportunities, got {_shape(data)}",
                provider=PROVIDER,
                path="$.data",
            )
        pagination = (
            decode(
                _converter,
                raw_pagination,
                GetrazePagination,
                provider=PROVIDER,
                path=pagination_path,
            )
            if raw_pagination is not None
            else None
        )
        if pagination is not None and pagination.page is not None and pagination.page != number:
            raise PaginationError(
                f"asked for page {number} and the server answered page {pagination.page}: "
                "it does not honour the page parameter, so the listing cannot go on",
                provider=PROVIDER,
            )
        items = await self._decode(
            records, lambda raw, i: getraze_to_opportunity(raw, path=f"{prefix}[{i}]")
        )
        if not items:
            has_next = False
        elif pagination is not None and pagination.has_next is not None:
            has_next = pagination.has_next
        elif pagination is not None and pagination.total_pages is not None:
            has_next = number < pagination.total_pages
        else:
            has_next = len(items) >= limit
        return _Fetched(
            number=number,
            records=tuple(items),
            pagination=pagination,
            meta=meta,
            has_next=has_next,
        )

    async def _pages(self, query: ListQuery) -> AsyncGenerator[Page, None]:
        sort = _sort(query.order_by) if query.order_by is not None else None
        stop_at_bound = query.updated_since is not None and sort in (None, ("updated_at", "desc"))
        params = self._params(query, stop_at_bound=stop_at_bound)
        listing = _Listing(query=query, stop_at_bound=stop_at_bound)
        page_size = query.page_size
        if query.limit is not None and listing.exact:
            page_size = min(page_size, query.limit)

        last = await self._fetch(params, 1, page_size)
        page = listing.take(last)
        yield page
        next_number = 2
        ramp = 1  # pages per round while the listing may end early: 1, 2, 4, ...
        while listing.wants_more(last):
            pages_left = (last.total_pages or 0) - next_number + 1
            if pages_left <= 0:
                # The total is unknown (or grew): each page must be seen before the next.
                last = await self._fetch(params, next_number, page_size)
                next_number += 1
                yield listing.take(last)
                continue
            count = pages_left
            if query.limit is not None and listing.exact:
                count = min(count, max(1, math.ceil((query.limit - listing.yielded) / page_size)))
            if listing.stopping or (query.limit is not None and not listing.exact):
                # The listing may end at any page: fetch a few ahead, no more. Rounds grow
                # 1, 2, 4, ... pages (at most ``concurrency``), and while sorted by updated_at
                # no more than the pace of updates so far says the bound is away.
                count = min(count, ramp, self.concurrency)
                ramp *= 2
                if listing.stopping:
                    count = min(count, listing.pages_to_bound(page_size) or count)
            numbers = range(next_number, next_number + count)
            next_number += count
            fetches = (functools.partial(self._fetch, params, n, page_size) for n in numbers)
            async with aclosing(fetch_in_order(fetches, concurrency=self.concurrency)) as stream:
                async for last in stream:
                    yield listing.take(last)
                    if not listing.wants_more(last):
                        break
