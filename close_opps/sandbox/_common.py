"""What the three vendor apps share: the served records, the limiter, small helpers."""

from __future__ import annotations

import bisect
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar, cast

import attrs
from aiohttp import web

from ._data import Deal, companies, generate_deals, new_deal
from ._events import EventLog
from ._faults import FAULTS, FaultInjector, FaultRenderer, fault_middleware
from ._options import DEFAULT_RECORDS, RateLimitPolicy

__all__ = [
    "JSON",
    "RECORDS",
    "STATE",
    "Clock",
    "LimitStatus",
    "VendorState",
    "WindowLimiter",
    "parse_datetime",
    "vendor_app",
    "wall_now",
]

JSON = dict[str, Any]
T = TypeVar("T")
#: A clock: the current time, aware.
Clock = Callable[[], datetime]
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


def wall_now() -> datetime:
    """The current time, aware UTC (the default :data:`Clock`)."""
    return datetime.now(UTC)


class Desc:
    """A sort-key part that orders descending (inside an ascending key tuple)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and bool(self.value == other.value)

    def __lt__(self, other: Desc) -> bool:
        return bool(other.value < self.value)

    def __gt__(self, other: Desc) -> bool:
        return bool(other.value > self.value)

    __hash__ = None  # type: ignore[assignment]


#: Sorts after every record id: ``(key, _TOP)`` bounds the run of ``key``.
_TOP: Final = "\U0010ffff"
#: ``(deal, record as listed)``: what a view sees of a record.
Entry = tuple[Deal, JSON]


class Tally(Protocol):
    """Totals a :class:`SortedView` keeps up to date with its records."""

    def add(self, entry: Entry) -> None:
        """Count a record in."""

    def remove(self, entry: Entry) -> None:
        """Count a record out."""


class SortedView:
    """The records matching ``match``, ordered by ``(key, id)``: an index, as a real
    server's. Built once, then kept up to date by each change (a bisect and a list insert
    or delete), so a listing read while the data changes costs the same per page.
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        *,
        key: Callable[[Entry], Any],
        match: Callable[[Entry], bool] | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.key = key
        self.match = match
        self.tally = tally
        chosen = [e for e in entries if match is None or match(e)]
        keyed = sorted(((key(e), str(e[1]["id"])), e[1]) for e in chosen)
        self.keys: list[tuple[Any, str]] = [k for k, _record in keyed]
        self.records: list[JSON] = [record for _k, record in keyed]
        if tally is not None:
            for entry in chosen:
                tally.add(entry)

    def __len__(self) -> int:
        return len(self.records)

    def discard(self, entry: Entry) -> None:
        """Forget a record (as it was)."""
        if self.match is not None and not self.match(entry):
            return
        wanted = (self.key(entry), str(entry[1]["id"]))
        position = bisect.bisect_left(self.keys, wanted)
        if position < len(self.keys) and self.keys[position] == wanted:
            del self.keys[position]
            del self.records[position]
            if self.tally is not None:
                self.tally.remove(entry)

    def insert(self, entry: Entry) -> None:
        """Take a record in (as it is now), if it matches."""
        if self.match is not None and not self.match(entry):
            return
        wanted = (self.key(entry), str(entry[1]["id"]))
        position = bisect.bisect_left(self.keys, wanted)
        self.keys.insert(position, wanted)
        self.records.insert(position, entry[1])
        if self.tally is not None:
            self.tally.add(entry)

    def run(self, position: int) -> tuple[int, int]:
        """``(start, end)`` of the records sharing the sort key of ``records[position]``."""
        key = self.keys[position][0]
        start = bisect.bisect_left(self.keys, (key,))
        return start, bisect.bisect_left(self.keys, (key, _TOP), lo=start)


