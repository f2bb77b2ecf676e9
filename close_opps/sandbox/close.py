"""An emulator of Close's opportunity API (``/api/v1``), as an aiohttp application.

Serves ``GET /api/v1/opportunity/`` (filters, ``_order_by``, ``_skip``/``_limit`` with the
vendor's maxima and 400 texts, ``_fields``, the value aggregates) and
``GET /api/v1/opportunity/{id}/`` (with or without the trailing slash), and the event log
``GET /api/v1/event/`` and ``GET /api/v1/event/{id}/`` (see :mod:`._events`). Auth is HTTP Basic
with the API key as user name (or ``Authorization: Bearer <key>``). Every response carries
``RateLimit: limit=<n>, remaining=<m>, reset=<seconds>``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, cast

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from ._common import (
    JSON,
    RECORDS,
    STATE,
    Desc,
    Entry,
    SortedView,
    VendorState,
    WindowLimiter,
    monotonic_clock,
    parse_datetime,
    vendor_app,
)
from ._data import Company, Deal, close_id, companies, format_close_money, render_close
from ._events import EventLog, EventQuery, InvalidEventQuery
from ._faults import Fault, format_seconds, gateway_page
from ._options import CloseOptions
from .close_webhooks import install_webhooks

__all__ = ["BASE_PATH", "delete_lead", "lead_record", "make_app", "merge_leads"]

#: Where the API lives on the emulator's host: the base URL an adapter takes ends with it.
BASE_PATH: Final = "/api/v1"

_ORDERABLE: Final = frozenset(
    {
        "date_won",
        "date_updated",
        "date_created",
        "confidence",
        "user_name",
        "value",
        "annualized_value",
        "annualized_expected_value",
    }
)
_EQUALITY: Final = {
    "lead_id": "lead_id",
    "organization_id": "organization_id",
    "user_id": "user_id",
    "status_id": "status_id",
    "status_type": "status_type",
    "status_label": "status_label",
    "status": "status_label",
    "value_period": "value_period",
}
_IN: Final = {"user_id", "status_id", "status_type", "status_label", "status", "value_period"}
_DATES: Final = ("date_created", "date_updated", "date_won")
_OPS: Final[dict[str, Callable[[datetime, datetime], bool]]] = {
    "": lambda a, b: a == b,
    "__gte": lambda a, b: a >= b,
    "__gt": lambda a, b: a > b,
    "__lte": lambda a, b: a <= b,
    "__lt": lambda a, b: a < b,
}
_UNSUPPORTED: Final = ("_group_by", "lead_query", "lead_saved_search_id")
_PERIODS: Final = ("one_time", "monthly", "annual")
_NOT_FOUND: Final = "Empty query: Opportunity matching query does not exist."
_EVENT_NOT_FOUND: Final = "Empty query: Event matching query does not exist."


class _BadRequest(Exception):
    def __init__(self, body: JSON) -> None:
        super().__init__(body)
        self.body = body


def _field_error(field: str, message: str) -> _BadRequest:
    return _BadRequest({"errors": [], "field-errors": {field: message}})


@attrs.frozen
class _Row:
    record: JSON
    dates: dict[str, datetime | None]
    #: (value_period, value, expected_value, annualized_value, annualized_expected_value)
    money: tuple[str, int, int, int, int]


def _row(record: JSON) -> _Row:
    won = record["date_won"]
    return _Row(
        record,
        {
            "date_created": parse_datetime(record["date_created"]),
            "date_updated": parse_datetime(record["date_updated"]),
            "date_won": parse_datetime(won) if won else None,
        },
        (
            record["value_period"],
            record["value"] or 0,
            record["expected_value"] or 0,
            record["annualized_value"] or 0,
            record["annualized_expected_value"] or 0,
        ),
    )


# ----------------------------------------------------------------------------- rendering


def _rate_headers(limit: int, remaining: int, reset: float, form: str) -> dict[str, str]:
    headers = {}
    if form in ("ratelimit", "both"):
        headers["RateLimit"] = (
            f"limit={limit}, remaining={remaining}, reset={format_seconds(reset)}"
        )
    if form in ("legacy", "both"):
        headers["X-Rate-Limit-Limit"] = str(limit)
        headers["X-Rate-Limit-Remaining"] = str(remaining)
        headers["X-Rate-Limit-Reset"] = format_seconds(reset)
    return headers


class _Renderer:
    def __init__(self, limiter: WindowLimiter, form: str) -> None:
        self.limiter = limiter
        self.form = form

    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        limit = self.limiter.policy.limit if self.limiter.policy else 1000
        headers = _rate_headers(limit, 0, fault.seconds, self.form)
        if fault.retry_after_header:
            headers["Retry-After"] = format_seconds(fault.seconds)
        return web.Response(status=429, headers=headers)

    def server_error(self, request: web.Request, status: int) -> web.StreamResponse:
        if status == 500:
            return web.json_response({"error": "Internal Server Error"}, status=500)
        return web.Response(status=status, text=gateway_page(status), content_type="text/html")


# ----------------------------------------------------------------------------- auth


def _api_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
        except (ValueError, binascii.Error):
            return None
        login, _, _password = decoded.partition(":")
        return login or None
    return None


@web.middleware
async def _close_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    key = _api_key(request)
    limit = state.limiter.hit(key or "")
    form = state.options.rate_limit_headers
    headers = _rate_headers(limit.limit, limit.remaining, limit.reset_in, form)
    response: web.StreamResponse
    if key is None:
        response = web.json_response(
            {"error": "Unauthorized: provide your API key as the HTTP Basic auth user name."},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="Close API"'},
        )
    elif key != state.api_key:
        response = web.json_response(
            {"error": "Unauthorized: the API key is invalid."},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="Close API"'},
        )
    elif not limit.allowed:
        response = web.Response(status=429)
    else:
        try:
            response = await handler(request)
        except _BadRequest as exc:
            response = web.json_response(exc.body, status=400)
        except web.HTTPException as exc:
            response = web.json_response({"error": exc.reason}, status=exc.status)
    response.headers.update(headers)
    return response


# ----------------------------------------------------------------------------- list


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _field_error(name, "Not a valid integer.") from None
    if value < 0:
        raise _field_error(name, "Must be greater than or equal to 0.")
    return value


def _order(request: web.Request) -> tuple[tuple[str, bool], ...]:
    raw = request.query.get("_order_by", "")
    terms = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, descending = (part[1:], True) if part.startswith("-") else (part, False)
        if name not in _ORDERABLE:
            raise _field_error("_order_by", f"Invalid field to order by: {name}")
        terms.append((name, descending))
    return tuple(terms) or (("date_created", True),)


def _predicates(request: web.Request) -> list[Callable[[_Row], bool]]:
    predicates: list[Callable[[_Row], bool]] = []
    query = request.query
    for name in _UNSUPPORTED:
        if name in query:
            raise _BadRequest({"error": f"{name} is not supported by the close-opps sandbox."})
    for param, field in _EQUALITY.items():
        if param in query:
            predicates.append(_equals(field, query[param]))
        if param in _IN and f"{param}__in" in query:
            allowed = frozenset(v.strip() for v in query[f"{param}__in"].split(","))
            predicates.append(_one_of(field, allowed))
    for field in _DATES:
        for suffix, op in _OPS.items():
            param = f"{field}{suffix}"
            if param not in query:
                continue
            try:
                bound = parse_datetime(query[param])
            except ValueError:
                raise _field_error(param, "Not a valid date/time.") from None
            predicates.append(_compare(field, op, bound))
    if "is_stalled" in query and query["is_stalled"].lower() in ("true", "1", "yes"):
        predicates.append(lambda row: False)  # the seeded deals are never stalled
    text = query.get("query", "").strip()
    if text:
        predicates.append(_text_predicate(text))
    return predicates


def _equals(field: str, wanted: str) -> Callable[[_Row], bool]:
    return lambda row: bool(row.record[field] == wanted)


def _one_of(field: str, allowed: frozenset[str]) -> Callable[[_Row], bool]:
    return lambda row: row.record[field] in allowed


def _compare(
    field: str, op: Callable[[datetime, datetime], bool], bound: datetime
) -> Callable[[_Row], bool]:
    def predicate(row: _Row) -> bool:
        value = row.dates[field]
        return value is not None and op(value, bound)

    return predicate


def _text_predicate(text: str) -> Callable[[_Row], bool]:
    field, sep, needle = text.partition(":")
    if sep and field in ("note", "lead_name"):
        fields: tuple[str, ...] = (field,)
    else:
        fields, needle = ("note", "lead_name"), text
    lowered = needle.strip().strip('"').lower()
    return lambda row: any(lowered in (row.record[f] or "").lower() for f in fields)


def _sort_value(row: _Row, name: str) -> Any:
    if name in row.dates:
        return row.dates[name]
    return row.record[name]


def _order_key(
    state: VendorState, order: Sequence[tuple[str, bool]]
) -> Callable[[Entry], tuple[Any, ...]]:
    """The ``_order_by`` terms as one ascending key (nulls last ascending, first
    descending); the view breaks ties by id ascending."""

    def key(entry: Entry) -> tuple[Any, ...]:
        row = state.derived("row", entry[1], _row)
        parts: list[Any] = []
        for name, descending in order:
            value = _sort_value(row, name)
            part = (1, 0) if value is None else (0, value)
            parts.append(Desc(part) if descending else part)
        return tuple(parts)

    return key


class _Totals:
    """The value aggregates of a listing, kept up to date as records come and go."""

    def __init__(self, state: VendorState) -> None:
        self.state = state
        self.counts = dict.fromkeys(_PERIODS, 0)
        self.totals = dict.fromkeys(_PERIODS, 0)
        self.expected = dict.fromkeys(_PERIODS, 0)
        self.total_annualized = 0
        self.expected_annualized = 0

    def _apply(self, entry: Entry, sign: int) -> None:
        period, value, expected_value, annualized, annualized_expected = self.state.derived(
            "row", entry[1], _row
        ).money
        self.counts[period] = self.counts.get(period, 0) + sign
        self.totals[period] = self.totals.get(period, 0) + sign * value
        self.expected[period] = self.expected.get(period, 0) + sign * expected_value
        self.total_annualized += sign * annualized
        self.expected_annualized += sign * annualized_expected

    def add(self, entry: Entry) -> None:
        self._apply(entry, 1)

    def remove(self, entry: Entry) -> None:
        self._apply(entry, -1)

    def as_json(self, total: int) -> JSON:
        """Close's aggregate keys, formatted in USD."""
        expected, totals = self.expected, self.totals

        def money(cents: int) -> str:
            return format_close_money(cents, "USD")

        return {
            "count_by_value_period": dict(self.counts),
            "expected_value_annual": expected["annual"],
            "expected_value_annual_formatted": money(expected["annual"]),
            "expected_value_annualized": self.expected_annualized,
            "expected_value_annualized_formatted": money(self.expected_annualized),
            "expected_value_monthly": expected["monthly"],
            "expected_value_monthly_formatted": money(expected["monthly"]),
            "expected_value_one_time": expected["one_time"],
            "expected_value_one_time_formatted": money(expected["one_time"]),
            "total_results": total,
            "total_value_annual": totals["annual"],
            "total_value_annual_formatted": money(totals["annual"]),
            "total_value_annualized": self.total_annualized,
            "total_value_annualized_formatted": money(self.total_annualized),
            "total_value_monthly": totals["monthly"],
            "total_value_monthly_formatted": money(totals["monthly"]),
            "total_value_one_time": totals["one_time"],
            "total_value_one_time_formatted": money(totals["one_time"]),
        }


