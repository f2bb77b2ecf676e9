"""An emulator of Getraze's external API (``/external/v1``), as an aiohttp application.

Serves ``GET /external/v1/opportunities`` (``page``/``limit``, filters, ``sort_by``/
``sort_order``) and ``GET /external/v1/opportunities/{id}`` in the form Getraze's server
sends today (recorded in ``getraze-live-responses.json`` and ``-2.json``): success and error
envelopes with the recorded codes and messages, ``X-RateLimit-Limit/-Remaining/-Reset`` on
every authenticated response, 500 ``INTERNAL_ERROR`` for an id, ``owner_user_id``, ``page``
or ``limit`` the server's query cannot take, unknown query parameters ignored, ties of the
sort key in a fresh order on every request (``GetrazeOptions.tie_order``), and Express's
``Route not found`` 404 for any other path.
"""

from __future__ import annotations

import math
import random
import re
import urllib.parse
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from ._common import (
    JSON,
    RECORDS,
    STATE,
    Desc,
    Entry,
    LimitStatus,
    SortedView,
    VendorState,
    WindowLimiter,
    vendor_app,
    wall_clock,
)
from ._data import (
    Deal,
    render_getraze_detail,
    render_getraze_documented,
    render_getraze_list,
)
from ._faults import Fault, format_seconds, gateway_page
from ._options import GetrazeOptions

__all__ = ["BASE_PATH", "make_app"]

#: Where the API lives on the emulator's host: the base URL an adapter takes ends with it.
BASE_PATH: Final = "/external/v1"

_PERMISSION: Final = "opportunities:read"
_SORTABLE: Final = ("created_at", "updated_at", "title", "value")
#: The list's filters that compare with a uuid column (a value that is not a UUID: 500).
_UUID_FILTERS: Final = ("stage_id", "pipeline_id", "campaign_id", "owner_user_id")
#: Every query parameter the list reads as a filter; the server ignores all others.
_FILTERS: Final = frozenset({*_UUID_FILTERS, "search", "company"})
_LIST_FAILED: Final = "An error occurred while fetching opportunities"
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: The rest of the recorded stack of a path that does not decode.
_STACK: Final = "\n".join(
    f"    at {frame}"
    for frame in (
        "decodeURIComponent (<anonymous>)",
        "decode_param (<server-root>/backend/node_modules/express/lib/router/layer.js:172:12)",
        "Layer.match (<server-root>/backend/node_modules/express/lib/router/layer.js:148:15)",
        "matchLayer (<server-root>/backend/node_modules/express/lib/router/index.js:585:18)",
        "next (<server-root>/backend/node_modules/express/lib/router/index.js:226:15)",
        "Function.handle (<server-root>/backend/node_modules/express/lib/router/index.js:175:3)",
        "router (<server-root>/backend/node_modules/express/lib/router/index.js:47:12)",
        "Layer.handle [as handle_request] "
        "(<server-root>/backend/node_modules/express/lib/router/layer.js:95:5)",
        "trim_prefix (<server-root>/backend/node_modules/express/lib/router/index.js:328:13)",
        "<server-root>/backend/node_modules/express/lib/router/index.js:286:9",
    )
)
#: The random source that orders ties afresh on every request (``GetrazeOptions.tie_order``).
_TIES: Final = web.AppKey("close_opps_sandbox_getraze_ties", random.Random)
_MISSING_KEY: Final = (
    "API key is required. Provide it via X-API-Key header, Authorization header, "
    "or api_key query parameter."
)


