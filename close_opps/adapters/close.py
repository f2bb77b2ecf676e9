"""Close (https://close.com): Basic auth, skip pagination, values in cents.

Endpoints: ``GET /opportunity/`` (list, ``_skip``/``_limit``) and ``GET /opportunity/{id}/``.
See ``docs/providers/close.md`` for the field mapping and how listing gets past Close's
maximum ``_skip``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Final

import aiohttp
import attrs

from close_opps._decoding import decode, make_converter
from close_opps._paging import fetch_in_order
from close_opps._redact import get_logger
from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.errors import DecodeError, InvalidRequestError, PaginationError
from close_opps.http import Dialect, Request, Secret, path_segment
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus, Ref

__all__ = ["CloseAdapter", "CloseDialect", "CloseOpportunity", "close_to_opportunity"]

logger = get_logger("close_opps.close")

PROVIDER: Final = "close"

_STATUS_BY_TYPE: Final = {
    "active": OpportunityStatus.OPEN,
    "won": OpportunityStatus.WON,
    "lost": OpportunityStatus.LOST,
}
_TYPE_BY_STATUS: Final = {status: type_ for type_, status in _STATUS_BY_TYPE.items()}
_CUSTOM_PREFIX: Final = "custom."
#: Fields ``get(fields=...)`` always asks for, since the mapping cannot do without them.
_REQUIRED_FIELDS: Final = ("id", "date_created", "date_updated")
#: Sort keys listing can resume on when it reaches the maximum ``_skip`` (they are in every
#: record, so the last one seen gives the next window's bound).
_RESUMABLE_ORDER: Final = {"date_updated": "date_updated", "date_created": "date_created"}
#: Oldest created first: an edit never moves a record in this order, and new records come
#: last, so offset pages neither skip nor repeat a record while the CRM is being edited.
#: (Ordered by date_updated, each edit moves a record to the end and every record after it
#: one place back: offset pages would skip one.)
_DEFAULT_ORDER: Final = "date_created"
_LIST_PARAMS_OWNED: Final = frozenset({"_skip", "_limit", "_order_by", "_group_by", "_fields"})
#: A number in an error message (at most 12 digits: a longer one is no usable maximum).
_NUMBER = re.compile(r"(?<!\d)(\d{1,12})(?!\d)")


class CloseDialect(Dialect):
    """Close's HTTP: Basic auth with the key as user name; ``{"error": …}`` bodies."""

    provider = PROVIDER

    def auth_headers(self, api_key: Secret) -> dict[str, str]:
        """``Authorization: Basic base64(key + ":")``, the key as user name, no password."""
        return {"Authorization": aiohttp.encode_basic_auth(api_key.reveal())}


# ------------------------------------------------------------------------- the vendor record


@attrs.frozen(kw_only=True)
class CloseEmail:
    """``lead_primary_email``."""

    email: str | None = None
    type: str | None = None


@attrs.frozen(kw_only=True)
class ClosePhone:
    """One entry of ``lead_primary_phone``."""

    phone: str | None = None
    type: str | None = None


@attrs.frozen(kw_only=True)
class CloseOpportunity:
    """A Close opportunity as the API documents it (the fields the mapping reads)."""

    id: str
    date_created: datetime
    date_updated: datetime
    lead_id: str | None = None
    lead_name: str | None = None
    status_id: str | None = None
    status_label: str | None = None
    status_type: str | None = None
    pipeline_id: str | None = None
    pipeline_name: str | None = None
    value: Decimal | None = None
    value_currency: str | None = None
    value_period: str | None = None
    confidence: int | None = None
    user_id: str | None = None
    user_name: str | None = None
    contact_id: str | None = None
    contact_name: str | None = None
    lead_primary_email: CloseEmail | None = None
    lead_primary_phone: list[ClosePhone] | None = None
    note: str | None = None
    date_won: date | None = None
    date_lost: datetime | None = None


_converter = make_converter()


def _ref(id_: str | None, name: str | None) -> Ref | None:
    return Ref(id=id_, name=name) if id_ is not None or name is not None else None