def _project(record: JSON, fields: frozenset[str] | None) -> JSON:
    if fields is None:
        return record
    return {k: v for k, v in record.items() if k in fields}


def _fields(request: web.Request) -> frozenset[str] | None:
    raw = request.query.get("_fields", "")
    names = frozenset(p.strip() for p in raw.split(",") if p.strip())
    return names or None


async def _list(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    options: CloseOptions = state.options
    limit = _int_param(request, "_limit", min(100, options.max_limit))
    skip = _int_param(request, "_skip", 0)
    if limit > options.max_limit:
        raise _BadRequest(
            {
                "error": "The limit you set is larger than the maximum limit for this resource "
                f"(max_limit = {options.max_limit}). Please refine your search query."
            }
        )
    if skip > options.max_skip:
        raise _BadRequest(
            {
                "error": "The skip you set is larger than the maximum skip for this resource "
                f"(max_skip = {options.max_skip}). Please refine your search query."
            }
        )
    order = _order(request)
    predicates = _predicates(request)
    cache_key = (
        "list",
        order,
        tuple(
            sorted(
                (k, v)
                for k, v in request.query.items()
                if k not in ("_limit", "_skip", "_fields", "_order_by")
            )
        ),
    )

    def build() -> SortedView:
        def match(entry: Entry) -> bool:
            row = state.derived("row", entry[1], _row)
            return all(p(row) for p in predicates)

        return SortedView(
            state.entries(),
            key=_order_key(state, order),
            match=match if predicates else None,
            tally=_Totals(state),
        )

    view = state.view(cache_key, build)
    records = view.records
    aggregates = cast("_Totals", view.tally).as_json(len(records))
    fields = _fields(request)
    page = records[skip : skip + limit]
    body: JSON = {"data": RECORDS, "has_more": skip + len(page) < len(records)}
    body.update(aggregates)
    if fields is None:
        return state.list_response(body, page)
    body["data"] = [_project(r, fields) for r in page]
    return web.json_response(body)


async def _get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    record = state.get(request.match_info["id"])
    if record is None:
        return web.json_response({"error": _NOT_FOUND}, status=404)
    return web.json_response(_project(record, _fields(request)))


# ----------------------------------------------------------------------------- events


def _event_log(state: VendorState) -> EventLog:
    log = state.events
    if log is None:  # pragma: no cover - every Close app has one
        raise web.HTTPNotFound()
    return log


def _visible(log: EventLog, options: CloseOptions, event: JSON) -> JSON:
    """The event as the key sees it: a non-admin key loses ``data`` after an hour."""
    if options.admin or log.age(event) <= options.non_admin_window:
        return event
    return {k: (None if k in options.non_admin_hidden else v) for k, v in event.items()}


async def _list_events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    options: CloseOptions = state.options
    log = _event_log(state)
    try:
        query = EventQuery.parse(request.query, max_limit=options.event_limit)
        events, cursor_next, cursor_previous = log.page(query)
    except InvalidEventQuery as exc:
        raise _BadRequest({"error": exc.message}) from None
    body = {
        "data": [_visible(log, options, event) for event in events],
        "cursor_next": cursor_next,
        "cursor_previous": cursor_previous,
    }
    return web.json_response(body)


async def _get_event(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    log = _event_log(state)
    event = log.get(request.match_info["id"])
    if event is None:
        return web.json_response({"error": _EVENT_NOT_FOUND}, status=404)
    return web.json_response(_visible(log, state.options, event))


# ----------------------------------------------------------------------------- leads


def _leads(state: VendorState) -> dict[str, Company]:
    return {close_id(state.seed, "lead", c.index): c for c in companies(state.seed)}


def lead_record(state: VendorState, lead_id: str) -> JSON:
    """A (minimal) Close lead object, as lead events carry it."""
    company = _leads(state)[lead_id]
    return {
        "id": lead_id,
        "name": company.name,
        "display_name": company.name,
        "organization_id": close_id(state.seed, "orga", 0),
    }


def _live_lead(state: VendorState, lead_id: str) -> Company:
    company = _leads(state).get(lead_id)
    if company is None or lead_id in state.deleted_leads:
        raise KeyError(f"no lead {lead_id}")
    return company


def delete_lead(state: VendorState, lead_id: str) -> list[str]:
    """Delete a lead and its opportunities (``DELETE /lead/{id}/``), logging an
    ``opportunity`` ``deleted`` event per opportunity, then the ``lead`` ``deleted`` one."""
    _live_lead(state, lead_id)
    log = _event_log(state)
    request = log.request("DELETE", f"{BASE_PATH}/lead/{lead_id}/")
    doomed = [str(r["id"]) for r in state.records if r["lead_id"] == lead_id]
    for record_id in doomed:
        log.opportunity_deleted(state.drop(record_id), request)
    state.deleted_leads.add(lead_id)
    lead = lead_record(state, lead_id)
    log.lead_event("deleted", lead, request, previous=lead)
    return doomed


def merge_leads(state: VendorState, source_lead_id: str, destination_lead_id: str) -> list[str]:
    """Merge a lead into another (``POST /lead/merge/``): its opportunities move to the
    destination, the source is deleted. Every event carries ``meta.merge_source_lead_id``
    and ``meta.merge_destination_lead_id``. Returns the moved opportunities' ids now."""
    if source_lead_id == destination_lead_id:
        raise ValueError("a lead cannot be merged into itself")
    _live_lead(state, source_lead_id)
    destination = _live_lead(state, destination_lead_id)
    log = _event_log(state)
    options: CloseOptions = state.options
    request = log.request(
        "POST",
        f"{BASE_PATH}/lead/merge/",
        merge_source_lead_id=source_lead_id,
        merge_destination_lead_id=destination_lead_id,
    )
    now = state.now()
    moved: list[str] = []
    for record_id in [str(r["id"]) for r in state.records if r["lead_id"] == source_lead_id]:
        if options.merge_form == "update":
            before, after = state.replace_deal(record_id, company=destination, updated_at=now)
            log.opportunity_updated(before, after, request)
            moved.append(record_id)
        else:
            deal = state.deal(record_id)
            log.opportunity_deleted(state.drop(record_id), request)
            copy = attrs.evolve(deal, index=state.take_index(), company=destination, updated_at=now)
            listed, detail = state.add(copy)
            log.opportunity_created(detail, request)
            moved.append(str(listed["id"]))
    target = lead_record(state, destination_lead_id)
    log.lead_event("merged", target, request, data=target)
    log.lead_event("updated", target, request, data=target, changed=["date_updated"])
    state.deleted_leads.add(source_lead_id)
    source = lead_record(state, source_lead_id)
    log.lead_event("deleted", source, request, previous=source)
    return moved


# ----------------------------------------------------------------------------- app


def make_app(options: CloseOptions | None = None, *, seed: int = 0) -> web.Application:
    """Build the Close emulator: mount it at the root; its API lives under :data:`BASE_PATH`.

    ``options.seed``, when set, wins over ``seed``. The app's state (records, faults,
    counters) is ``app[STATE]``; its fault injector is ``app[FAULTS]``.
    """
    options = options or CloseOptions()
    extras = options.schema_extras

    def render(seed: int, deal: Deal) -> tuple[JSON, JSON]:
        record = render_close(seed, deal, schema_extras=extras)
        return record, record

    limiter = WindowLimiter(options.rate_limit, monotonic_clock)
    app = vendor_app(
        "close",
        options,
        seed=seed,
        render=render,
        limiter=limiter,
        fault_renderer=_Renderer(limiter, options.rate_limit_headers),
        middleware=_close_middleware,
        events=lambda seed, clock: EventLog(
            seed=seed,
            clock=clock,
            retention=options.event_retention,
            consolidation=options.consolidation,
            deleted_data=options.deleted_data,
            status_change_type=options.status_change_type,
        ),
        base_path=BASE_PATH,
    )
    for path in (f"{BASE_PATH}/event/", f"{BASE_PATH}/event"):
        app.router.add_get(path, _list_events)
    for path in (f"{BASE_PATH}/event/{{id}}/", f"{BASE_PATH}/event/{{id}}"):
        app.router.add_get(path, _get_event)
    for path in (f"{BASE_PATH}/opportunity/", f"{BASE_PATH}/opportunity"):
        app.router.add_get(path, _list)
    for path in (f"{BASE_PATH}/opportunity/{{id}}/", f"{BASE_PATH}/opportunity/{{id}}"):
        app.router.add_get(path, _get)
    hooks = install_webhooks(app, BASE_PATH, seed=app[STATE].seed)
    # every event logged (and each consolidation of one) goes to the subscriptions
    _event_log(app[STATE]).listeners.append(hooks.publish)
    return app