class VendorState:
    """One vendor's served data and machinery (kept in the app under :data:`STATE`).

    ``records`` are the records as the list endpoint serves them, in seed order (records
    created later at the end); ``details`` maps an id to the record as ``get`` serves it.
    Tests change the data with :meth:`create`, :meth:`edit`, :meth:`update`,
    :meth:`touch` and :meth:`remove`; for Close, each change is logged in :attr:`events`.
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
        clock: Clock = wall_now,
        events: EventLog | None = None,
        base_path: str = "",
    ) -> None:
        self.vendor = vendor
        self.api_key = api_key
        self.seed = seed
        self.render = render
        self.faults = faults
        self.limiter = limiter
        self.options = options
        self.version = 0
        #: The time edits are dated with (and Close's event log uses).
        self.clock = clock
        #: Close's event log (``None`` for vendors without one).
        self.events = events
        self.base_path = base_path
        #: Close leads deleted while the sandbox runs (no record may point at them).
        self.deleted_leads: set[str] = set()
        #: id -> (deal, record as listed), in seed order then creation order. A change
        #: replaces the value in place (O(1)); the lists below are built once per version.
        self._rows: dict[str, tuple[Deal, JSON]] = {}
        self.details: dict[str, JSON] = {}
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        #: Sorted views kept up to date across changes (a small LRU).
        self._views: OrderedDict[Hashable, SortedView] = OrderedDict()
        #: (kind, id) -> (the record it was derived from, the derived value).
        self._derived: dict[tuple[str, str], tuple[JSON, Any]] = {}
        self._kinds: set[str] = set()
        for deal in deals:
            listed, detail = render(seed, deal)
            self._rows[listed["id"]] = (deal, listed)
            self.details[listed["id"]] = detail
        self._next_index = max((deal.index for deal in deals), default=-1) + 1

    # -- reading

    @property
    def records(self) -> list[JSON]:
        """The records as the list endpoint serves them, in seed order (then creation order)."""
        return self.cached("records", lambda: [listed for _deal, listed in self._rows.values()])

    @property
    def deals(self) -> list[Deal]:
        """The deals behind :attr:`records`, in the same order."""
        return self.cached("deals", lambda: [deal for deal, _listed in self._rows.values()])

    def get(self, record_id: str) -> JSON | None:
        """The record as ``get`` serves it, or ``None``."""
        return self.details.get(record_id)

    def deal(self, record_id: str) -> Deal:
        """The seeded deal behind a record id (``KeyError`` if unknown)."""
        return self._rows[record_id][0]

    def derived(self, kind: str, record: JSON, compute: Callable[[JSON], T]) -> T:
        """``compute(record)``, memoised per record as long as the record is unchanged (a
        change replaces the record object), so a change costs O(1) recomputations."""
        key = (kind, str(record["id"]))
        entry = self._derived.get(key)
        if entry is not None and entry[0] is record:
            return cast("T", entry[1])
        value = compute(record)
        self._kinds.add(kind)
        self._derived[key] = (record, value)
        return value

    def entries(self) -> list[Entry]:
        """``(deal, record as listed)`` of every record, in :attr:`records` order."""
        return self.cached("entries", lambda: list(self._rows.values()))

    def view(self, key: Hashable, build: Callable[[], SortedView]) -> SortedView:
        """The sorted view ``key``, built by ``build()`` the first time and then kept up to
        date by every change (never rebuilt while it stays among the last 32 used)."""
        found = self._views.get(key)
        if found is not None:
            self._views.move_to_end(key)
            return found
        made = self._views[key] = build()
        while len(self._views) > 32:
            self._views.popitem(last=False)
        return made

    def _changed(self, old: Entry | None, new: Entry | None) -> None:
        for view in self._views.values():
            if old is not None:
                view.discard(old)
            if new is not None:
                view.insert(new)

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
        :data:`RECORDS`; each record is serialised once (until it changes)."""
        parts = [self.derived("json", record, json.dumps) for record in records]
        text = json.dumps(body).replace(_RECORDS_JSON, "[" + ", ".join(parts) + "]", 1)
        return web.Response(text=text, content_type="application/json")

    # -- changing (each change of a Close record lands in its event log)

    def create(self, **fields: Any) -> JSON:
        """Add a record, as a user creating it in the CRM now (:attr:`clock`).

        ``fields`` are :class:`Deal` fields overriding the generated ones (its ``company``
        is Close's lead). Returns the record as listed; its id is new.
        """
        if "index" in fields:
            raise ValueError("the index of a new deal is chosen by the sandbox")
        deal = new_deal(self.seed, self.take_index(), self.now())
        if fields:
            deal = attrs.evolve(deal, **fields)
        if "company" not in fields and self.deleted_leads:
            deal = self._on_a_live_lead(deal)
        listed, detail = self.add(deal)
        if self.events is not None:
            request = self.events.request("POST", f"{self.base_path}/opportunity/")
            self.events.opportunity_created(detail, request)
        return listed

    def _on_a_live_lead(self, deal: Deal) -> Deal:
        """``deal``, moved to the next company whose Close lead was not deleted."""
        everyone = companies(self.seed)
        start = deal.company.index
        for step in range(len(everyone)):
            candidate = attrs.evolve(deal, company=everyone[(start + step) % len(everyone)])
            if self.render(self.seed, candidate)[0].get("lead_id") not in self.deleted_leads:
                return candidate
        raise ValueError("every lead was deleted: pass company= to create()")

    def edit(self, record_id: str, **changes: Any) -> JSON:
        """Change fields of a record as a user editing it in the CRM now: like
        :meth:`update`, with the update time set to :attr:`clock`'s now unless given."""
        changes.setdefault("updated_at", self.now())
        return self.update(record_id, **changes)

    def update(self, record_id: str, **changes: Any) -> JSON:
        """Change fields of the deal behind ``record_id`` (``attrs.evolve``) and re-render it.

        Returns the record as listed. The id stays the same; the update time changes only
        if ``changes`` says so (see :meth:`edit`).
        """
        before, after = self.replace_deal(record_id, **changes)
        if self.events is not None:
            path = f"{self.base_path}/opportunity/{record_id}/"
            self.events.opportunity_updated(before, after, self.events.request("PUT", path))
        return self._rows[record_id][1]

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
        chosen = list(self._rows) if record_ids is None else list(record_ids)
        for record_id in chosen:
            self.replace_deal(record_id, bump=False, **changes)
        self._views.clear()  # a bulk change: rebuilt on the next read
        self._bump()

    def remove(self, record_id: str) -> None:
        """Delete the record: it is no longer listed, and ``get`` answers 404."""
        before = self.drop(record_id)
        if self.events is not None:
            path = f"{self.base_path}/opportunity/{record_id}/"
            self.events.opportunity_deleted(before, self.events.request("DELETE", path))

    def delete(self, record_id: str) -> None:
        """Delete the record (the same as :meth:`remove`)."""
        self.remove(record_id)

    # -- the primitives (no event)

    def now(self) -> datetime:
        """The clock's time (aware UTC), at millisecond precision as the vendors keep it."""
        moment = self.clock().astimezone(UTC)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def take_index(self) -> int:
        """A deal index no record has had (ids derive from it)."""
        index = self._next_index
        self._next_index += 1
        return index

    def add(self, deal: Deal) -> tuple[JSON, JSON]:
        """Serve a new deal (its index from :meth:`take_index`); ``(listed, detail)``."""
        listed, detail = self.render(self.seed, deal)
        if listed["id"] in self._rows:
            raise ValueError(f"a record with id {listed['id']} exists")
        self._check_lead(listed)
        self._rows[listed["id"]] = (deal, listed)
        self.details[listed["id"]] = detail
        self._changed(None, (deal, listed))
        self._bump()
        return listed, detail

    def replace_deal(
        self, record_id: str, *, bump: bool = True, **changes: Any
    ) -> tuple[JSON, JSON]:
        """Evolve the deal behind ``record_id``; ``(detail before, detail after)``."""
        old = self._rows[record_id]
        deal = attrs.evolve(old[0], **changes)
        listed, detail = self.render(self.seed, deal)
        self._check_lead(listed)
        before = self.details[record_id]
        self._rows[record_id] = (deal, listed)
        self.details[record_id] = detail
        if bump:
            self._changed(old, (deal, listed))
            self._bump()
        return before, detail

    def drop(self, record_id: str) -> JSON:
        """Drop the record; its detail as it was."""
        old = self._rows.pop(record_id)
        before = self.details.pop(record_id)
        self._changed(old, None)
        for kind in self._kinds:
            self._derived.pop((kind, record_id), None)
        self._bump()
        return before

    def _check_lead(self, listed: JSON) -> None:
        lead_id = listed.get("lead_id")
        if lead_id is not None and lead_id in self.deleted_leads:
            raise ValueError(f"lead {lead_id} was deleted")

    def _bump(self) -> None:
        self.version += 1
        self._cache.clear()


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
    events: Callable[[int, Clock], EventLog] | None = None,
    base_path: str = "",
) -> web.Application:
    """What every emulator app shares: its state, faults and middlewares (routes are its own).

    ``options.seed`` and ``options.records``, when set, win over ``seed`` and the default
    record count; ``options.clock`` (default: the wall clock) dates edits. ``events``
    builds the vendor's event log from the seed and the clock.
    """
    seed = options.seed if options.seed is not None else seed
    count = options.records if options.records is not None else DEFAULT_RECORDS
    faults = FaultInjector(fault_renderer, config=options.faults, latency=options.latency or 0.0)
    app = web.Application(middlewares=[fault_middleware, middleware])
    app[FAULTS] = faults
    clock: Clock = options.clock if options.clock is not None else wall_now
    app[STATE] = VendorState(
        vendor=vendor,
        api_key=options.api_key,
        seed=seed,
        deals=generate_deals(seed, count, today=options.today),
        render=render,
        faults=faults,
        limiter=limiter,
        options=options,
        clock=clock,
        events=events(seed, clock) if events is not None else None,
        base_path=base_path,
    )
    return app
