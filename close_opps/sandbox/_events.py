"""Close's event log, as the emulator keeps and serves it (``GET /api/v1/event/``).

Facts from ``close-events-and-webhooks.md`` (section 1): events are kept 30 days, listed
newest first by ``date_updated`` in cursor pages of at most 50; quick successive changes of
one object are consolidated into one event (same ``id``, newer ``date_updated``,
``previous_data`` holding the state before the first change); only some filter
combinations are allowed; deletes carry ``data`` null (or ``{}``) and the whole object in
``previous_data``; a deleted lead logs a deletion per opportunity; non-admin keys lose
``data`` on events over an hour old.

Where the docs leave a choice open, the emulator's answer is documented in
``docs/sandbox.md`` ("Where the vendor docs were ambiguous").
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import attrs

from ._data import close_id

__all__ = [
    "ALLOWED_FILTERS",
    "EVENT_FILTERS",
    "EventListener",
    "EventLog",
    "EventQuery",
    "InvalidEventQuery",
    "ManualClock",
    "event_timestamp",
]

JSON = dict[str, Any]
#: Called with each event (a copy) as it is logged, and again when it is consolidated;
#: what it returns is ignored.
EventListener = Callable[[JSON], object]

#: The filters ``GET /event/`` understands (``date_updated__*`` aside).
EVENT_FILTERS: Final = ("object_type", "object_id", "action", "lead_id", "user_id", "request_id")
#: The filter combinations Close allows (docs 1.3); ``date_updated`` may join any of them,
#: and the unfiltered log (only ``date_updated``) is what tap-closeio and Airbyte read.
ALLOWED_FILTERS: Final = frozenset(
    frozenset(names)
    for names in (
        (),
        ("object_type", "object_id"),
        ("object_type", "action"),
        ("object_id", "action"),
        ("lead_id", "object_type"),
        ("lead_id", "object_type", "action"),
        ("lead_id", "user_id", "object_type"),
        ("lead_id", "user_id", "object_type", "action"),
        ("lead_id", "user_id"),
        ("user_id", "object_id"),
        ("user_id", "object_id", "action"),
        ("user_id", "object_type"),
        ("user_id", "object_type", "action"),
        ("lead_id",),
        ("user_id",),
        ("request_id",),
    )
)
_DATE_OPS: Final[Mapping[str, Callable[[datetime, datetime], bool]]] = {
    "date_updated__gte": lambda a, b: a >= b,
    "date_updated__gt": lambda a, b: a > b,
    "date_updated__lte": lambda a, b: a <= b,
    "date_updated__lt": lambda a, b: a < b,
}
#: Fields whose change alone fires no ``opportunity`` ``updated`` event (docs 1.7: the
#: currency is an organisation-wide setting; ``value_formatted`` follows it).
_OFFSET_SPACE: Final = re.compile(r" (\d{2}:?\d{2})$")
_SILENT_FIELDS: Final = frozenset({"value_currency", "value_formatted"})


def event_timestamp(moment: datetime) -> str:
    """An event's ``date_created``/``date_updated``: UTC, no offset, milliseconds
    (``2024-06-14T05:25:00.310000``), as in every example of Close's."""
    moment = moment.astimezone(UTC)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def _milliseconds(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class ManualClock:
    """A clock a test moves by hand: ``clock()`` is the current (aware, UTC) time.

    Pass it as ``Sandbox(clock=...)`` (or an options' ``clock``) to age the Close event log,
    or to date edits, without sleeping. It starts at ``start`` (default: the current time,
    as the seeded data is dated relative to today; with an earlier ``start``, pass the
    Sandbox a matching ``today`` so that edits are newer than the seeded records).
    """

    def __init__(self, start: datetime | None = None) -> None:
        # default: now, like the seeded data (dated relative to today), so edits are newer
        start = start if start is not None else datetime.now(UTC)
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.now = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, /, **parts: float) -> datetime:
        """Move forward by ``delta`` (or ``timedelta(**parts)``); returns the new time."""
        step = delta if delta is not None else timedelta(**parts)
        if step < timedelta(0):
            raise ValueError("a clock does not go back; use set()")
        self.now += step
        return self.now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (aware)."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        self.now = at.astimezone(UTC)

    def __repr__(self) -> str:
        return f"<ManualClock {self.now.isoformat()}>"


