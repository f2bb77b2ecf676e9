"""Close (https://close.com): Basic auth, skip pagination, values in cents.

Endpoints: ``GET /opportunity/`` (list, ``_skip``/``_limit``) and ``GET /opportunity/{id}/``.
See ``docs/providers/close.md`` for the field mapping and how listing gets past Close's
maximum ``_skip``.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

import aiohttp
import attrs

from close_opps._decoding import decode, listed, make_converter, ref
from close_opps._redact import get_logger
from close_opps._tasks import fetch_in_order
from close_opps.adapters._close_webhooks import CloseWebhooksMixin
from close_opps.adapters.base import BaseAdapter, ListQuery
from close_opps.changes import Change, ChangeKind
from close_opps.errors import (
    DecodeError,
    InvalidRequestError,
    PaginationError,
    PermissionDeniedError,
)
from close_opps.feed import FeedRun
from close_opps.http import Dialect, ErrorFields, Request, Response, Secret, opt_str, path_segment
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus
from close_opps.paging import PageRequest, PagingPolicy, ParsedPage

__all__ = [
    "CloseAdapter",
    "CloseDialect",
    "CloseEvent",
    "CloseOpportunity",
    "ClosePaging",
    "EventPage",
    "close_to_opportunity",
    "event_change_kind",
    "latest_changes",
    "parse_event_page",
    "parse_list_page",
]

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
#: The record field each resumable order sorts by.
_SORTED_FIELD: Final = {"date_created": "created_at", "date_updated": "updated_at"}
_LIST_PARAMS_OWNED: Final = frozenset({"_skip", "_limit", "_order_by", "_group_by", "_fields"})


class CloseDialect(Dialect):
    """Close's HTTP: Basic auth with the key as user name; ``{"error": …}`` bodies.

    Error bodies: ``{"error": "<message>"}`` (most 4xx, and a missing record's 404), and a
    validation 400 ``{"errors": [...], "field-errors": {"field": "message"}}``. A 400 about
    ``_skip`` or ``_limit`` is read into the maximum it names (``max_skip = 250000``). A 404 is
    "no such record" only with Close's JSON ``{"error": ...}`` body; an HTML or empty 404 means
    the route does not exist.
    """

    provider = PROVIDER

    def auth_headers(self, api_key: Secret) -> dict[str, str]:
        """``Authorization: Basic base64(key + ":")``, the key as user name, no password."""
        return {"Authorization": aiohttp.encode_basic_auth(api_key.reveal())}

    def error_fields(self, data: Any) -> ErrorFields:
        """Read Close's error bodies and the paging limits a 400 names."""
        if not isinstance(data, Mapping):
            return super().error_fields(data)
        error = data.get("error")
        message = opt_str(error)
        if isinstance(error, Mapping):
            message = opt_str(error.get("message"))
        raw_field_errors = data.get("field-errors")
        field_errors = (
            {str(k): str(v) for k, v in raw_field_errors.items()}
            if isinstance(raw_field_errors, Mapping)
            else {}
        )
        errors = data.get("errors")
        if not message and isinstance(errors, list) and errors:
            message = "; ".join(str(e) for e in errors)
        if not message and field_errors:
            message = "; ".join(f"{k}: {v}" for k, v in field_errors.items())
        text = (message or "").lower()
        offset_too_large = "skip" in text
        max_page_size = None
        if not offset_too_large and ("limit" in text or "_limit" in field_errors):
            max_page_size = _named_number(
                text + " " + field_errors.get("_limit", "").lower(), "max_limit"
            )
        return ErrorFields(
            code=opt_str(data.get("code")),
            message=message,
            field_errors=field_errors,
            offset_too_large=offset_too_large,
            max_offset=_named_number(text, "max_skip") if offset_too_large else None,
            max_page_size=max_page_size,
            record_missing=isinstance(error, str),
        )


def _named_number(text: str, name: str) -> int | None:
    """``N`` from ``name = N`` in ``text``, else the first number in it (positive only)."""
    found = re.search(rf"{name}\s*=\s*(\d{{1,9}})\b", text) or re.search(r"\b(\d{1,9})\b", text)
    return int(found.group(1)) if found and int(found.group(1)) > 0 else None


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


def _midnight_utc(day: date | None) -> datetime | None:
    return datetime.combine(day, time(0), tzinfo=UTC) if day is not None else None


#: The ``custom.*`` keys among a record's keys, by the tuple of its keys: the records of one
#: listing nearly always have the same keys, and a dict lookup beats testing every key.
_CUSTOM_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
_CUSTOM_KEYS_MAX = 64


def _custom_keys(raw: Mapping[str, Any]) -> tuple[str, ...]:
    keys = tuple(raw)
    found = _CUSTOM_KEYS.get(keys)
    if found is None:
        found = tuple(key for key in keys if key.startswith(_CUSTOM_PREFIX))
        if len(_CUSTOM_KEYS) >= _CUSTOM_KEYS_MAX:
            _CUSTOM_KEYS.clear()
        _CUSTOM_KEYS[keys] = found
    return found


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
    phone = None
    for number in record.lead_primary_phone or ():
        if number.phone:
            phone = number.phone
            break
    contact = (
        Contact(id=record.contact_id, name=record.contact_name, email=email, phone=phone)
        if record.contact_id is not None
        or record.contact_name is not None
        or email is not None
        or phone is not None
        else None
    )
    won_at = _midnight_utc(record.date_won)
    return Opportunity(
        provider=PROVIDER,
        id=record.id,
        name=record.lead_name,
        status=status,
        status_label=record.status_label,
        stage=ref(record.status_id, record.status_label),
        pipeline=ref(record.pipeline_id, record.pipeline_name),
        amount=(
            Money(amount=record.value / 100, currency=record.value_currency)
            if record.value is not None
            else None
        ),
        value_period=record.value_period,
        confidence=record.confidence,
        owner=ref(record.user_id, record.user_name),
        company=ref(record.lead_id, record.lead_name),
        contact=contact,
        note=record.note,
        created_at=record.date_created,
        updated_at=record.date_updated,
        won_at=won_at,
        lost_at=record.date_lost,
        closed_at=won_at or record.date_lost,
        custom_fields={key[len(_CUSTOM_PREFIX) :]: raw[key] for key in _custom_keys(raw)},
        raw=raw,
    )


# --------------------------------------------------------------------------------- listing


def parse_list_page(data: Any) -> ParsedPage:
    """One ``GET /opportunity/`` body as a page (pure).

    Raises:
        DecodeError: the body, or one of its records, does not match Close's contract.
    """
    data, records = listed(data, provider=PROVIDER)
    has_more = data.get("has_more")
    if not isinstance(has_more, bool):
        raise DecodeError("expected a boolean", provider=PROVIDER, path="$.has_more")
    total = data.get("total_results")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise DecodeError(
            f"expected a non-negative integer, got {total!r:.40}",
            provider=PROVIDER,
            path="$.total_results",
        )
    return ParsedPage(
        records=[close_to_opportunity(raw, path=f"$.data[{i}]") for i, raw in enumerate(records)],
        total=total,
        has_more=has_more,
        meta={k: v for k, v in data.items() if k != "data"},
    )


class ClosePaging(PagingPolicy):
    """Close's ``_skip``/``_limit`` paging for one listing.

    Ordered by ``date_created`` or ``date_updated`` (either direction), a listing that reaches
    Close's maximum ``_skip`` goes on from the last timestamp seen: the window's bound becomes
    ``date_created__gte`` (``__lte`` descending) that timestamp.
    """

    def __init__(self, query: ListQuery) -> None:
        order = query.order_by or _DEFAULT_ORDER
        self._order = order
        self._order_field = _RESUMABLE_ORDER.get(order.lstrip("-"))
        self.descending = order.startswith("-")
        self.can_move_window = self._order_field is not None
        self.sort_by = _SORTED_FIELD.get(self._order_field or "")
        self._params = _list_params(query, order)

    def request(self, page: PageRequest) -> Request:
        """``GET /opportunity/?_skip=…&_limit=…``, the window's bound added."""
        params = dict(self._params)
        if page.bound is not None and self._order_field is not None:
            key = f"{self._order_field}__{'lte' if self.descending else 'gte'}"
            current = params.get(key)
            tighter = min if self.descending else max
            bound = page.bound if current is None else tighter(current, page.bound)
            params[key] = bound
        params = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items()}
        return Request(
            path="/opportunity/", params={**params, "_skip": page.offset, "_limit": page.size}
        )

    def parse(self, response: Response, page: PageRequest) -> ParsedPage:
        """See :func:`parse_list_page`."""
        return parse_list_page(response.data)


