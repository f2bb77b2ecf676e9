"""Close webhooks: verify a delivery's signature, read it as :class:`~close_opps.Change` records,
and receive deliveries with aiohttp, de-duplicated and put in order.

Three layers, each usable alone:

- :func:`verify_close_signature` checks ``close-sig-hash`` (HMAC-SHA256, keyed with the
  hex-decoded signing key, over ``close-sig-timestamp`` followed by the raw body) in constant
  time, and refuses a timestamp too far from now.
- :func:`parse_close_delivery` (pure) turns a verified delivery into the same
  :class:`~close_opps.Change` records the polled change feed yields;
  :func:`read_close_delivery` gives the event's id, time and type as well.
- :class:`ChangeLedger` (pure) decides which changes to apply: it drops duplicates (same event
  id and ``date_updated``), anything older than what was applied for that opportunity, and
  anything after a deletion. :class:`CloseWebhookReceiver` (an aiohttp handler to mount) and
  :func:`close_webhook_app` (a whole app) verify, answer at once, and apply the changes in
  order in a background task that is drained on shutdown.

See ``docs/webhooks.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import inspect
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final

import attrs
from aiohttp import web

from close_opps._decoding import parse_datetime
from close_opps._redact import get_logger
from close_opps.adapters._close_webhooks import (
    DEFAULT_WEBHOOK_EVENTS,
    CreatedWebhook,
    WebhookEvent,
    WebhookStatus,
    WebhookSubscription,
)
from close_opps.adapters.close import close_to_opportunity
from close_opps.changes import Change, ChangeKind
from close_opps.errors import DecodeError, NotFoundError, WebhookSignatureError
from close_opps.http import Secret, load_json
from close_opps.model import Opportunity

__all__ = [
    "DEFAULT_TOLERANCE",
    "DEFAULT_WEBHOOK_EVENTS",
    "HASH_HEADER",
    "RECEIVER",
    "TIMESTAMP_HEADER",
    "ChangeLedger",
    "CloseDelivery",
    "CloseWebhookReceiver",
    "CreatedWebhook",
    "EventDataMissingError",
    "ReceiverStats",
    "Verdict",
    "WebhookEvent",
    "WebhookStatus",
    "WebhookSubscription",
    "close_webhook_app",
    "parse_close_delivery",
    "read_close_delivery",
    "verify_close_signature",
]

logger = get_logger("close_opps.webhooks")

PROVIDER: Final = "close"
#: The header carrying the hex HMAC-SHA256 of timestamp + body.
HASH_HEADER: Final = "close-sig-hash"
#: The header carrying the Unix time (seconds) the delivery was signed.
TIMESTAMP_HEADER: Final = "close-sig-timestamp"
#: Seconds a delivery's timestamp may be away from now, either way.
DEFAULT_TOLERANCE: Final = 300.0
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_UPSERT_ACTIONS: Final = frozenset({"created", "updated"})


# ------------------------------------------------------------------------------ signatures


def _key_bytes(signature_key: str | Secret) -> bytes:
    text = signature_key.reveal() if isinstance(signature_key, Secret) else signature_key
    if not isinstance(text, str):
        raise TypeError("signature_key must be a str or a close_opps.http.Secret")
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""  # the error is raised below, outside this handler: nothing of it chains
    if not key:
        # An empty key would let anyone sign; a malformed one is a configuration error.
        raise ValueError(
            "signature_key must be the hex string Close returned when the subscription was "
            "created (64 hex characters)"
        )
    return key


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name from any mapping (a plain dict included)."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == name:
                value = candidate
                break
    return value if isinstance(value, str) else None


def verify_close_signature(
    signature_key: str | Secret,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check that ``body`` was signed by Close with ``signature_key``; return if it was.

    Args:
        signature_key: the subscription's signing key (hex), as returned once by
            :meth:`CloseAdapter.create_webhook` (a :class:`~close_opps.http.Secret`) or as text.
        headers: the request's headers; names are matched case-insensitively.
        body: the raw request body, exactly as received (never re-serialized JSON).
        tolerance: seconds ``close-sig-timestamp`` may differ from ``now``, in the past or
            the future (a replayed old delivery is refused). ``math.inf`` turns the check off.
        now: the current Unix time (default: ``time.time()``), for tests.

    Raises:
        WebhookSignatureError: a header is missing or malformed, the hash does not match, or
            the timestamp is outside the window. The message never contains the key.
        ValueError: ``signature_key`` is not hex (a configuration error, not a bad delivery).
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be the raw request bytes")
    key = _key_bytes(signature_key)
    signature = _header(headers, HASH_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if signature is None or timestamp is None:
        missing = HASH_HEADER if signature is None else TIMESTAMP_HEADER
        raise WebhookSignatureError(f"the {missing} header is missing", provider=PROVIDER)
    signature, timestamp = signature.strip(), timestamp.strip()
    if not _UNIX_SECONDS.fullmatch(timestamp):
        raise WebhookSignatureError(
            f"the {TIMESTAMP_HEADER} header is not a Unix time in seconds", provider=PROVIDER
        )
    if not _HEX_DIGEST.fullmatch(signature):
        raise WebhookSignatureError(
            f"the {HASH_HEADER} header is not 64 hex characters", provider=PROVIDER
        )
    expected = hmac.new(key, timestamp.encode("ascii") + bytes(body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise WebhookSignatureError(
            "the signature does not match the body (wrong key, or the body or timestamp was "
            "changed)",
            provider=PROVIDER,
        )
    current = time.time() if now is None else now
    skew = current - int(timestamp)
    if abs(skew) > tolerance:
        direction = "old" if skew > 0 else "in the future"
        raise WebhookSignatureError(
            f"the delivery's timestamp is {abs(skew):.0f} s {direction} (allowed: {tolerance:g} s)",
            provider=PROVIDER,
        )


# ------------------------------------------------------------------------------- parsing


class EventDataMissingError(DecodeError):
    """An opportunity ``created``/``updated`` event came without its ``data``.

    Close withholds ``data`` from non-admin keys for events over an hour old; a
    :class:`~close_opps.Change` upsert cannot be made without the record, so the caller must
    fetch it (``await adapter.get(opportunity_id)``; a 404 means it is gone).

    Attributes:
        opportunity_id: the opportunity to fetch.
        event_id: the event's id.
        occurred_at: the event's ``date_updated``.
    """

    def __init__(
        self, message: str, *, opportunity_id: str, event_id: str, occurred_at: datetime
    ) -> None:
        super().__init__(message, provider=PROVIDER, record_id=opportunity_id, path="$.event.data")
        self.opportunity_id = opportunity_id
        self.event_id = event_id
        self.occurred_at = occurred_at


@attrs.frozen(kw_only=True)
class CloseDelivery:
    """One webhook delivery, read.

    Attributes:
        event_id: the event's ``id`` (it stays the same when Close consolidates the event).
        occurred_at: the event's ``date_updated`` (UTC); a consolidated event comes again
            with a later one.
        object_type: ``"opportunity"``, ``"lead"``, ...
        object_id: the object's id (for an opportunity event, the opportunity's).
        action: ``"created"``, ``"updated"``, ``"deleted"``, ...
        lead_id: the lead the object belongs to, when sent.
        subscription_id: the subscription the delivery came through, when sent.
        changes: the :class:`~close_opps.Change` records (empty for other object types, and
            for an opportunity event whose ``data`` is missing, see :attr:`needs_fetch`).
        needs_fetch: an opportunity ``created``/``updated`` came without ``data``: fetch the
            record to know its state.
    """

    event_id: str
    occurred_at: datetime
    object_type: str
    object_id: str | None
    action: str
    lead_id: str | None = None
    subscription_id: str | None = None
    changes: tuple[Change, ...] = ()
    needs_fetch: bool = False


def _load(body: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(body, Mapping):
        return body
    try:  # the SDK's one JSON reader: no deep nesting, huge integers or lone surrogates
        return load_json(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"the delivery body is not JSON ({type(exc).__name__})", provider=PROVIDER, path="$"
        ) from None


def _required(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        got = "missing" if key not in obj else f"got {type(value).__name__}"
        raise DecodeError(f"expected a non-empty string ({got})", provider=PROVIDER, path=path)
    return value


def read_close_delivery(body: bytes | str | Mapping[str, Any]) -> CloseDelivery:
    """Read a verified delivery (``{"event": {...}, "subscription_id": "whsub_..."}``).

    Pure: no I/O. ``body`` is the raw body (bytes or text) or the decoded JSON. An
    opportunity ``created``/``updated`` event gives an upsert carrying the decoded
    :class:`~close_opps.Opportunity` (keyed on ``object_id``, which wins over ``data.id`` when
    they differ, as in a Close docs example); ``deleted`` (including a deletion cascaded
    from a lead) gives a delete. Other object types and actions give no change.

    Raises:
        DecodeError: the body is malformed; ``path`` names the field (``$.event.action``).
    """
    payload = _load(body)
    if not isinstance(payload, Mapping):
        raise DecodeError(
            f"expected an object, got {type(payload).__name__}", provider=PROVIDER, path="$"
        )
    event = payload.get("event")
    if not isinstance(event, Mapping):
        raise DecodeError(
            "expected the event object" if event is None else "expected an object",
            provider=PROVIDER,
            path="$.event",
        )
    subscription_id = payload.get("subscription_id")
    event_id = _required(event, "id", "$.event.id")
    object_type = _required(event, "object_type", "$.event.object_type")
    action = _required(event, "action", "$.event.action")
    raw_date = event.get("date_updated")
    try:
        occurred_at = parse_datetime(raw_date)
    except (TypeError, ValueError):
        raise DecodeError(
            f"expected an ISO 8601 timestamp, got {raw_date!r:.60}",
            provider=PROVIDER,
            path="$.event.date_updated",
        ) from None
    is_opportunity = object_type == "opportunity"
    object_id = (
        _required(event, "object_id", "$.event.object_id")
        if is_opportunity
        else (event.get("object_id") if isinstance(event.get("object_id"), str) else None)
    )
    lead_id = event.get("lead_id")
    delivery = CloseDelivery(
        event_id=event_id,
        occurred_at=occurred_at,
        object_type=object_type,
        object_id=object_id,
        action=action,
        lead_id=lead_id if isinstance(lead_id, str) else None,
        subscription_id=subscription_id if isinstance(subscription_id, str) else None,
    )
    if not is_opportunity or object_id is None:
        return delivery
    if action == "deleted":
        # data is null (docs) or {} (seen in 2024 payloads); the id is object_id either way.
        change = Change.delete(PROVIDER, object_id, occurred_at=occurred_at)
        return attrs.evolve(delivery, changes=(change,))
    if action not in _UPSERT_ACTIONS:
        logger.debug("close: opportunity event %s with action %r: no change", event_id, action)
        return delivery
    data = event.get("data")
    if data is None or (isinstance(data, Mapping) and not data):
        return attrs.evolve(delivery, needs_fetch=True)
    if not isinstance(data, Mapping):
        raise DecodeError(
            f"expected an object, got {type(data).__name__}",
            provider=PROVIDER,
            record_id=object_id,
            path="$.event.data",
        )
    if data.get("id") != object_id:
        logger.warning(
            "close: event %s: data.id %r differs from object_id %r; keyed on object_id",
            event_id,
            data.get("id"),
            object_id,
        )
        data = {**data, "id": object_id}
    opportunity = close_to_opportunity(data, path="$.event.data")
    return attrs.evolve(delivery, changes=(Change.upsert(opportunity, occurred_at=occurred_at),))


def parse_close_delivery(body: bytes | str | Mapping[str, Any]) -> list[Change]:
    """A verified delivery as :class:`~close_opps.Change` records (pure, no I/O).

    An opportunity created or updated: one upsert carrying the decoded
    :class:`~close_opps.Opportunity`. Deleted (directly or cascaded from a lead): one delete.
    Other object types (leads, activities, ...) and other actions: an empty list.

    Raises:
        EventDataMissingError: an opportunity created/updated event without ``data``; the
            error names the opportunity to fetch (a change cannot be made up without it).
        DecodeError: the body is malformed; ``path`` names the field.
    """
    delivery = read_close_delivery(body)
    if delivery.needs_fetch:
        assert delivery.object_id is not None
        raise EventDataMissingError(
            f"the {delivery.action} event {delivery.event_id} carries no data: fetch the "
            f"opportunity {delivery.object_id}",
            opportunity_id=delivery.object_id,
            event_id=delivery.event_id,
            occurred_at=delivery.occurred_at,
        )
    return list(delivery.changes)


# ------------------------------------------------------------------------ ordering, dedupe


class Verdict(enum.StrEnum):
    """What :class:`ChangeLedger` says about one change."""

    APPLY = "apply"
    #: The same event (id and ``date_updated``) was already applied.
    DUPLICATE = "duplicate"
    #: A newer state of the opportunity was already applied.
    STALE = "stale"
    #: The opportunity was deleted; nothing brings it back.
    DELETED = "deleted"


@attrs.frozen
class _Seen:
    #: (event time, 1 for a delete / 0 for an upsert, the record's own updated_at)
    key: tuple[datetime, int, datetime]
    deleted: bool


def _order_key(change: Change, occurred_at: datetime) -> tuple[datetime, int, datetime]:
    # A change may know better than its event when its state dates from (a record fetched
    # because the event had no data is the state at fetch time).
    when = max(occurred_at, change.occurred_at) if change.occurred_at else occurred_at
    record_time = change.opportunity.updated_at if change.opportunity else when
    return (when, int(change.kind is ChangeKind.DELETE), record_time)


class ChangeLedger:
    """Which changes to apply, so that duplicates and late deliveries never undo newer state.

    Pure (no I/O, no clock): call :meth:`decide`, apply the change if it says
    :attr:`Verdict.APPLY`, then :meth:`record` it (a change that failed to apply is not
    recorded, so a redelivery can still apply it).

    Rules, per opportunity (``provider``, ``id``):

    - an event already applied (same event id and ``date_updated``) is a duplicate;
    - a change is applied only if it is newer than the last applied one, ordered by the
      event's ``date_updated``, then delete after upsert, then the record's ``updated_at``;
    - a deletion is final: no later upsert revives the record (Close never reuses ids).

    Memory is bounded: at most ``max_events`` event keys and ``max_objects`` opportunities
    are remembered, the least recently used forgotten first (about 200 bytes each: the
    defaults hold well under 50 MB). An event about a forgotten opportunity is applied as if
    first seen, so keep the bounds above the number of opportunities that change within
    Close's retry horizon (72 h), and run a periodic ``changes()``/``sync`` to repair.
    """

    def __init__(self, *, max_events: int = 100_000, max_objects: int = 100_000) -> None:
        if max_events < 1 or max_objects < 1:
            raise ValueError("max_events and max_objects must be at least 1")
        self.max_events = max_events
        self.max_objects = max_objects
        self._events: OrderedDict[tuple[str, datetime], None] = OrderedDict()
        self._objects: OrderedDict[tuple[str, str], _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._objects)

    def decide(self, change: Change, *, event_id: str, occurred_at: datetime) -> Verdict:
        """Whether ``change`` (from event ``event_id`` at ``occurred_at``) should be applied."""
        if (event_id, occurred_at) in self._events:
            return Verdict.DUPLICATE
        seen = self._objects.get((change.provider, change.id))
        if seen is None:
            return Verdict.APPLY
        if seen.deleted:
            return Verdict.DELETED
        if _order_key(change, occurred_at) <= seen.key:
            return Verdict.STALE
        return Verdict.APPLY

    def record(self, change: Change, *, event_id: str, occurred_at: datetime) -> None:
        """Remember that ``change`` was applied."""
        self._events[(event_id, occurred_at)] = None
        self._events.move_to_end((event_id, occurred_at))
        while len(self._events) > self.max_events:
            self._events.popitem(last=False)
        key = (change.provider, change.id)
        self._objects[key] = _Seen(
            key=_order_key(change, occurred_at), deleted=change.kind is ChangeKind.DELETE
        )
        self._objects.move_to_end(key)
        while len(self._objects) > self.max_objects:
            self._objects.popitem(last=False)

    def seen_event(self, event_id: str, occurred_at: datetime) -> bool:
        """Whether this event (id and ``date_updated``) was already recorded."""
        return (event_id, occurred_at) in self._events

    def mark_event(self, event_id: str, occurred_at: datetime) -> None:
        """Remember an event that carried no change (so its redeliveries are skipped too)."""
        self._events[(event_id, occurred_at)] = None
        while len(self._events) > self.max_events:
            self._events.popitem(last=False)


# ----------------------------------------------------------------------------- the receiver

#: ``on_change``: a function or coroutine function taking one :class:`Change`.
OnChange = Callable[[Change], Awaitable[None] | None]
#: ``fetch``: e.g. ``adapter.get``; a :class:`NotFoundError` means the record is gone.
Fetch = Callable[[str], Awaitable[Opportunity]]


@attrs.define
class ReceiverStats:
    """Counters of a :class:`CloseWebhookReceiver` (for health checks and tests)."""

    received: int = 0
    rejected: int = 0
    malformed: int = 0
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    after_delete: int = 0
    ignored: int = 0
    fetched: int = 0
    failed: int = 0


class CloseWebhookReceiver:
    """Receives Close deliveries: verifies, answers at once, applies in order in the background.

    ``handle`` is an aiohttp handler to route ``POST`` requests to; :meth:`setup` adds the
    route and the background worker to an app. Each delivery:

    1. is verified (:func:`verify_close_signature`); a bad signature gets **401** and goes no
       further;
    2. is read (:func:`read_close_delivery`); a malformed body gets **400** (Close will retry
       it, so a fixed receiver can still take it);
    3. is queued and answered **200** at once; if ``max_queue`` deliveries are already
       waiting, it gets **503** instead, so Close retries later (nothing is dropped);
    4. is applied by one worker, in arrival order: duplicates, stale and after-delete changes
       are skipped (:class:`ChangeLedger`), the rest go to ``on_change``. An upsert event
       without ``data`` is completed with ``fetch`` (``adapter.get``: a 404 becomes a
       delete); without ``fetch`` it is logged and skipped, for the periodic sync to repair.

    If ``on_change`` raises, the error is logged (never the key or the record) and the change
    is not recorded as applied. On shutdown the queue is drained before the worker stops.
    """

    def __init__(
        self,
        signature_key: str | Secret,
        on_change: OnChange,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        fetch: Fetch | None = None,
        ledger: ChangeLedger | None = None,
        max_queue: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _key_bytes(signature_key)  # a malformed key fails now, not on the first delivery
        self._key = signature_key if isinstance(signature_key, Secret) else Secret(signature_key)
        self._on_change = on_change
        self._fetch = fetch
        self.tolerance = tolerance
        self.ledger = ledger if ledger is not None else ChangeLedger()
        self.stats = ReceiverStats()
        self._clock = clock
        self._max_queue = max_queue
        self._queue: asyncio.Queue[CloseDelivery] | None = None
        self._worker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(signature_key='***', stats={self.stats!r})"

    # -- lifecycle

    async def start(self) -> None:
        """Start the worker (``async with receiver`` or :meth:`setup` does it for you)."""
        if self._worker is not None:
            return
        self._queue = asyncio.Queue(self._max_queue)
        self._worker = asyncio.create_task(self._work(), name="close-webhook-worker")

    async def drain(self) -> None:
        """Wait until every queued delivery has been applied."""
        if self._queue is not None:
            await self._queue.join()

    async def stop(self) -> None:
        """Apply what is queued, then stop the worker."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await self.drain()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            self._queue = None

    async def __aenter__(self) -> CloseWebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.stop()

    def setup(self, app: web.Application, path: str = "/") -> None:
        """Route ``POST path`` of ``app`` to :meth:`handle`, and run the worker with the app."""
        app.router.add_post(path, self.handle)
        app.cleanup_ctx.append(self._cleanup_ctx)

    # -- the handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler: verify, read, queue, answer."""
        self.stats.received += 1
        body = await request.read()
        try:
            verify_close_signature(
                self._key, request.headers, body, tolerance=self.tolerance, now=self._clock()
            )
        except WebhookSignatureError as exc:
            self.stats.rejected += 1
            logger.warning("close webhook refused: %s", exc.message)
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            delivery = read_close_delivery(body)
        except DecodeError as exc:
            self.stats.malformed += 1
            logger.error("close webhook: malformed delivery: %s", exc)
            return web.json_response({"error": f"malformed delivery: {exc}"}, status=400)
        if self._queue is None:
            raise RuntimeError(
                "the receiver is not started: use setup(app) or `async with receiver`"
            )
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            logger.warning("close webhook: queue full, asking Close to retry later")
            return web.json_response({"error": "busy, retry later"}, status=503)
        return web.json_response({"status": "accepted"})

    # -- the worker

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            delivery = await queue.get()
            try:
                await self._apply(delivery)
            except Exception:
                self.stats.failed += 1
                logger.exception(
                    "close webhook: applying event %s (%s %s) failed",
                    delivery.event_id,
                    delivery.object_type,
                    delivery.action,
                )
            finally:
                queue.task_done()

    async def _apply(self, delivery: CloseDelivery) -> None:
        ledger = self.ledger
        if ledger.seen_event(delivery.event_id, delivery.occurred_at):
            self.stats.duplicates += 1
            return
        changes = delivery.changes
        if delivery.needs_fetch:
            changes = await self._fetched(delivery)
        if not changes:
            self.stats.ignored += 1
            ledger.mark_event(delivery.event_id, delivery.occurred_at)
            return
        for change in changes:
            verdict = ledger.decide(
                change, event_id=delivery.event_id, occurred_at=delivery.occurred_at
            )
            if verdict is Verdict.APPLY:
                result = self._on_change(change)
                if inspect.isawaitable(result):
                    await result
                ledger.record(change, event_id=delivery.event_id, occurred_at=delivery.occurred_at)
                self.stats.applied += 1
            elif verdict is Verdict.DUPLICATE:
                self.stats.duplicates += 1
            elif verdict is Verdict.STALE:
                self.stats.stale += 1
            else:
                self.stats.after_delete += 1
            logger.debug(
                "close webhook: event %s %s %s: %s",
                delivery.event_id,
                change.kind,
                change.id,
                verdict,
            )

    async def _fetched(self, delivery: CloseDelivery) -> tuple[Change, ...]:
        assert delivery.object_id is not None
        if self._fetch is None:
            logger.warning(
                "close webhook: event %s (%s %s) carries no data and the receiver has no "
                "fetch: skipped (the periodic sync will repair it)",
                delivery.event_id,
                delivery.action,
                delivery.object_id,
            )
            return ()
        self.stats.fetched += 1
        try:
            opportunity = await self._fetch(delivery.object_id)
        except NotFoundError:
            return (Change.delete(PROVIDER, delivery.object_id, occurred_at=delivery.occurred_at),)
        # The record is as it is now, which may be later than the event.
        as_of = max(delivery.occurred_at, opportunity.updated_at)
        return (Change.upsert(opportunity, occurred_at=as_of),)


#: Where :func:`close_webhook_app` keeps its :class:`CloseWebhookReceiver`.
RECEIVER: Final = web.AppKey("close_opps_webhook_receiver", CloseWebhookReceiver)


def close_webhook_app(
    signature_key: str | Secret,
    on_change: OnChange,
    *,
    path: str = "/",
    tolerance: float = DEFAULT_TOLERANCE,
    fetch: Fetch | None = None,
    ledger: ChangeLedger | None = None,
    max_queue: int = 10_000,
) -> web.Application:
    """An aiohttp app receiving Close deliveries on ``POST path``.

    See :class:`CloseWebhookReceiver` (the receiver is ``app[RECEIVER]``). Run it with
    ``web.run_app(app)`` or an ``AppRunner``; stopping the app drains the queue first.
    """
    receiver = CloseWebhookReceiver(
        signature_key,
        on_change,
        tolerance=tolerance,
        fetch=fetch,
        ledger=ledger,
        max_queue=max_queue,
    )
    app = web.Application()
    app[RECEIVER] = receiver
    receiver.setup(app, path)
    return app