class InvalidEventQuery(Exception):
    """A ``GET /event/`` the emulator answers 400 (the body is Close's ``{"error": ...}``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen(kw_only=True)
class EventQuery:
    """One ``GET /event/`` request, parsed."""

    filters: Mapping[str, str]
    dates: Mapping[str, datetime]
    limit: int
    cursor: str | None

    @classmethod
    def parse(cls, query: Mapping[str, str], *, max_limit: int) -> EventQuery:
        """Read the query string; raises :class:`InvalidEventQuery` for what Close refuses."""
        if "_skip" in query:
            raise InvalidEventQuery("_skip is not supported for events; page with _cursor.")
        raw_limit = query.get("_limit", "")
        try:
            limit = int(raw_limit) if raw_limit.strip() else max_limit
        except ValueError:
            raise InvalidEventQuery("_limit must be an integer.") from None
        if limit < 1:
            raise InvalidEventQuery("_limit must be greater than 0.")
        if limit > max_limit:
            raise InvalidEventQuery(
                "The limit you set is larger than the maximum limit for this resource "
                f"(max_limit = {max_limit}). Please refine your search query."
            )
        filters = {name: query[name] for name in EVENT_FILTERS if query.get(name, "") != ""}
        if frozenset(filters) not in ALLOWED_FILTERS:
            names = ", ".join(sorted(filters))
            raise InvalidEventQuery(
                f"Unsupported combination of filters: {names}. See the list of allowed "
                "filter combinations in the event log documentation."
            )
        dates: dict[str, datetime] = {}
        for name in _DATE_OPS:
            text = query.get(name, "")
            if text:
                try:
                    # an unencoded "+" of an offset arrives as a space
                    value = datetime.fromisoformat(_OFFSET_SPACE.sub(r"+\1", text.strip()))
                except ValueError:
                    raise InvalidEventQuery(f"{name}: not a valid date/time.") from None
                value = value if value.tzinfo else value.replace(tzinfo=UTC)
                dates[name] = value.astimezone(UTC)
        cursor = query.get("_cursor") or None
        return cls(filters=filters, dates=dates, limit=limit, cursor=cursor)

    def digest(self) -> str:
        """What a cursor is bound to: the filters other than ``date_updated``."""
        text = json.dumps(sorted(self.filters.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def matches(self, event: JSON, updated: datetime) -> bool:
        """Whether ``event`` (logged at ``updated``) is selected."""
        for name, wanted in self.filters.items():
            if event.get(name) != wanted:
                return False
        return all(_DATE_OPS[name](updated, bound) for name, bound in self.dates.items())


@attrs.frozen(kw_only=True)
class _Cursor:
    direction: Literal["older", "newer"]
    #: ``(date_updated, sequence)`` of the event the page starts after.
    key: tuple[datetime, int]
    digest: str
    dates: Mapping[str, datetime]

    def encode(self) -> str:
        payload = {
            "v": 1,
            "d": self.direction,
            "k": [self.key[0].isoformat(), self.key[1]],
            "f": self.digest,
            "b": {name: value.isoformat() for name, value in self.dates.items()},
        }
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> _Cursor:
        try:
            padded = text + "=" * (-len(text) % 4)
            payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
            direction = payload["d"]
            if direction not in ("older", "newer"):
                raise ValueError(direction)
            return cls(
                direction=direction,
                key=(datetime.fromisoformat(payload["k"][0]), int(payload["k"][1])),
                digest=str(payload["f"]),
                dates={k: datetime.fromisoformat(v) for k, v in payload["b"].items()},
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error):
            raise InvalidEventQuery("Invalid cursor.") from None


@attrs.frozen(kw_only=True)
class Request:
    """The API request a change belongs to: its id and the event ``meta``."""

    request_id: str
    meta: JSON


class EventLog:
    """The events of one Close organisation, oldest first, with consolidation and retention.

    ``listeners`` are called with a copy of each event as it is logged (and again, same
    ``id`` and newer ``date_updated``, when a later change is consolidated into it): the
    hook for webhook delivery. ``retention`` is how long events are kept,
    ``consolidation`` how soon after an ``updated`` event's creation another update of the
    same object merges into it. A status change also logs a ``created`` event of a
    status-change activity (``status_change_type``; the docs give two names for it).
    """

    def __init__(
        self,
        *,
        seed: int,
        clock: Callable[[], datetime],
        retention: timedelta = timedelta(days=30),
        consolidation: timedelta = timedelta(seconds=3),
        deleted_data: Literal["null", "empty"] = "null",
        status_change_type: str | None = "status_change.opportunity",
    ) -> None:
        self.seed = seed
        #: The object type of the activity event a status change adds (``None``: none).
        self.status_change_type = status_change_type
        self.clock = clock
        self.retention = retention
        self.consolidation = consolidation
        self.deleted_data = deleted_data
        self.listeners: list[EventListener] = []
        self.organization_id = close_id(seed, "orga", 0)
        self.user_id = close_id(seed, "user", 0)
        self.api_key_id = close_id(seed, "api", 0, length=22)
        #: Every version of the log's content, bumped on each change (for caches).
        self.version = 0
        self._events: dict[str, JSON] = {}
        self._keys: dict[str, tuple[datetime, int]] = {}
        #: ``(date_updated, sequence, id)`` ascending.
        self._order: list[tuple[datetime, int, str]] = []
        self._last: dict[tuple[str, str], str] = {}
        self._sequence = itertools.count(1)
        self._requests = itertools.count(1)

    # -- time

    def now(self) -> datetime:
        """The clock's time, at Close's millisecond precision."""
        return _milliseconds(self.clock())

    # -- writing

    def request(self, method: str, path: str, **meta: Any) -> Request:
        """A new API request: the events it logs share its ``request_id`` and ``meta``."""
        number = next(self._requests)
        return Request(
            request_id=close_id(self.seed, "req", number, length=22),
            meta={"request_method": method, "request_path": path, **meta},
        )

    def opportunity_created(self, record: JSON, request: Request) -> JSON:
        """Log ``opportunity`` ``created``."""
        return self._log("opportunity", record, "created", dict(record), {}, [], request)

    def opportunity_updated(self, before: JSON, after: JSON, request: Request) -> JSON | None:
        """Log ``opportunity`` ``updated`` (consolidated into a recent one when there is one)
        and, for a status change, the status-change activity; ``None`` when nothing that
        fires an event changed."""
        changed = sorted(
            key
            for key in before.keys() | after.keys()
            if before.get(key, _ABSENT) != after.get(key, _ABSENT)
        )
        rest = set(changed) - {"date_updated"}
        if not changed or (rest and rest <= _SILENT_FIELDS):
            return None
        previous = {key: before.get(key) for key in changed}
        event = self._log("opportunity", after, "updated", dict(after), previous, changed, request)
        if self.status_change_type is not None and "status_id" in changed:
            self._status_change(self.status_change_type, before, after, request)
        return event

    def _status_change(self, object_type: str, before: JSON, after: JSON, request: Request) -> None:
        """The status-change activity Close writes beside the opportunity's own event."""
        number = next(self._sequence)
        activity = {
            "id": close_id(self.seed, "acti", number),
            "_type": "OpportunityStatusChange",
            "opportunity_id": after["id"],
            "lead_id": after.get("lead_id"),
            "organization_id": self.organization_id,
            "user_id": self.user_id,
            "old_status_id": before.get("status_id"),
            "old_status_label": before.get("status_label"),
            "old_status_type": before.get("status_type"),
            "new_status_id": after.get("status_id"),
            "new_status_label": after.get("status_label"),
            "new_status_type": after.get("status_type"),
            "date_created": after.get("date_updated"),
        }
        self._log(object_type, activity, "created", activity, {}, [], request)

    def opportunity_deleted(self, before: JSON, request: Request) -> JSON:
        """Log ``opportunity`` ``deleted``: ``data`` null (or ``{}``), the whole object in
        ``previous_data``."""
        data: JSON | None = {} if self.deleted_data == "empty" else None
        return self._log("opportunity", before, "deleted", data, dict(before), [], request)

    def lead_event(
        self,
        action: str,
        lead: JSON,
        request: Request,
        *,
        data: JSON | None = None,
        previous: JSON | None = None,
        changed: Iterable[str] = (),
    ) -> JSON:
        """Log a ``lead`` event (``deleted``, ``merged``, ``updated``)."""
        if action == "deleted":
            data = {} if self.deleted_data == "empty" else None
        return self._log("lead", lead, action, data, previous or {}, sorted(changed), request)

    def _log(
        self,
        object_type: str,
        obj: JSON,
        action: str,
        data: JSON | None,
        previous: JSON,
        changed: list[str],
        request: Request,
    ) -> JSON:
        self.expire()
        now = self.now()
        object_id = str(obj["id"])
        lead_id = obj.get("lead_id") if object_type != "lead" else object_id
        slot = (object_type, object_id)
        recent = self._events.get(self._last.get(slot, ""))
        if (
            action == "updated"
            and recent is not None
            and recent["action"] == "updated"
            and now - _parse(recent["date_created"]) <= self.consolidation
        ):
            event = recent
            for key, value in previous.items():
                event["previous_data"].setdefault(key, value)
            event["changed_fields"] = sorted(set(event["changed_fields"]) | set(changed))
            event["data"] = data
            event["lead_id"] = lead_id
            event["request_id"] = request.request_id
            event["meta"] = dict(request.meta)
            event["date_updated"] = event_timestamp(now)
            self._unindex(event["id"])
        else:
            sequence = next(self._sequence)
            event = {
                "id": close_id(self.seed, "ev", sequence, length=22),
                "date_created": event_timestamp(now),
                "date_updated": event_timestamp(now),
                "organization_id": self.organization_id,
                "user_id": self.user_id,
                "request_id": request.request_id,
                "api_key_id": self.api_key_id,
                "oauth_client_id": None,
                "oauth_scope": None,
                "object_type": object_type,
                "object_id": object_id,
                "lead_id": lead_id,
                "action": action,
                "changed_fields": changed,
                "meta": dict(request.meta),
                "data": data,
                "previous_data": previous,
            }
            self._events[event["id"]] = event
            self._last[slot] = event["id"]
        position = (now, next(self._sequence))
        self._keys[event["id"]] = position
        bisect.insort(self._order, (*position, event["id"]))
        self.version += 1
        for listener in list(self.listeners):
            listener(copy.deepcopy(event))
        return event

    def _unindex(self, event_id: str) -> None:
        updated, sequence = self._keys.pop(event_id)
        position = bisect.bisect_left(self._order, (updated, sequence, event_id))
        del self._order[position]

    def expire(self) -> None:
        """Forget events whose ``date_updated`` is older than the retention."""
        horizon = self.now() - self.retention
        cut = bisect.bisect_left(self._order, (horizon, 0, ""))
        if cut == 0:
            return
        for _updated, _sequence, event_id in self._order[:cut]:
            event = self._events.pop(event_id)
            del self._keys[event_id]
            slot = (event["object_type"], event["object_id"])
            if self._last.get(slot) == event_id:
                del self._last[slot]
        del self._order[:cut]
        self.version += 1

    # -- reading

    def __len__(self) -> int:
        self.expire()
        return len(self._order)

    def events(self) -> list[JSON]:
        """Every event kept, newest first, as an admin key sees them (copies)."""
        self.expire()
        return [copy.deepcopy(self._events[i]) for _u, _s, i in reversed(self._order)]

    def get(self, event_id: str) -> JSON | None:
        """One kept event, or ``None``."""
        self.expire()
        return self._events.get(event_id)

    def age(self, event: JSON) -> timedelta:
        """How long ago ``event`` was last updated."""
        return self.now() - _parse(event["date_updated"])

    def page(self, query: EventQuery) -> tuple[list[JSON], str | None, str | None]:
        """``(events newest first, cursor_next, cursor_previous)`` for one request."""
        self.expire()
        digest = query.digest()
        cursor = _Cursor.decode(query.cursor) if query.cursor else None
        if cursor is not None and cursor.digest != digest:
            raise InvalidEventQuery(
                "Invalid cursor: send the same filters as the request that returned it "
                "(only date_updated may be left out)."
            )
        dates = query.dates if query.dates or cursor is None else cursor.dates
        bounded = attrs.evolve(query, dates=dates)
        order = self._order
        picked: list[tuple[datetime, int, str]] = []
        if cursor is not None and cursor.direction == "newer":
            start = bisect.bisect_right(order, (*cursor.key, "\uffff"))
            for item in order[start:]:
                if bounded.matches(self._events[item[2]], item[0]):
                    picked.append(item)
                    if len(picked) > query.limit:
                        break
            more_newer = len(picked) > query.limit
            picked = picked[: query.limit]
            picked.reverse()
            has_older = True
        else:
            end = len(order)
            if cursor is not None:
                end = bisect.bisect_left(order, (*cursor.key, ""))
            for position in range(end - 1, -1, -1):
                item = order[position]
                if bounded.matches(self._events[item[2]], item[0]):
                    picked.append(item)
                    if len(picked) > query.limit:
                        break
            has_older = len(picked) > query.limit
            picked = picked[: query.limit]
            more_newer = cursor is not None
        events = [self._events[item[2]] for item in picked]

        def make(direction: Literal["older", "newer"], key: tuple[datetime, int]) -> str:
            return _Cursor(direction=direction, key=key, digest=digest, dates=dates).encode()

        cursor_next = make("older", picked[-1][:2]) if picked and has_older else None
        cursor_previous = None
        if more_newer:
            if picked:
                cursor_previous = make("newer", picked[0][:2])
            elif cursor is not None:
                cursor_previous = make("newer", cursor.key)
        return events, cursor_next, cursor_previous


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final = _Absent()


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