def _error(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    error: JSON = {"code": code, "message": message}
    error.update(extra)
    return web.json_response({"success": False, "error": error}, status=status, headers=headers)


class _ServerFailure(Exception):
    """The server's query failed: 500 ``INTERNAL_ERROR`` with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _route_not_found(request: web.Request) -> web.Response:
    # Express's catch-all: no error object, no code; the path as sent, query included
    return web.json_response(
        {"success": False, "message": f"Route not found: {request.method} {request.raw_path}"},
        status=404,
    )


class _Invalid(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _limit_headers(status: LimitStatus, *, remaining: int | None = None) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(status.limit),
        "X-RateLimit-Remaining": str(status.remaining if remaining is None else remaining),
        "X-RateLimit-Reset": str(math.ceil(status.reset_at)),
    }


def _seconds(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _per(window: float) -> str:
    return "per hour" if window == 3600 else f"per {format_seconds(window)} seconds"


class _Renderer:
    def __init__(self, limiter: WindowLimiter) -> None:
        self.limiter = limiter

    def _status(self) -> LimitStatus:
        # report the window as it stands, without counting this request
        now = self.limiter.clock()
        policy = self.limiter.policy
        window = policy.window if policy else 3600.0
        reset_at = (math.floor(now / window) + 1) * window
        limit = policy.limit if policy else 10_000
        return LimitStatus(
            allowed=False, limit=limit, remaining=0, reset_in=reset_at - now, reset_at=reset_at
        )

    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        status = self._status()
        headers = _limit_headers(status)
        if fault.retry_after_header:
            headers["Retry-After"] = format_seconds(fault.seconds)
        window = self.limiter.policy.window if self.limiter.policy else 3600.0
        return _error(
            429,
            "RATE_LIMIT_EXCEEDED",
            f"Rate limit of {status.limit} requests {_per(window)} exceeded. Try again later.",
            headers=headers,
            retry_after=_seconds(fault.seconds),
        )

    def server_error(self, request: web.Request, status: int) -> web.StreamResponse:
        if status == 500:
            return _error(500, "INTERNAL_ERROR", "Internal server error")
        return web.Response(status=status, text=gateway_page(status), content_type="text/html")


def _api_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.query.get("api_key", "").strip() or None


@web.middleware
async def _getraze_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path != BASE_PATH and not request.path.startswith(f"{BASE_PATH}/"):
        return _route_not_found(request)  # outside the API: before auth and the limiter
    state = request.app[STATE]
    options: GetrazeOptions = state.options
    key = _api_key(request)
    if key is None:
        return _error(401, "MISSING_API_KEY", _MISSING_KEY)
    if key != state.api_key:
        return _error(401, "INVALID_API_KEY", "Invalid or expired API key.")
    limit = state.limiter.hit(key)
    headers = _limit_headers(limit)
    if not limit.allowed:
        now = state.limiter.clock()
        window = options.rate_limit.window if options.rate_limit else 3600.0
        return _error(
            429,
            "RATE_LIMIT_EXCEEDED",
            f"Rate limit of {limit.limit} requests {_per(window)} exceeded. Try again later.",
            headers=headers,
            # seconds to the window's end, rounded down: 0 in its last second (recorded)
            retry_after=max(0, math.floor(limit.reset_at - now)),
        )
    if _PERMISSION not in options.permissions:
        return _error(
            403,
            "INSUFFICIENT_PERMISSIONS",
            f"This API key does not have the required permission: {_PERMISSION}",
            headers=headers,
            required_permission=_PERMISSION,
            current_permissions=list(options.permissions),
        )
    response: web.StreamResponse
    try:
        response = await handler(request)
    except _Invalid as exc:
        response = _error(400, "VALIDATION_ERROR", exc.message, details={"field": exc.field})
    except _ServerFailure as exc:
        response = _error(500, "INTERNAL_ERROR", exc.message)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        response = _route_not_found(request)
    except web.HTTPException as exc:
        response = _error(exc.status, "INTERNAL_ERROR", exc.reason)
    response.headers.update(headers)
    return response


# ----------------------------------------------------------------------------- list


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _ServerFailure(_LIST_FAILED) from None


def _live_form(state: VendorState) -> Callable[[Entry], JSON]:
    """An entry's record in the live list form (what the filters and the sort read)."""
    options: GetrazeOptions = state.options
    if options.record_form == "live":
        return lambda entry: entry[1]
    seed = state.seed
    return lambda entry: state.derived(
        "live", entry[1], lambda _served: render_getraze_list(seed, entry[0])
    )


def _predicates(request: web.Request) -> list[Callable[[JSON], bool]]:
    """The server's own filters; it ignores every other query parameter (``status``,
    ``source``, ``responsible_user_id``, ``updated_since`` ...)."""
    query = request.query
    predicates: list[Callable[[JSON], bool]] = []
    for field in _UUID_FILTERS:
        wanted = query.get(field, "").strip()
        if not wanted:
            continue
        try:
            uuid.UUID(wanted)
        except ValueError:
            # PostgreSQL cannot cast it to uuid: the query fails, the server answers 500
            raise _ServerFailure(_LIST_FAILED) from None
        predicates.append(_equals(field, wanted.lower()))
    search = query.get("search", "").strip().lower()
    if search:
        fields = ("title", "contact_name", "contact_email", "contact_company")
        predicates.append(lambda r: any(search in (r[f] or "").lower() for f in fields))
    company = query.get("company", "").strip().lower()
    if company:
        predicates.append(lambda r: company in (r["contact_company"] or "").lower())
    return predicates


def _equals(field: str, wanted: str) -> Callable[[JSON], bool]:
    return lambda record: bool(record[field] == wanted)


def _sort_key(
    field: str, descending: bool, live: Callable[[Entry], JSON]
) -> Callable[[Entry], Any]:
    """The sort key alone: the real server has no tie-breaker (the view adds the id only to
    keep its own order stable; ``tie_order="shuffled"`` draws each run afresh)."""
    if field == "value":

        def value(entry: Entry) -> Any:
            return Decimal(live(entry)["value"] or 0)

        plain = value
    else:

        def plain(entry: Entry) -> Any:
            return live(entry)[field] or ""

    if descending:
        return lambda entry: Desc(plain(entry))
    return plain


def _window(view: SortedView, start: int, stop: int, rng: random.Random | None) -> list[JSON]:
    """``records[start:stop]`` as one ``LIMIT``/``OFFSET`` query sees it: with ``rng``, the
    records of each run of ties crossing the window in a fresh random order (a uniform
    draw of the run's records for those positions), as a sort without a tie-breaker."""
    records = view.records
    stop = min(stop, len(records))
    if rng is None or start >= stop:
        return records[start:stop]
    page: list[JSON] = []
    while start < stop:
        run_start, run_end = view.run(start)
        end = min(stop, run_end)
        if run_end - run_start == 1:
            page.append(records[run_start])
        else:
            # sample() picks k of the run's positions in O(k): the positions [start, end)
            # of a uniformly shuffled run hold exactly such a draw
            page.extend(records[i] for i in rng.sample(range(run_start, run_end), end - start))
        start = end
    return page


async def _list(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    options: GetrazeOptions = state.options
    page = _int_param(request, "page", 1)
    limit = _int_param(request, "limit", options.default_limit)
    if page < 1 or limit < 0:
        raise _ServerFailure(_LIST_FAILED)  # a negative OFFSET/LIMIT fails in PostgreSQL
    if limit > options.max_limit:
        if options.over_max_limit == "clamp":
            limit = options.max_limit
        else:
            raise _Invalid(f"limit must be between 1 and {options.max_limit}", "limit")
    sort_by = request.query.get("sort_by", "created_at")
    sort_by = sort_by if sort_by in _SORTABLE else "created_at"
    descending = request.query.get("sort_order", "desc").lower() != "asc"
    predicates = _predicates(request)
    cache_key = (
        "list",
        sort_by,
        descending,
        tuple(sorted((k, v) for k, v in request.query.items() if k in _FILTERS)),
    )

    live = _live_form(state)

    def build() -> SortedView:
        def match(entry: Entry) -> bool:
            record = live(entry)
            return all(p(record) for p in predicates)

        return SortedView(
            state.entries(),
            key=_sort_key(sort_by, descending, live),
            match=match if predicates else None,
        )

    view = state.view(cache_key, build)
    total = len(view)
    total_pages = math.ceil(total / limit) if limit else None
    shuffle = request.app[_TIES] if options.tie_order == "shuffled" else None
    data = _window(view, (page - 1) * limit, page * limit, shuffle)
    if options.list_form == "documented":
        pagination: JSON = {
            "page": page,
            "limit": limit,
            "total": total,
            "total_pages": total_pages,
        }
        body: JSON = {"success": True, "data": {"opportunities": RECORDS, "pagination": pagination}}
        return state.list_response(body, data)
    pagination = {
        "page": page,
        "per_page": limit,
        "total": total,
        "total_pages": total_pages,
        "has_next": total_pages is None or page < total_pages,
        "has_prev": page > 1,
    }
    return state.list_response({"success": True, "data": RECORDS, "pagination": pagination}, data)


def _undecodable(segment: str) -> bool:
    """Whether JavaScript's ``decodeURIComponent`` throws on ``segment`` (a ``%`` without two
    hex digits, or escapes that are not UTF-8)."""
    if _BAD_ESCAPE.search(segment):
        return True
    try:
        urllib.parse.unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _decode_failure(segment: str) -> web.Response:
    # Express fails before any route runs: its error handler sends message and stack
    message = f"Failed to decode param '{segment}'"
    return web.json_response(
        {"success": False, "message": message, "stack": f"URIError: {message}\n{_STACK}"},
        status=400,
    )


async def _get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    segment = request.raw_path.partition("?")[0].rstrip("/").rpartition("/")[2]
    if _undecodable(segment):
        return _decode_failure(segment)
    raw = request.match_info["id"]
    try:
        record_id = str(uuid.UUID(raw))
    except ValueError:
        return _error(500, "INTERNAL_ERROR", "An error occurred while fetching the opportunity")
    record = state.get(record_id)
    if record is None:
        return _error(404, "NOT_FOUND", "Opportunity not found")
    return web.json_response({"success": True, "data": record})


# ----------------------------------------------------------------------------- app


def make_app(options: GetrazeOptions | None = None, *, seed: int = 0) -> web.Application:
    """Build the Getraze emulator: mount it at the root; its API lives under :data:`BASE_PATH`.

    ``options.seed``, when set, wins over ``seed``. The app's state is ``app[STATE]``; its
    fault injector is ``app[FAULTS]``.
    """
    options = options or GetrazeOptions()
    documented = options.record_form == "documented"

    def render(seed: int, deal: Deal) -> tuple[JSON, JSON]:
        if documented:
            record = render_getraze_documented(seed, deal)
            return record, record
        return render_getraze_list(seed, deal), render_getraze_detail(seed, deal)

    limiter = WindowLimiter(options.rate_limit, wall_clock)
    app = vendor_app(
        "getraze",
        options,
        seed=seed,
        render=render,
        limiter=limiter,
        fault_renderer=_Renderer(limiter),
        middleware=_getraze_middleware,
    )
    tie_seed = options.tie_seed if options.tie_seed is not None else app[STATE].seed
    app[_TIES] = random.Random(f"close-opps-sandbox:getraze-ties:{tie_seed}")  # noqa: S311
    for path in (f"{BASE_PATH}/opportunities", f"{BASE_PATH}/opportunities/"):
        app.router.add_get(path, _list)
    app.router.add_get(f"{BASE_PATH}/opportunities/{{id}}", _get)
    return app