def _list_params(query: ListQuery, order: str) -> dict[str, Any]:
    params: dict[str, Any] = dict(query.filters)
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
    params.update({k: v for k, v in bounds.items() if v is not None})
    if query.query is not None:
        params["query"] = query.query
    params["_order_by"] = order
    return params


# ------------------------------------------------------------------------------ event log

#: How far back Close's event log goes.
EVENT_LOG_RETENTION: Final = timedelta(days=30)
#: Events can become visible out of order for a few minutes: every read re-scans this much
#: before the checkpoint, as Close advises.
EVENT_RESCAN: Final = timedelta(minutes=5)
#: Close's page size (default and maximum) for ``GET /event/``.
EVENT_PAGE_SIZE: Final = 50
_EVENT_ACTIONS: Final = ("created", "updated", "deleted")
#: A record's ``date_updated`` can be a few milliseconds before its event's.
_LISTING_MARGIN: Final = timedelta(minutes=1)


class _NoEventLogError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@attrs.frozen(kw_only=True)
class CloseEvent:
    """One event of Close's event log (the fields the feed reads; the rest is ignored).

    ``date_updated`` moves when later changes are consolidated into the event (same ``id``).
    ``data`` is ``None`` (or ``{}``) on deletes and may be missing for non-admin keys.
    """

    id: str
    date_updated: datetime
    object_type: str
    object_id: str
    action: str
    date_created: datetime | None = None
    lead_id: str | None = None
    changed_fields: list[str] | None = None
    meta: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    previous_data: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class EventPage:
    """One ``GET /event/`` page: events newest first, and the cursor to older ones."""

    events: tuple[CloseEvent, ...]
    cursor_next: str | None = None
    cursor_previous: str | None = None


