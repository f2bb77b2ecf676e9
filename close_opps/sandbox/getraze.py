"""An emulator of Getraze's external API (``/external/v1``), as an aiohttp application.

Serves ``GET /external/v1/opportunities`` (``page``/``limit``, filters, ``sort_by``/
``sort_order``) and ``GET /external/v1/opportunities/{id}`` in the form Getraze's server
sends today (recorded in ``getraze-live-responses.json``): success and error envelopes with
the recorded codes and messages, ``X-RateLimit-Limit/-Remaining/-Reset`` on every
authenticated response, 500 ``INTERNAL_ERROR`` for an id that is not a UUID.
"""

from __future__ import annotations

import math
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
    LimitStatus,
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
            retry_after=max(1, math.ceil(limit.reset_at - now)),
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
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        response = _error(404, "NOT_FOUND", "Endpoint not found")
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
        raise _Invalid(f"{name} must be an integer", name) from None


def _rows(state: VendorState) -> list[tuple[JSON, JSON]]:
    """``(record in the live list form, record as served)`` in seed order."""

    def compute() -> list[tuple[JSON, JSON]]:
        options: GetrazeOptions = state.options
        if options.record_form == "live":
            return [(served, served) for served in state.records]
        return [
            (render_getraze_list(state.seed, deal), served)
            for deal, served in zip(state.deals, state.records, strict=True)
        ]

    return state.cached("rows", compute)


def _predicates(request: web.Request) -> list[Callable[[JSON], bool]]:
    query = request.query
    predicates: list[Callable[[JSON], bool]] = []
    exact = {
        "status": "stage_name",
        "stage_id": "stage_id",
        "pipeline_id": "pipeline_id",
        "campaign_id": "campaign_id",
        "owner_user_id": "owner_user_id",
        "responsible_user_id": "owner_user_id",
        "source": "source",
    }
    for param, field in exact.items():
        wanted = query.get(param, "").strip()
        if wanted:
            predicates.append(_equals(field, wanted))
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


def _sort_key(field: str) -> Callable[[tuple[JSON, JSON]], Any]:
    if field == "value":
        return lambda row: Decimal(row[0]["value"])
    return lambda row: row[0][field] or ""


async def _list(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    options: GetrazeOptions = state.options
    page = _int_param(request, "page", 1)
    limit = _int_param(request, "limit", options.default_limit)
    if page < 1:
        raise _Invalid("page must be greater than or equal to 1", "page")
    if limit < 1 or limit > options.max_limit:
        if options.over_max_limit == "clamp" and limit > options.max_limit:
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
        tuple(sorted((k, v) for k, v in request.query.items() if k not in ("page", "limit"))),
    )

    def ordered() -> list[tuple[JSON, JSON]]:
        rows = sorted(_rows(state), key=lambda row: str(row[0]["id"]))
        rows.sort(key=_sort_key(sort_by), reverse=descending)
        return rows

    def compute() -> list[JSON]:
        rows = state.cached(("sorted", sort_by, descending), ordered)
        return [served for live, served in rows if all(p(live) for p in predicates)]

    records = state.cached(cache_key, compute)
    total = len(records)
    total_pages = math.ceil(total / limit)
    data = records[(page - 1) * limit : page * limit]
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
        "has_next": page < total_pages,
        "has_prev": page > 1,
    }
    return state.list_response({"success": True, "data": RECORDS, "pagination": pagination}, data)


async def _get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
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
    for path in (f"{BASE_PATH}/opportunities", f"{BASE_PATH}/opportunities/"):
        app.router.add_get(path, _list)
    app.router.add_get(f"{BASE_PATH}/opportunities/{{id}}", _get)
    return app
