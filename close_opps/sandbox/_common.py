"""What the three vendor apps share: the served records, the limiter, small helpers."""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import attrs
from aiohttp import web

from ._data import Deal, generate_deals
from ._faults import FAULTS, FaultInjector, FaultRenderer, fault_middleware
from ._options import DEFAULT_RECORDS, RateLimitPolicy

__all__ = [
    "JSON",
    "RECORDS",
    "STATE",
    "LimitStatus",
    "VendorState",
    "WindowLimiter",
    "parse_datetime",
    "vendor_app",
]

JSON = dict[str, Any]
T = TypeVar("T")
#: ``(seed, deal) -> (record as listed, record as fetched by id)``.
Renderer = Callable[[int, Deal], tuple[JSON, JSON]]

#: Placeholder for the records in a body given to :meth:`VendorState.list_response`.
RECORDS: Final = "\x00close-opps-sandbox-records\x00"
_RECORDS_JSON: Final = json.dumps(RECORDS)
#: What an unlimited limiter reports (the header is always present).
_NOMINAL_LIMIT: Final = 1000


@attrs.frozen(kw_only=True)
class LimitStatus:
    """The limiter's verdict on one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_in: float
    reset_at: float


class WindowLimiter:
    """Fixed windows aligned on multiples of ``window`` of ``clock()``, counted per key."""

    def __init__(self, policy: RateLimitPolicy | None, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self._counts: dict[str, tuple[int, int]] = {}

    def reset(self) -> None:
        """Forget every count."""
        self._counts.clear()

    def hit(self, key: str) -> LimitStatus:
        """Count one request of ``key`` and say whether it is allowed."""
        now = self.clock()
        policy = self.policy or RateLimitPolicy(limit=_NOMINAL_LIMIT, window=1.0)
        window = math.floor(now / policy.window)
        reset_at = (window + 1) * policy.window
        if self.policy is None:
            return LimitStatus(
                allowed=True,
                limit=_NOMINAL_LIMIT,
                remaining=_NOMINAL_LIMIT,
                reset_in=reset_at - now,
                reset_at=reset_at,
            )
        seen_window, count = self._counts.get(key, (window, 0))
        if seen_window != window:
            count = 0
        count += 1
        self._counts[key] = (window, count)
        return LimitStatus(
            allowed=count <= policy.limit,
            limit=policy.limit,
            remaining=max(0, policy.limit - count),
            reset_in=max(0.0, reset_at - now),
            reset_at=reset_at,
        )


class VendorState:
    """One vendor's served data and machinery (kept in the app under :data:`STATE`).

    ``records`` are the records as the list endpoint serves them, in seed order;
    ``details`` maps an id to the record as ``get`` serves it. Tests may change the data
    with :meth:`touch`, :meth:`update` and :meth:`remove`.
    """

    def __init__(
        self,
        *,
        vendor: str,
        api_key: str,
        seed: int,
        deals: list[Deal],
        render: Renderer,
        faults: FaultInjector,
        limiter: WindowLimiter,
        options: Any,
    ) -> None:
        self.vendor = vendor
        self.api_key = api_key
        self.seed = seed
        self.render = render
        self.faults = faults
        self.limiter = limiter
        self.options = options
        self.version = 0
        self.deals: list[Deal] = []
        self.records: list[JSON] = []
        self.details: dict[str, JSON] = {}
        self._positions: dict[str, int] = {}
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._encoded: dict[str, str] = {}
        for deal in deals:
            listed, detail = render(seed, deal)
            self._positions[listed["id"]] = len(self.records)
            self.deals.append(deal)
            self.records.append(listed)
            self.details[listed["id"]] = detail

    # -- reading

    def get(self, record_id: str) -> JSON | None:
        """The record as ``get`` serves it, or ``None``."""
        return self.details.get(record_id)

    def deal(self, record_id: str) -> Deal:
        """The seeded deal behind a record id (``KeyError`` if unknown)."""
        return self.deals[self._positions[record_id]]

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, memoised per data version (a small LRU)."""
        full_key = (self.version, key)
        if full_key in self._cache:
            self._cache.move_to_end(full_key)
            return cast("T", self._cache[full_key])
        value = compute()
        self._cache[full_key] = value
        while len(self._cache) > 64:
            self._cache.popitem(last=False)
        return value

    def list_response(self, body: JSON, records: list[JSON]) -> web.Response:
        """``body`` as JSON with ``records`` (listed records) spliced in where ``body`` holds
        :data:`RECORDS`; each record is serialised once per data version."""
        encoded = self._encoded
        parts = []
        for record in records:
            key = record["id"]
            text = encoded.get(key)
            if text is None:
                text = encoded[key] = json.dumps(record)
            parts.append(text)
        text = json.dumps(body).replace(_RECORDS_JSON, "[" + ", ".join(parts) + "]", 1)
        return web.Response(text=text, content_type="application/json")

    # -- changing

    def update(self, record_id: str, **changes: Any) -> JSON:
        """Change fields of the deal behind ``record_id`` (``attrs.evolve``) and re-render it.

        Returns the record as listed. The id stays the same.
        """
        position = self._positions[record_id]
        deal = attrs.evolve(self.deals[position], **changes)
        listed, detail = self.render(self.seed, deal)
        self.deals[position] = deal
        self.records[position] = listed
        self.details[record_id] = detail
        self._bump()
        return listed

    def touch(self, record_id: str, at: datetime) -> JSON:
        """Set the record's update time to ``at`` (aware), as an edit in the CRM would."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        return self.update(record_id, updated_at=at.astimezone(UTC))

    def share_timestamp(
        self,
        at: datetime,
        record_ids: Iterable[str] | None = None,
        *,
        created: bool = True,
        updated: bool = True,
    ) -> None:
        """Seed ties: give the records (default: all) one creation and/or update time ``at``.

        Data seeding, not an edit: nothing is logged (Close's event log included). Real
        accounts have such ties (a data migration gives every record one ``updated_at``).
        """
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        moment = at.astimezone(UTC)
        changes: dict[str, Any] = {}
        if created:
            changes["created_at"] = moment
        if updated:
            changes["updated_at"] = moment
        chosen = list(self._positions) if record_ids is None else list(record_ids)
        for record_id in chosen:
            position = self._positions[record_id]
            deal = attrs.evolve(self.deals[position], **changes)
            listed, detail = self.render(self.seed, deal)
            self.deals[position] = deal
            self.records[position] = listed
            self.details[record_id] = detail
        self._bump()

    def remove(self, record_id: str) -> None:
        """Delete the record: it is no longer listed, and ``get`` answers 404."""
        position = self._positions.pop(record_id)
        del self.deals[position]
        del self.records[position]
        del self.details[record_id]
        for key, value in self._positions.items():
            if value > position:
                self._positions[key] = value - 1
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._cache.clear()
        self._encoded.clear()


#: Where each app keeps its state.
STATE: Final = web.AppKey("close_opps_sandbox_state", VendorState)


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 date or date-time (``Z`` allowed); naive values are taken as UTC."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def wall_clock() -> float:
    """Unix time (only the Getraze ``X-RateLimit-Reset`` header needs the wall clock)."""
    return time.time()


def monotonic_clock() -> float:
    """A monotonic clock for windows that are reported relative to now."""
    return time.monotonic()


def vendor_app(
    vendor: str,
    options: Any,
    *,
    seed: int,
    render: Renderer,
    limiter: WindowLimiter,
    fault_renderer: FaultRenderer,
    middleware: Any,
) -> web.Application:
    """What every emulator app shares: its state, faults and middlewares (routes are its own).

    ``options.seed`` and ``options.records``, when set, win over ``seed`` and the default
    record count.
    """
    seed = options.seed if options.seed is not None else seed
    count = options.records if options.records is not None else DEFAULT_RECORDS
    faults = FaultInjector(fault_renderer, config=options.faults, latency=options.latency or 0.0)
    app = web.Application(middlewares=[fault_middleware, middleware])
    app[FAULTS] = faults
    app[STATE] = VendorState(
        vendor=vendor,
        api_key=options.api_key,
        seed=seed,
        deals=generate_deals(seed, count, today=options.today),
        render=render,
        faults=faults,
        limiter=limiter,
        options=options,
    )
    return app