def _midnight_utc(day: date | None) -> datetime | None:
    return datetime.combine(day, time(0), tzinfo=UTC) if day is not None else None


def close_to_opportunity(raw: Mapping[str, Any], *, path: str = "$") -> Opportunity:
    """Map one Close opportunity payload to an :class:`Opportunity`.

    Raises:
        DecodeError: the payload does not match Close's documented record.
    """
    record = decode(_converter, raw, CloseOpportunity, provider=PROVIDER, path=path)
    status = _STATUS_BY_TYPE.get(record.status_type or "active")
    if status is None:
        logger.info(
            "close: record %s has unknown status_type %r, read as open",
            record.id,
            record.status_type,
        )
        status = OpportunityStatus.OPEN
    email = record.lead_primary_email.email if record.lead_primary_email else None
    phone = next((p.phone for p in record.lead_primary_phone or () if p.phone), None)
    contact = (
        Contact(id=record.contact_id, name=record.contact_name, email=email, phone=phone)
        if any(v is not None for v in (record.contact_id, record.contact_name, email, phone))
        else None
    )
    won_at = _midnight_utc(record.date_won)
    return Opportunity(
        provider=PROVIDER,
        id=record.id,
        name=record.lead_name,
        status=status,
        status_label=record.status_label,
        stage=_ref(record.status_id, record.status_label),
        pipeline=_ref(record.pipeline_id, record.pipeline_name),
        amount=(
            Money(amount=record.value / 100, currency=record.value_currency)
            if record.value is not None
            else None
        ),
        value_period=record.value_period,
        confidence=record.confidence,
        owner=_ref(record.user_id, record.user_name),
        company=_ref(record.lead_id, record.lead_name),
        contact=contact,
        note=record.note,
        created_at=record.date_created,
        updated_at=record.date_updated,
        won_at=won_at,
        lost_at=record.date_lost,
        closed_at=won_at or record.date_lost,
        custom_fields={
            key[len(_CUSTOM_PREFIX) :]: value
            for key, value in raw.items()
            if key.startswith(_CUSTOM_PREFIX)
        },
        raw=raw,
    )


# --------------------------------------------------------------------------------- listing


class _SkipLimitReached(Exception):
    """The next page of a window would be past Close's maximum ``_skip``."""


def _skip_limit(error: InvalidRequestError) -> int | bool:
    """For a 400 about ``_skip``: the maximum it names, ``True`` when it names none.

    ``False`` when the error is not about ``_skip``.
    """
    text = error.message.lower()
    if "skip" not in text:
        return False
    found = re.search(r"max_skip\s*=\s*(\d{1,12})(?!\d)", text) or _NUMBER.search(text)
    return int(found.group(1)) if found else True


def _page_size_limit(error: InvalidRequestError) -> int | None:
    """For a 400 about ``_limit``: the maximum page size it names."""
    text = error.message.lower()
    if "limit" not in text or "skip" in text:
        return None
    found = re.search(r"max_limit\s*=\s*(\d{1,12})(?!\d)", text) or _NUMBER.search(text)
    return int(found.group(1)) if found and int(found.group(1)) > 0 else None


@attrs.define
class _Window:
    """Where a listing stands: the moved bound, and the ids already yielded at the last key."""

    order_field: str | None
    descending: bool
    bound: datetime | None = None
    last_key: datetime | None = None
    ids_at_last_key: set[str] = attrs.Factory(set)
    in_order: bool = True

    def fresh(self, items: Iterable[Opportunity]) -> list[Opportunity]:
        """The records not yielded yet, remembering them (records arrive in window order)."""
        out = []
        for item in items:
            if self.order_field is None:
                out.append(item)
                continue
            key = item.updated_at if self.order_field == "date_updated" else item.created_at
            if self.last_key is not None and key == self.last_key:
                if item.id in self.ids_at_last_key:
                    continue
                self.ids_at_last_key.add(item.id)
            else:
                if self.last_key is not None and (key < self.last_key) != self.descending:
                    self.in_order = False
                self.last_key = key
                self.ids_at_last_key = {item.id}
            out.append(item)
        return out


