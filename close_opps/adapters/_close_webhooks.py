"""Close webhook subscriptions (``/webhook/``) for :class:`~close_opps.CloseAdapter`.

Subscriptions are writes: none is ever retried blindly. A create whose outcome is unknown (a
timeout, a dropped connection, a 5xx) first looks for a subscription the failed call may have
made (the same URL and events, absent before the call) before trying again, so a retry never
leaves two subscriptions delivering the same events.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import stamina

from close_opps._constants import BACKOFF_INITIAL, BACKOFF_JITTER, BACKOFF_MAX
from close_opps._redact import get_logger
from close_opps.errors import (
    DecodeError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
)
from close_opps.http import Request, Response, Secret, Transport, path_segment, retry_wait

__all__ = [
    "DEFAULT_WEBHOOK_EVENTS",
    "CloseWebhooksMixin",
    "CreatedWebhook",
    "WebhookEvent",
    "WebhookStatus",
    "WebhookSubscription",
]

logger = get_logger("close_opps.close")

_PROVIDER: Final = "close"
_LIST_PAGE: Final = 100
#: A safety stop for a server whose ``has_more`` never turns false.
_MAX_LIST_PAGES: Final = 1000


class WebhookStatus(enum.StrEnum):
    """A subscription's status. Close pauses one after 3 days of failed deliveries (or a
    backlog of 100,000 events) and clears its queue; it stays paused until resumed."""

    ACTIVE = "active"
    PAUSED = "paused"
    #: A status this SDK does not know (the text is in :attr:`WebhookSubscription.raw`).
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """One ``(object_type, action)`` a subscription receives, with Close's optional
    ``extra_filter`` (matched against the event JSON; see Close's webhook filter docs)."""

    object_type: str
    action: str
    #: Compared, not hashed (a mapping has no hash).
    extra_filter: Mapping[str, Any] | None = attrs.field(default=None, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The body form Close takes."""
        body: dict[str, Any] = {"object_type": self.object_type, "action": self.action}
        if self.extra_filter is not None:
            body["extra_filter"] = dict(self.extra_filter)
        return body

    def _identity(self) -> tuple[str, str, str]:
        filter_text = json.dumps(self.extra_filter, sort_keys=True, default=str)
        return (self.object_type, self.action, filter_text)


#: What :meth:`CloseWebhooksMixin.create_webhook` subscribes to by default.
DEFAULT_WEBHOOK_EVENTS: Final = (
    WebhookEvent(object_type="opportunity", action="created"),
    WebhookEvent(object_type="opportunity", action="updated"),
    WebhookEvent(object_type="opportunity", action="deleted"),
)

EventSpec = WebhookEvent | tuple[str, str] | Mapping[str, Any]


def _event(spec: EventSpec) -> WebhookEvent:
    if isinstance(spec, WebhookEvent):
        return spec
    if isinstance(spec, tuple):
        object_type, action = spec
        return WebhookEvent(object_type=object_type, action=action)
    if isinstance(spec, Mapping):
        return WebhookEvent(
            object_type=str(spec["object_type"]),
            action=str(spec["action"]),
            extra_filter=spec.get("extra_filter"),
        )
    raise TypeError(f"an event is a WebhookEvent, (object_type, action) or a mapping: {spec!r}")


@attrs.frozen(kw_only=True)
class WebhookSubscription:
    """A Close webhook subscription.

    Attributes:
        id: ``whsub_...``.
        url: where Close delivers.
        events: what it receives.
        status: :attr:`WebhookStatus.ACTIVE`, or :attr:`WebhookStatus.PAUSED` (deliveries
            stopped and the queue cleared: resume it, then repair the gap with a sync).
        verify_ssl: whether Close checks the receiver's certificate, when said.
        raw: the subscription as Close sent it, without any ``signature_key``.
    """

    id: str
    url: str
    events: tuple[WebhookEvent, ...]
    status: WebhookStatus
    verify_ssl: bool | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def paused(self) -> bool:
        """Whether Close has stopped delivering to this subscription."""
        return self.status is WebhookStatus.PAUSED


@attrs.frozen(kw_only=True)
class CreatedWebhook:
    """A subscription just created, with its signing key (given by Close this once only).

    Store :attr:`signature_key` (``.reveal()``) with your receiver's configuration: it never
    shows in ``repr``, ``str`` or logs.
    """

    subscription: WebhookSubscription
    signature_key: Secret = attrs.field(repr=False, eq=False)

    @property
    def id(self) -> str:
        """The subscription's id."""
        return self.subscription.id


def _decode_subscription(raw: Any, path: str) -> tuple[WebhookSubscription, Secret | None]:
    if not isinstance(raw, Mapping):
        raise DecodeError(
            f"expected a subscription object, got {type(raw).__name__}",
            provider=_PROVIDER,
            path=path,
        )
    sub_id = raw.get("id")
    if not isinstance(sub_id, str) or not sub_id:
        raise DecodeError("expected a subscription id", provider=_PROVIDER, path=f"{path}.id")
    url = raw.get("url")
    if not isinstance(url, str):
        raise DecodeError(
            "expected a string", provider=_PROVIDER, record_id=sub_id, path=f"{path}.url"
        )
    raw_events = raw.get("events", [])
    if not isinstance(raw_events, list):
        raise DecodeError(
            "expected a list", provider=_PROVIDER, record_id=sub_id, path=f"{path}.events"
        )
    events = []
    for index, item in enumerate(raw_events):
        where = f"{path}.events[{index}]"
        if not isinstance(item, Mapping):
            raise DecodeError(
                "expected an object", provider=_PROVIDER, record_id=sub_id, path=where
            )
        for field in ("object_type", "action"):
            if not isinstance(item.get(field), str):
                raise DecodeError(
                    "expected a string",
                    provider=_PROVIDER,
                    record_id=sub_id,
                    path=f"{where}.{field}",
                )
        extra = item.get("extra_filter")
        events.append(
            WebhookEvent(
                object_type=item["object_type"],
                action=item["action"],
                extra_filter=extra if isinstance(extra, Mapping) else None,
            )
        )
    raw_status = raw.get("status")
    try:
        status = WebhookStatus(str(raw_status))
        if status is WebhookStatus.UNKNOWN:
            raise ValueError(raw_status)
    except ValueError:
        logger.warning("close: subscription %s has an unknown status %r", sub_id, raw_status)
        status = WebhookStatus.UNKNOWN
    verify_ssl = raw.get("verify_ssl")
    key = raw.get("signature_key")
    secret = Secret(key) if isinstance(key, str) and key.strip() else None
    subscription = WebhookSubscription(
        id=sub_id,
        url=url,
        events=tuple(events),
        status=status,
        verify_ssl=verify_ssl if isinstance(verify_ssl, bool) else None,
        raw={k: v for k, v in raw.items() if k != "signature_key"},
    )
    return subscription, secret


def _ambiguous(exc: BaseException) -> bool:
    """Whether a failed write may have been carried out by the server anyway: no answer, a
    5xx, or an answer that could not be read (the record it described is lost)."""
    return isinstance(exc, (TransportError, ServerError, DecodeError))


class _Retry(Exception):
    """An attempt of a write failed in a way that is safe to try again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class CloseWebhooksMixin:
    """Webhook subscriptions on :class:`~close_opps.CloseAdapter`."""

    if TYPE_CHECKING:
        _transport: Transport

        async def _send(self, request: Request) -> Response: ...

    # -- reads

    async def list_webhooks(self) -> list[WebhookSubscription]:
        """Every webhook subscription this key may see (``GET /webhook/``, all pages).

        A paused subscription has ``status == WebhookStatus.PAUSED`` (``.paused``).
        """
        return [sub for sub, _ in await self._list_raw()]

    async def get_webhook(self, subscription_id: str) -> WebhookSubscription:
        """One subscription (``GET /webhook/{id}/``).

        Raises:
            NotFoundError: no such subscription.
        """
        response = await self._send(Request(path=f"/webhook/{path_segment(subscription_id)}/"))
        return _decode_subscription(response.data, "$")[0]

    async def _list_raw(self) -> list[tuple[WebhookSubscription, Secret | None]]:
        found: list[tuple[WebhookSubscription, Secret | None]] = []
        skip = 0
        for _ in range(_MAX_LIST_PAGES):
            response = await self._send(
                Request(path="/webhook/", params={"_skip": skip, "_limit": _LIST_PAGE})
            )
            body = response.data
            if isinstance(body, list):  # a bare list: everything at once
                items, has_more = body, False
            elif isinstance(body, Mapping) and isinstance(body.get("data"), list):
                items, has_more = body["data"], body.get("has_more") is True
            else:
                raise DecodeError(
                    "expected {data: [...], has_more}", provider=_PROVIDER, path="$.data"
                )
            found += [_decode_subscription(raw, f"$.data[{i}]") for i, raw in enumerate(items)]
            if not has_more or not items:
                return found
            skip += len(items)
        raise DecodeError(
            f"the webhook list did not end after {_MAX_LIST_PAGES} pages",
            provider=_PROVIDER,
            path="$.has_more",
        )

    # -- writes

    async def create_webhook(
        self,
        url: str,
        *,
        events: Iterable[EventSpec] = DEFAULT_WEBHOOK_EVENTS,
        verify_ssl: bool = True,
    ) -> CreatedWebhook:
        """Subscribe ``url`` to ``events`` (``POST /webhook/``); returns the signing key once.

        Args:
            url: where Close should deliver (HTTPS in production).
            events: :class:`WebhookEvent` s, ``(object_type, action)`` pairs or mappings;
                default: opportunity created, updated and deleted.
            verify_ssl: whether Close checks the receiver's certificate.

        A create whose outcome is unknown (timeout, dropped connection, 5xx, an unreadable
        answer) is not simply sent again: the subscriptions are listed first, and one with
        the same URL and events that was not there before the call is the one it made. If
        Close lists it with its key, that is returned; if not (the key was only in the lost
        response), it is deleted before creating again, so it never delivers events nobody
        can verify. (A subscription another process creates with the same URL and events at
        the same moment would be taken for it: create subscriptions from one place.) A 429
        is retried after the wait Close asks for; other errors are raised.

        Raises:
            DecodeError: Close's answer has no ``id`` or ``signature_key``.
        """
        wanted = tuple(_event(e) for e in events)
        if not wanted:
            raise ValueError("events must name at least one (object_type, action)")
        body = {
            "url": url,
            "events": [e.to_json() for e in wanted],
            "verify_ssl": verify_ssl,
        }
        identity = (url, frozenset(e._identity() for e in wanted))
        before = {sub.id for sub, _ in await self._list_raw()}

        def on_failure(exc: Exception) -> bool | float:
            if not isinstance(exc, _Retry):
                return False
            decision = (
                True
                if isinstance(exc.cause, DecodeError)
                else retry_wait(exc.cause, max_wait=self._transport.max_retry_wait)
            )
            if decision is not False:
                logger.warning("close: creating a webhook failed (%s), trying again", exc)
            return decision

        try:
            async for attempt in stamina.retry_context(
                on=on_failure,
                attempts=self._transport.max_retries + 1,
                timeout=None,
                wait_initial=BACKOFF_INITIAL,
                wait_max=BACKOFF_MAX,
                wait_jitter=BACKOFF_JITTER,
            ):
                with attempt:
                    return await self._create_once(body, identity, before)
        except _Retry as exc:
            raise exc.cause from None
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    async def _create_once(
        self,
        body: Mapping[str, Any],
        identity: tuple[str, frozenset[tuple[str, str, str]]],
        before: set[str],
    ) -> CreatedWebhook:
        try:
            response = await self._send(
                Request(method="POST", path="/webhook/", json=body, idempotent=False)
            )
        except RateLimitError as exc:  # refused before anything was done
            raise _Retry(exc) from exc
        except (TransportError, ServerError, DecodeError) as exc:
            made = [
                (sub, key)
                for sub, key in await self._list_raw()
                if sub.id not in before
                and (sub.url, frozenset(e._identity() for e in sub.events)) == identity
            ]
            for sub, key in made:
                if key is not None:
                    logger.info("close: the failed create did make %s; using it", sub.id)
                    return CreatedWebhook(subscription=sub, signature_key=key)
            for sub, _ in made:
                logger.warning(
                    "close: the failed create made %s but its signing key was lost with the "
                    "response; deleting it before creating again",
                    sub.id,
                )
                await self.delete_webhook(sub.id)
            raise _Retry(exc) from exc
        subscription, key = _decode_subscription(response.data, "$")
        if key is None:
            raise DecodeError(
                "the created subscription carries no signature_key",
                provider=_PROVIDER,
                record_id=subscription.id,
                path="$.signature_key",
            )
        logger.info("close: created webhook subscription %s", subscription.id)
        return CreatedWebhook(subscription=subscription, signature_key=key)

    async def delete_webhook(self, subscription_id: str) -> None:
        """Delete a subscription (``DELETE /webhook/{id}/``).

        If the outcome is unknown (timeout, dropped connection, 5xx), the subscription is
        read back: gone means done, still there means the delete is sent once more.

        Raises:
            NotFoundError: no such subscription (before this call).
        """
        path = f"/webhook/{path_segment(subscription_id)}/"
        for attempt in range(self._transport.max_retries + 1):
            try:
                await self._send(Request(method="DELETE", path=path, idempotent=False))
                return
            except DecodeError:
                return  # a 2xx whose body is not JSON (Close documents no body): deleted
            except NotFoundError:
                if attempt:  # an earlier, ambiguous attempt did it
                    return
                raise
            except (TransportError, ServerError) as exc:
                if not _ambiguous(exc) or attempt == self._transport.max_retries:
                    raise
                try:
                    await self.get_webhook(subscription_id)
                except NotFoundError:
                    return
                logger.warning("close: deleting %s failed (%s), again", subscription_id, exc)

    async def resume_webhook(self, subscription_id: str) -> WebhookSubscription:
        """Set a paused subscription back to active (``PUT /webhook/{id}/``).

        Close cleared the paused subscription's queue: run ``changes()``/``sync`` from your
        last cursor to repair the gap. If the outcome is unknown, the subscription is read
        back and the request sent again only if it is still not active.
        """
        path = f"/webhook/{path_segment(subscription_id)}/"
        request = Request(method="PUT", path=path, json={"status": "active"}, idempotent=False)
        for attempt in range(self._transport.max_retries + 1):
            try:
                response = await self._send(request)
            except (TransportError, ServerError, DecodeError) as exc:
                if not _ambiguous(exc) or attempt == self._transport.max_retries:
                    raise
                current = await self.get_webhook(subscription_id)
                if current.status is WebhookStatus.ACTIVE:
                    return current
                logger.warning("close: resuming %s failed (%s), again", subscription_id, exc)
                continue
            return _decode_subscription(response.data, "$")[0]
        raise AssertionError("unreachable")  # pragma: no cover