_event_converter = make_converter()


def parse_event_page(data: Any) -> EventPage:
    """One ``GET /event/`` body as an :class:`EventPage` (pure).

    Raises:
        DecodeError: the body, or one of its events, does not match Close's contract.
    """
    data, raw_events = listed(data, provider=PROVIDER, noun="events")
    cursors: dict[str, str | None] = {}
    for name in ("cursor_next", "cursor_previous"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise DecodeError(
                f"expected a string or null, got {type(value).__name__}",
                provider=PROVIDER,
                path=f"$.{name}",
            )
        cursors[name] = value or None
    events = []
    for i, raw in enumerate(raw_events):
        if isinstance(raw, Mapping) and not isinstance(raw.get("data"), (Mapping, type(None))):
            raw = {**raw, "data": None}
        events.append(
            decode(_event_converter, raw, CloseEvent, provider=PROVIDER, path=f"$.data[{i}]")
        )
    return EventPage(
        events=tuple(events),
        cursor_next=cursors["cursor_next"],
        cursor_previous=cursors["cursor_previous"],
    )


def event_change_kind(event: CloseEvent) -> ChangeKind | None:
    """What an event means for a copy of the opportunities (pure).

    ``None`` for an event of another object type; :attr:`ChangeKind.DELETE` for an
    opportunity ``deleted`` (a lead's deletion logs one per opportunity, and a merge that
    re-creates an opportunity deletes the old id); :attr:`ChangeKind.UPSERT` for any other
    opportunity action (``created``, ``updated``, a merge moving it to another lead, ...):
    the current record is to be fetched.
    """
    if event.object_type != "opportunity":
        return None
    return ChangeKind.DELETE if event.action == "deleted" else ChangeKind.UPSERT


def latest_changes(events: Iterable[CloseEvent]) -> dict[str, tuple[ChangeKind, datetime]]:
    """Each opportunity's latest change, oldest first (pure).

    Events are upserted by ``id`` keeping the newest ``date_updated`` (a consolidated event
    comes back with the same id); then each object's newest event decides, a delete winning
    a tie (nothing can follow a deletion of the same id).
    """
    newest: dict[str, CloseEvent] = {}
    for event in events:
        kept = newest.get(event.id)
        if kept is None or event.date_updated > kept.date_updated:
            newest[event.id] = event
    latest: dict[str, tuple[ChangeKind, datetime]] = {}
    for event in newest.values():
        kind = event_change_kind(event)
        if kind is None:
            continue
        current = latest.get(event.object_id)
        if (
            current is None
            or event.date_updated > current[1]
            or (event.date_updated == current[1] and kind is ChangeKind.DELETE)
        ):
            latest[event.object_id] = (kind, event.date_updated)
    return dict(sorted(latest.items(), key=lambda item: item[1][1]))


class CloseAdapter(CloseWebhooksMixin, BaseAdapter):
    """Opportunities from Close.

    ``list()`` orders by ``date_created`` (oldest first: edits made while the listing runs
    move no record) unless ``order_by`` says otherwise, and gets past Close's maximum
    ``_skip`` by restarting from the last ``date_created`` seen, dropping the records
    already yielded at that instant. Once the first page has told the total, the following
    pages are fetched ``concurrency`` at a time, in order; a listing that ends with fewer
    records than ``total_results`` re-reads, then raises
    :class:`~close_opps.IncompleteListingError`.

    Filters of Close's list endpoint are passed by their own names: ``lead_id``, ``user_id``,
    ``status_id``, ``status_label``, ``value_period``, their ``__in`` forms (a list or a
    comma-separated string), ``lead_saved_search_id``, ``date_won__gte``, ``is_stalled``, ...
    """

    provider = PROVIDER
    default_base_url = "https://api.close.com/api/v1"
    dialect_class = CloseDialect

    reserved_filters = _LIST_PARAMS_OWNED

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

    def paging_policy(self, query: ListQuery) -> ClosePaging:
        """Close's paging for ``query``."""
        return ClosePaging(query)

    # ---------------------------------------------------------------------- change feed

    async def _change_stream(self, run: FeedRun) -> AsyncGenerator[Change, None]:
        """Close's feed: the event log since the cursor's checkpoint (see ``docs/changes.md``).

        Reads ``GET /event/`` for opportunities (``created``, ``updated``, ``deleted``)
        from the checkpoint minus five minutes, keeps each event's newest form, and takes each
        opportunity's latest action: a delete is delivered as it is; an upsert fetches the
        current record (events are consolidated, and ``data`` is hidden from non-admin keys
        after an hour), and a record gone meanwhile is delivered as a delete. A first run, a
        cursor older than the log keeps, or a key that cannot read the log: a full
        reconciliation (``full_resync``).
        """
        now = run.now()
        since = run.since
        if since is None or run.resuming:
            # Events from the first attempt's start on are read by the next run.
            run.checkpoint = since.checkpoint if since is not None else now
            async with aclosing(run.initial(self._created_from, fingerprints=False)) as first:
                async for change in first:
                    yield change
            return
        if since.checkpoint is None or now - since.checkpoint > EVENT_LOG_RETENTION - EVENT_RESCAN:
            logger.warning(
                "close: the change cursor is from %s, older than the event log keeps "
                "(30 days): falling back to a full reconciliation",
                since.checkpoint.isoformat() if since.checkpoint else "an unknown time",
            )
            async with aclosing(self._full_reconciliation(run, now)) as full:
                async for change in full:
                    yield change
            return
        try:
            events = await self._read_events(since.checkpoint - EVENT_RESCAN)
        except _NoEventLogError as exc:
            logger.warning(
                "close: this key cannot read the event log (HTTP %d): falling back to a full "
                "reconciliation",
                exc.status,
            )
            async with aclosing(self._full_reconciliation(run, now)) as full:
                async for change in full:
                    yield change
            return
        known = dict(since.known)
        wanted: dict[str, datetime] = {}
        for record_id, (kind, occurred_at) in latest_changes(events).items():
            if kind is ChangeKind.DELETE:
                known.pop(record_id, None)
                yield Change.delete(PROVIDER, record_id, occurred_at=occurred_at)
            else:
                wanted[record_id] = occurred_at
        async with aclosing(self._current(wanted)) as current:
            async for change in current:
                if change.kind is ChangeKind.DELETE:
                    known.pop(change.id, None)
                else:
                    known[change.id] = None
                yield change
        run.known = known
        run.checkpoint = now

    async def _full_reconciliation(
        self, run: FeedRun, now: datetime
    ) -> AsyncGenerator[Change, None]:
        run.full_resync = True
        run.checkpoint = now
        reconciliation = run.reconcile(
            self.list(),
            upsert_all=True,
            fingerprints=False,
            confirm=self._get_or_none,
            concurrency=self.concurrency,
        )
        async with aclosing(reconciliation) as changes:
            async for change in changes:
                yield change

    async def _read_events(self, date_from: datetime) -> list[CloseEvent]:
        """Every opportunity event updated at or after ``date_from``, in three queries
        (``object_type=opportunity`` with each action: the type alone is not an allowed
        filter), each paged with ``cursor_next`` until it is null."""
        events: list[CloseEvent] = []
        bound = date_from.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
        for action in _EVENT_ACTIONS:
            params: dict[str, Any] = {
                "object_type": "opportunity",
                "action": action,
                "date_updated__gte": bound,
                "_limit": EVENT_PAGE_SIZE,
            }
            cursor: str | None = None
            cursors_seen: set[str] = set()
            while True:
                request = Request(
                    path="/event/", params={**params, **({"_cursor": cursor} if cursor else {})}
                )
                try:
                    response = await self._send(request)
                except (PermissionDeniedError, InvalidRequestError) as exc:
                    # The first request refused: the key cannot read the log (tap-closeio
                    # reads a 400 on /event/ so). Refused later, it is a real error.
                    if cursor is None and action == _EVENT_ACTIONS[0]:
                        raise _NoEventLogError(exc.status) from exc
                    raise
                page = parse_event_page(response.data)
                events.extend(page.events)
                cursor = page.cursor_next
                if cursor is None:
                    break
                if cursor in cursors_seen:
                    raise PaginationError(
                        "the event log sent a cursor it had already sent", provider=PROVIDER
                    )
                cursors_seen.add(cursor)
        return events

    async def _current(self, wanted: Mapping[str, datetime]) -> AsyncGenerator[Change, None]:
        """The current record of each wanted id (an upsert), or a delete when it is gone.

        ``k`` ids cost ``k`` gets, or one listing by ``date_updated__gte`` the oldest event
        (``ceil(k / page_size)`` pages when only those records changed) plus a get for any
        id it did not bring back: the listing is used when it costs fewer requests.
        """
        if not wanted:
            return
        remaining = dict(wanted)
        page_size = self._page_size
        if math.ceil(len(wanted) / page_size) < len(wanted):
            oldest = min(wanted.values())
            try:
                bound = oldest - _LISTING_MARGIN
            except OverflowError:  # an event dated at the very start of the calendar
                bound = datetime.min.replace(tzinfo=UTC)
            async with aclosing(self.list(updated_since=bound)) as listing:
                async for listed in listing:
                    remaining.pop(listed.id, None)
                    yield Change.upsert(listed, occurred_at=listed.updated_at)
        fetches = ((lambda i=i: self._fetch_current(i)) for i in sorted(remaining))
        fetched = fetch_in_order(fetches, concurrency=self.concurrency)
        async with aclosing(fetched) as results:
            async for record_id, found in results:
                if found is None:
                    yield Change.delete(PROVIDER, record_id)
                else:
                    yield Change.upsert(found, occurred_at=found.updated_at)

    async def _fetch_current(self, record_id: str) -> tuple[str, Opportunity | None]:
        return record_id, await self._get_or_none(record_id)