class CloseAdapter(BaseAdapter):
    """Opportunities from Close.

    ``list()`` orders by ``date_created`` (oldest first: edits made while the listing runs
    move no record) unless ``order_by`` says otherwise, and gets past Close's maximum
    ``_skip`` by restarting from the last ``date_created`` seen, dropping the records
    already yielded at that instant. Once the first page has told
    the total, the following pages are fetched ``concurrency`` at a time, in order.

    Filters of Close's list endpoint are passed by their own names: ``lead_id``, ``user_id``,
    ``status_id``, ``status_label``, ``value_period``, their ``__in`` forms (a list or a
    comma-separated string), ``lead_saved_search_id``, ``date_won__gte``, ``is_stalled``, ...
    """

    provider = PROVIDER
    default_base_url = "https://api.close.com/api/v1"
    dialect_class = CloseDialect

    #: Close's maximum ``_skip``, once a 400 has named it; it holds for the adapter's lifetime.
    _max_skip: int | None = None

    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        """One opportunity: ``GET /opportunity/{id}/``."""
        params: dict[str, Any] = {}
        if fields is not None:
            wanted = dict.fromkeys([*_REQUIRED_FIELDS, *fields])
            params["_fields"] = ",".join(wanted)
        response = await self._send(
            Request(path=f"/opportunity/{path_segment(opportunity_id)}/", params=params)
        )
        return close_to_opportunity(response.data)

    def _params(self, query: ListQuery, window: _Window) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, value in query.filters.items():
            if key in _LIST_PARAMS_OWNED:
                raise ValueError(
                    f"{key} is managed by the adapter; use list()'s own arguments instead"
                )
            params[key] = value
        if query.statuses is not None:
            types = sorted(_TYPE_BY_STATUS[s] for s in query.statuses)
            if len(types) == 1:
                params["status_type"] = types[0]
            else:
                params["status_type__in"] = ",".join(types)
        bounds = {
            "date_updated__gte": query.updated_since,
            "date_updated__lt": query.updated_before,
            "date_created__gte": query.created_since,
            "date_created__lt": query.created_before,
        }
        if window.bound is not None and window.order_field is not None:
            op = "lte" if window.descending else "gte"
            key = f"{window.order_field}__{op}"
            current = bounds.get(key)
            tighter = max if op == "gte" else min
            bounds[key] = window.bound if current is None else tighter(current, window.bound)
        params.update({k: v.isoformat() for k, v in bounds.items() if v is not None})
        if query.query is not None:
            params["query"] = query.query
        params["_order_by"] = query.order_by or _DEFAULT_ORDER
        return params

    async def _fetch(self, params: Mapping[str, Any], skip: int, limit: int) -> Page:
        response = await self._send(
            Request(path="/opportunity/", params={**params, "_skip": skip, "_limit": limit})
        )
        body = response.data
        if not isinstance(body, Mapping):
            raise DecodeError("the list body is not an object", provider=PROVIDER, path="$")
        records = body.get("data")
        if not isinstance(records, list):
            raise DecodeError(
                f"expected a list of records, got {type(records).__name__}",
                provider=PROVIDER,
                path="$.data",
            )
        has_more = body.get("has_more")
        if not isinstance(has_more, bool):
            raise DecodeError("expected a boolean", provider=PROVIDER, path="$.has_more")
        total = body.get("total_results")
        items = await self._decode(
            records, lambda raw, i: close_to_opportunity(raw, path=f"$.data[{i}]")
        )
        return Page(
            items=tuple(items),
            total=total if isinstance(total, int) and not isinstance(total, bool) else None,
            has_more=has_more,
            meta={k: v for k, v in body.items() if k != "data"},
        )

    async def _first_page(self, params: Mapping[str, Any], page_size: int) -> tuple[Page, int]:
        """The window's first page, learning Close's maximum page size if it names one."""
        while True:
            try:
                return await self._fetch(params, 0, page_size), page_size
            except InvalidRequestError as exc:
                maximum = _page_size_limit(exc)
                if maximum is None or maximum >= page_size:
                    raise
                self._learn_max_page_size(page_size, maximum)
                page_size = maximum

    async def _window_pages(
        self, params: Mapping[str, Any], page_size: int, wanted: int | None
    ) -> AsyncGenerator[Page, None]:
        """The pages of one window (one set of bounds), ``_skip`` growing from 0.

        Raises:
            _SkipLimitReached: the next page would be past the maximum ``_skip``.
            InvalidRequestError: (from the server) among others, a ``_skip`` over its maximum.
        """
        last, page_size = await self._first_page(
            params, min(page_size, wanted) if wanted else page_size
        )
        yield last
        skip = page_size
        while last.has_more:
            if wanted is not None and skip >= wanted:
                return
            if self._max_skip is not None and skip > self._max_skip:
                raise _SkipLimitReached
            if last.total is None or skip >= last.total:
                # No total (or it grew): each page must be seen before asking for the next.
                last = await self._fetch(params, skip, page_size)
                yield last
                skip += page_size
                continue
            end = min(
                last.total,
                wanted if wanted is not None else last.total,
                self._max_skip + 1 if self._max_skip is not None else last.total,
            )
            skips = range(skip, end, page_size)
            fetches = (lambda s=s: self._fetch(params, s, page_size) for s in skips)
            async with aclosing(fetch_in_order(fetches, concurrency=self.concurrency)) as pages:
                async for last in pages:
                    yield last
                    if not last.has_more:
                        return
            skip = skips[-1] + page_size

    async def _pages(self, query: ListQuery) -> AsyncGenerator[Page, None]:
        order = query.order_by or _DEFAULT_ORDER
        window = _Window(
            order_field=_RESUMABLE_ORDER.get(order.lstrip("-")),
            descending=order.startswith("-"),
        )
        wanted = query.limit  # records still wanted, or None for all
        while True:
            yielded = 0
            # Records at the window's bound already yielded come again: ask for that many more.
            cap = wanted + len(window.ids_at_last_key) if wanted is not None else None
            page_size = self._check_page_size(query.page_size)  # a maximum learned meanwhile
            try:
                async with aclosing(
                    self._window_pages(self._params(query, window), page_size, cap)
                ) as pages:
                    async for page in pages:
                        items = window.fresh(page.items)
                        yielded += len(items)
                        if wanted is not None:
                            wanted -= len(items)
                        yield attrs.evolve(page, items=tuple(items))
                        if wanted is not None and wanted <= 0:
                            return
                return
            except _SkipLimitReached:
                pass
            except InvalidRequestError as exc:
                maximum = _skip_limit(exc)
                if maximum is False:
                    raise
                if maximum is not True:
                    self._max_skip = maximum
            self._move_window(window, order, yielded)

    def _move_window(self, window: _Window, order: str, yielded: int) -> None:
        if window.order_field is None:
            raise PaginationError(
                f"the listing reached Close's maximum _skip ({self._max_skip}) and cannot go on "
                f"when ordered by {order!r}: order by date_updated or date_created (the default), "
                "or narrow the query",
                provider=PROVIDER,
            )
        if not window.in_order:
            raise PaginationError(
                f"the listing reached Close's maximum _skip but the server did not honour "
                f"_order_by={order}, so it cannot resume without losing records",
                provider=PROVIDER,
            )
        if window.last_key is None or (window.bound == window.last_key and yielded == 0):
            raise PaginationError(
                f"more records share {window.order_field}={window.last_key} than Close's maximum "
                f"_skip ({self._max_skip}) lets one listing reach; narrow the query",
                provider=PROVIDER,
            )
        logger.info(
            "close: reached the maximum _skip; resuming from %s %s %s",
            window.order_field,
            "<=" if window.descending else ">=",
            window.last_key.isoformat(),
        )
        window.bound = window.last_key
