"""Close's webhooks in the emulator: ``/webhook/`` subscriptions and a dispatcher of signed events.

Subscriptions (under the Close base path, auth as every Close route):

- ``GET /webhook/`` (``{"data": [...], "has_more": bool}``, ``_skip``/``_limit``),
  ``POST /webhook/`` (``{"url", "events": [{"object_type", "action"}], "verify_ssl"?}``;
  **201** with ``signature_key``, the only time it is shown; at most 40 subscriptions),
  ``GET``/``PUT``/``DELETE /webhook/{id}/`` (``PUT`` changes any of ``url``, ``events``,
  ``status`` (``active``/``paused``), ``verify_ssl``; ``DELETE`` answers 200 ``{}``).

The :class:`WebhookDispatcher` delivers each event given to :meth:`~WebhookDispatcher.publish`
(the emulator's event log calls it; tests may call it directly) to every active subscription
that wants it: a real HTTP ``POST`` of ``{"event": ..., "subscription_id": ...}`` signed as Close
signs (``close-sig-hash``, ``close-sig-timestamp``), to loopback URLs only. Like Close it
retries failed deliveries with exponential backoff (up to one try per 20 minutes, for up to
72 hours) and pauses a subscription, clearing its queue, when all its deliveries have failed
for 3 days or its backlog reaches 100,000 events. :class:`DeliveryOptions` injects
duplicates, delays (hence reordering) and failed attempts; time comes from an injectable
clock and sleep (:class:`VirtualClock` for tests: no real waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import attrs
import yarl
from aiohttp import web

from ._common import JSON

__all__ = [
    "WEBHOOKS",
    "Attempt",
    "CloseWebhooks",
    "DeliveryOptions",
    "Subscription",
    "VirtualClock",
    "WebhookDispatcher",
    "install_webhooks",
    "opportunity_event",
]

logger = logging.getLogger("close_opps.sandbox.webhooks")

#: Close's limit of subscriptions per organization.
MAX_SUBSCRIPTIONS: Final = 40
_STATUSES: Final = frozenset({"active", "paused"})
_ID_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

Latency = float | tuple[float, float]


def _close_id(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choice(_ID_ALPHABET) for _ in range(22))


# ------------------------------------------------------------------------------ time


class VirtualClock:
    """A clock that only moves when slept on: ``sleep(60)`` returns at once, 60 s later.

    Pass ``clock.now`` and ``clock.sleep`` to the dispatcher (and the receiver's ``clock``)
    to run hours of retries in a test in no real time.
    """

    def __init__(self, start: float | None = None) -> None:
        self.time = time.time() if start is None else start

    def now(self) -> float:
        """The current virtual Unix time."""
        return self.time

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` (and let other tasks run once)."""
        self.time += max(0.0, seconds)
        await asyncio.sleep(0)


# ------------------------------------------------------------------------ subscriptions


@attrs.define(kw_only=True)
class Subscription:
    """One subscription, as the emulator keeps it."""

    id: str
    url: str
    events: list[JSON]
    verify_ssl: bool = True
    status: str = "active"
    signature_key: str = attrs.field(repr=False)
    #: When its deliveries started failing (all of them since), in the dispatcher's clock.
    failing_since: float | None = None

    def public(self) -> JSON:
        """The subscription as ``GET`` serves it (never the signing key)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": [dict(e) for e in self.events],
            "verify_ssl": self.verify_ssl,
            "status": self.status,
        }

    def wants(self, event: Mapping[str, Any]) -> bool:
        """Whether the subscription receives ``event`` (``extra_filter`` is not evaluated)."""
        return any(
            e.get("object_type") == event.get("object_type")
            and e.get("action") == event.get("action")
            for e in self.events
        )


# ---------------------------------------------------------------------------- dispatcher


@attrs.frozen(kw_only=True)
class DeliveryOptions:
    """How the dispatcher delivers (and misbehaves).

    Attributes:
        delay: seconds between publishing an event and its first attempt: a number, or a
            ``(low, high)`` range drawn per delivery (a range reorders deliveries).
        duplicate_rate: the chance that a delivery is sent twice (each copy with its own delay).
        failure_rate: the chance that an attempt counts as failed even though the receiver
            got it (a response lost on the way back): it is retried, a duplicate for the
            receiver.
        retry_initial: the wait before the first retry; it doubles each time, up to
            ``retry_max`` (Close: one try per 20 minutes at most).
        give_up_after: seconds after its first attempt a delivery is dropped (Close: 72 h).
        pause_after: seconds of nothing but failures after which a subscription is paused
            and its queue cleared (Close: 3 days).
        max_backlog: queued deliveries of one subscription that pause it (Close: 100,000).
        timeout: seconds one attempt may take (real time).
        seed: the seed of the random draws.
    """

    delay: Latency = 0.0
    duplicate_rate: float = 0.0
    failure_rate: float = 0.0
    retry_initial: float = 10.0
    retry_max: float = 20 * 60.0
    give_up_after: float = 72 * 3600.0
    pause_after: float = 3 * 86400.0
    max_backlog: int = 100_000
    timeout: float = 10.0
    seed: int = 0


@attrs.frozen(kw_only=True)
class Attempt:
    """One delivery attempt, as the dispatcher logged it."""

    subscription_id: str
    event_id: str
    #: The event's ``date_updated`` (a consolidated event comes again with a later one).
    event_date: str
    number: int
    at: float
    status: int | None
    ok: bool
    note: str = ""


@attrs.define(kw_only=True)
class _Delivery:
    subscription_id: str
    event: JSON
    attempts: int = 0
    first_attempt_at: float | None = None


def _loopback(url: str) -> bool:
    host = yarl.URL(url).host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def sign(signature_key: str, timestamp: str, body: bytes) -> str:
    """Close's ``close-sig-hash`` of ``body`` signed at ``timestamp``."""
    message = timestamp.encode("ascii") + body
    return hmac.new(bytes.fromhex(signature_key), message, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    """Delivers published events to the subscriptions of a :class:`CloseWebhooks`.

    Deliveries wait in a queue ordered by when they are due; :meth:`run_until_idle` sends
    them one at a time (sleeping with the injected ``sleep`` until each is due) until none
    is left, retrying failures and pausing subscriptions as Close does. :meth:`start` does
    the same in a background task whenever something is published.
    """

    def __init__(
        self,
        hooks: CloseWebhooks,
        *,
        options: DeliveryOptions | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.hooks = hooks
        self.clock = clock
        self.sleep = sleep
        self.attempts: list[Attempt] = []
        self.dropped: list[tuple[str, str]] = []
        self._options = options or DeliveryOptions()
        self._rng = random.Random(self._options.seed)  # noqa: S311 - not crypto
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def options(self) -> DeliveryOptions:
        """The delivery options (setting them reseeds the random draws)."""
        return self._options

    @options.setter
    def options(self, value: DeliveryOptions) -> None:
        self._options = value
        self._rng = random.Random(value.seed)  # noqa: S311 - not crypto

    @property
    def pending(self) -> int:
        """Deliveries queued (retries included)."""
        return len(self._heap)

    def backlog(self, subscription_id: str) -> int:
        """Deliveries queued for one subscription."""
        return sum(1 for _, _, d in self._heap if d.subscription_id == subscription_id)

    # -- publishing

    def publish(self, event: Mapping[str, Any]) -> int:
        """Queue ``event`` (a Close event object) for every active subscription wanting it.

        Returns how many deliveries were queued (duplicates included).
        """
        queued = 0
        now = self.clock()
        for sub in list(self.hooks.subscriptions.values()):
            if sub.status != "active" or not sub.wants(event):
                continue
            copies = 2 if self._rng.random() < self._options.duplicate_rate else 1
            for _ in range(copies):
                delivery = _Delivery(subscription_id=sub.id, event=dict(event))
                self._push(now + self._draw(self._options.delay), delivery)
                queued += 1
            if self.backlog(sub.id) >= self._options.max_backlog:
                self._pause(sub, "its backlog reached the maximum")
        self._wake.set()
        return queued

    def _draw(self, latency: Latency) -> float:
        if isinstance(latency, tuple):
            low, high = latency
            return self._rng.uniform(low, high)
        return float(latency)

    def _push(self, due: float, delivery: _Delivery) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), delivery))

    def _pause(self, sub: Subscription, why: str) -> None:
        sub.status = "paused"
        before = len(self._heap)
        self._heap = [item for item in self._heap if item[2].subscription_id != sub.id]
        heapq.heapify(self._heap)
        logger.warning(
            "sandbox: webhook %s paused (%s); %d queued deliveries cleared",
            sub.id,
            why,
            before - len(self._heap),
        )

    def forget(self, subscription_id: str) -> None:
        """Drop the queued deliveries of a subscription (deleted or paused by hand)."""
        self._heap = [item for item in self._heap if item[2].subscription_id != subscription_id]
        heapq.heapify(self._heap)

    # -- delivering

    async def run_until_idle(self) -> None:
        """Deliver everything queued, retries included, until the queue is empty."""
        async with self._lock:
            while self._heap:
                due = self._heap[0][0]
                now = self.clock()
                if due > now:
                    await self.sleep(due - now)
                    continue
                _, _, delivery = heapq.heappop(self._heap)
                await self._attempt(delivery)

    async def _attempt(self, delivery: _Delivery) -> None:
        sub = self.hooks.subscriptions.get(delivery.subscription_id)
        if sub is None or sub.status != "active":
            return
        now = self.clock()
        delivery.attempts += 1
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = now
        status, note = await self._post(sub, delivery.event, now)
        ok = status is not None and 200 <= status < 300
        if ok and self._rng.random() < self._options.failure_rate:
            ok, note = False, "response lost (injected)"
        self.attempts.append(
            Attempt(
                subscription_id=sub.id,
                event_id=str(delivery.event.get("id")),
                event_date=str(delivery.event.get("date_updated")),
                number=delivery.attempts,
                at=now,
                status=status,
                ok=ok,
                note=note,
            )
        )
        if ok:
            sub.failing_since = None
            return
        if sub.failing_since is None:
            sub.failing_since = now
        if now - sub.failing_since >= self._options.pause_after:
            self._pause(sub, "all deliveries failed for too long")
            return
        if now - delivery.first_attempt_at >= self._options.give_up_after:
            self.dropped.append((sub.id, str(delivery.event.get("id"))))
            return
        wait = min(
            self._options.retry_initial * 2 ** (delivery.attempts - 1), self._options.retry_max
        )
        self._push(now + wait, delivery)

    async def _post(
        self, sub: Subscription, event: Mapping[str, Any], now: float
    ) -> tuple[int | None, str]:
        if not _loopback(sub.url):
            return None, "not a loopback URL: the sandbox never sends elsewhere"
        body = json.dumps(
            {"subscription_id": sub.id, "event": event}, separators=(",", ":")
        ).encode()
        timestamp = str(int(now))
        headers = {
            "Content-Type": "application/json",
            "close-sig-timestamp": timestamp,
            "close-sig-hash": sign(sub.signature_key, timestamp, body),
        }
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                sub.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._options.timeout),
            ) as response:
                await response.read()
                return response.status, ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}"

    # -- background

    async def start(self) -> None:
        """Deliver in a background task whenever something is published."""
        if self._task is None:
            self._task = asyncio.create_task(self._background(), name="sandbox-webhooks")

    async def _background(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.run_until_idle()
            except Exception:  # pragma: no cover - a bug: keep serving
                logger.exception("sandbox: webhook delivery failed")

    async def aclose(self) -> None:
        """Stop the background task and close the HTTP session."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


# ----------------------------------------------------------------------------- the state


class CloseWebhooks:
    """The emulator's subscriptions and their dispatcher (``app[WEBHOOKS]``)."""

    def __init__(self, *, seed: int = 0) -> None:
        self.subscriptions: dict[str, Subscription] = {}
        self._rng = random.Random(f"webhooks-{seed}")  # noqa: S311 - ids, not keys
        self.dispatcher = WebhookDispatcher(self)
        self._event_ids = itertools.count(1)

    def create(self, url: str, events: list[JSON], *, verify_ssl: bool = True) -> Subscription:
        """Add a subscription (as ``POST /webhook/`` does)."""
        sub = Subscription(
            id=_close_id("whsub_", self._rng),
            url=url,
            events=events,
            verify_ssl=verify_ssl,
            signature_key=secrets.token_hex(32),
        )
        self.subscriptions[sub.id] = sub
        return sub

    def publish(self, event: Mapping[str, Any]) -> int:
        """:meth:`WebhookDispatcher.publish`: the event log's entry point."""
        return self.dispatcher.publish(event)

    def next_event_id(self) -> str:
        """A fresh ``ev_`` id."""
        return f"ev_{next(self._event_ids):022d}"


#: Where the Close app keeps its :class:`CloseWebhooks`.
WEBHOOKS: Final = web.AppKey("close_opps_sandbox_webhooks", CloseWebhooks)


def opportunity_event(
    action: str,
    record: Mapping[str, Any],
    *,
    at: datetime,
    event_id: str,
    previous: Mapping[str, Any] | None = None,
    changed_fields: list[str] | None = None,
    request_path: str | None = None,
) -> JSON:
    """A Close ``opportunity`` event about ``record`` (a Close opportunity as served).

    ``created``/``updated`` carry ``record`` as ``data``; ``deleted`` carries ``data: null``
    and ``record`` as ``previous_data``, as Close does.
    """
    stamp = at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    deleted = action == "deleted"
    return {
        "id": event_id,
        "date_created": stamp,
        "date_updated": stamp,
        "organization_id": record.get("organization_id"),
        "user_id": record.get("updated_by"),
        "request_id": "req_" + event_id[3:],
        "api_key_id": None,
        "oauth_client_id": None,
        "oauth_scope": None,
        "object_type": "opportunity",
        "object_id": record["id"],
        "lead_id": record.get("lead_id"),
        "action": action,
        "changed_fields": changed_fields or [],
        "meta": {
            "request_method": {"created": "POST", "deleted": "DELETE"}.get(action, "PUT"),
            "request_path": request_path or f"/api/v1/opportunity/{record['id']}/",
        },
        "data": None if deleted else dict(record),
        "previous_data": dict(record) if deleted else dict(previous or {}),
    }


# ------------------------------------------------------------------------------- routes


def _field_errors(errors: Mapping[str, str]) -> web.Response:
    return web.json_response({"errors": [], "field-errors": dict(errors)}, status=400)


def _not_found() -> web.Response:
    return web.json_response(
        {"error": "Empty query: WebhookSubscription matching query does not exist."},
        status=404,
    )


def _check_events(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "Provide at least one event."
    for item in value:
        if not isinstance(item, dict):
            return "Each event must be an object."
        if not isinstance(item.get("object_type"), str) or not isinstance(item.get("action"), str):
            return "Each event needs object_type and action."
    return None


def _check_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return "Not a valid URL."
    url = yarl.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        return "Not a valid URL."
    return None


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _hooks(request: web.Request) -> CloseWebhooks:
    return request.app[WEBHOOKS]


async def _list(request: web.Request) -> web.StreamResponse:
    subs = list(_hooks(request).subscriptions.values())
    try:
        skip = int(request.query.get("_skip", "0"))
        limit = int(request.query.get("_limit", "100"))
    except ValueError:
        return _field_errors({"_skip": "Not a valid integer."})
    page = subs[skip : skip + limit]
    return web.json_response(
        {"data": [s.public() for s in page], "has_more": skip + len(page) < len(subs)}
    )


async def _create(request: web.Request) -> web.StreamResponse:
    hooks = _hooks(request)
    body = await _body(request)
    if not isinstance(body, dict):
        return web.json_response({"error": "The body must be a JSON object."}, status=400)
    errors = {}
    if (problem := _check_url(body.get("url"))) is not None:
        errors["url"] = problem
    if (problem := _check_events(body.get("events"))) is not None:
        errors["events"] = problem
    verify_ssl = body.get("verify_ssl", True)
    if not isinstance(verify_ssl, bool):
        errors["verify_ssl"] = "Not a valid boolean."
    if errors:
        return _field_errors(errors)
    if len(hooks.subscriptions) >= MAX_SUBSCRIPTIONS:
        return web.json_response(
            {"error": f"You can have at most {MAX_SUBSCRIPTIONS} webhook subscriptions."},
            status=400,
        )
    sub = hooks.create(body["url"], list(body["events"]), verify_ssl=verify_ssl)
    return web.json_response({**sub.public(), "signature_key": sub.signature_key}, status=201)


async def _get(request: web.Request) -> web.StreamResponse:
    sub = _hooks(request).subscriptions.get(request.match_info["id"])
    return _not_found() if sub is None else web.json_response(sub.public())


async def _update(request: web.Request) -> web.StreamResponse:
    hooks = _hooks(request)
    sub = hooks.subscriptions.get(request.match_info["id"])
    if sub is None:
        return _not_found()
    body = await _body(request)
    if not isinstance(body, dict):
        return web.json_response({"error": "The body must be a JSON object."}, status=400)
    errors = {}
    if "url" in body and (problem := _check_url(body["url"])) is not None:
        errors["url"] = problem
    if "events" in body and (problem := _check_events(body["events"])) is not None:
        errors["events"] = problem
    if "status" in body and body["status"] not in _STATUSES:
        errors["status"] = "Must be one of: active, paused."
    if "verify_ssl" in body and not isinstance(body["verify_ssl"], bool):
        errors["verify_ssl"] = "Not a valid boolean."
    if errors:
        return _field_errors(errors)
    if "url" in body:
        sub.url = body["url"]
    if "events" in body:
        sub.events = list(body["events"])
    if "verify_ssl" in body:
        sub.verify_ssl = body["verify_ssl"]
    if "status" in body and body["status"] != sub.status:
        sub.status = body["status"]
        sub.failing_since = None
        if sub.status == "paused":
            hooks.dispatcher.forget(sub.id)
    return web.json_response(sub.public())


async def _delete(request: web.Request) -> web.StreamResponse:
    hooks = _hooks(request)
    sub = hooks.subscriptions.pop(request.match_info["id"], None)
    if sub is None:
        return _not_found()
    hooks.dispatcher.forget(sub.id)
    return web.json_response({})


async def _close_dispatcher(app: web.Application) -> None:
    await app[WEBHOOKS].dispatcher.aclose()


def install_webhooks(app: web.Application, base_path: str, *, seed: int = 0) -> CloseWebhooks:
    """Add the ``/webhook/`` routes under ``base_path`` and the dispatcher to a Close app."""
    hooks = CloseWebhooks(seed=seed)
    app[WEBHOOKS] = hooks
    for path in (f"{base_path}/webhook/", f"{base_path}/webhook"):
        app.router.add_get(path, _list)
        app.router.add_post(path, _create)
    for path in (f"{base_path}/webhook/{{id}}/", f"{base_path}/webhook/{{id}}"):
        app.router.add_get(path, _get)
        app.router.add_put(path, _update)
        app.router.add_delete(path, _delete)
    app.on_cleanup.append(_close_dispatcher)
    return hooks
