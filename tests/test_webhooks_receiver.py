"""The aiohttp receiver: verification, answers, de-duplication, order, fetch, shutdown."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from close_opps import Change, ChangeKind, CloseAdapter, NotFoundError
from close_opps.adapters.close import close_to_opportunity
from close_opps.model import Opportunity
from close_opps.webhooks import (
    RECEIVER,
    CloseWebhookReceiver,
    close_webhook_app,
)

from .test_webhooks import EXAMPLES

KEY = "5766b2447c7b51c5a08643792532e310eabfde421c0bb49b9bb2838e1d0cc1ca"
CREATED: dict[str, Any] = EXAMPLES["single_events"]["opportunity_created"]["event"]
UPDATED: dict[str, Any] = EXAMPLES["single_events"]["opportunity_updated_consolidated"]["event"]
OPP_ID = CREATED["object_id"]
OTHER_KEY = "d586429b2e3592dc13adc79a76778ecc2e2778e52edd3b551be4b28f96fc9abf"


def _body(event: dict[str, Any]) -> bytes:
    return json.dumps({"subscription_id": "whsub_x", "event": event}).encode()


def _headers(body: bytes, *, key: str = KEY, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    digest = hmac.new(bytes.fromhex(key), stamp.encode() + body, hashlib.sha256).hexdigest()
    return {"close-sig-timestamp": stamp, "close-sig-hash": digest}


def _deleted(at: str, event_id: str = "ev_deleted") -> dict[str, Any]:
    return {
        **CREATED,
        "id": event_id,
        "action": "deleted",
        "date_created": at,
        "date_updated": at,
        "data": None,
        "previous_data": CREATED["data"],
    }


class Store:
    """A copy kept by applying changes, as a caller would."""

    def __init__(self) -> None:
        self.records: dict[str, Opportunity] = {}
        self.seen: list[Change] = []

    def apply(self, change: Change) -> None:
        self.seen.append(change)
        if change.kind is ChangeKind.UPSERT:
            assert change.opportunity is not None
            self.records[change.id] = change.opportunity
        else:
            self.records.pop(change.id, None)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = close_webhook_app(KEY, store.apply, path="/close")
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def _post(
    client: TestClient[web.Request, web.Application],
    body: bytes,
    headers: dict[str, str] | None = None,
) -> int:
    response = await client.post(
        "/close", data=body, headers=_headers(body) if headers is None else headers
    )
    await response.read()
    return response.status


def _receiver(client: TestClient[web.Request, web.Application]) -> CloseWebhookReceiver:
    return client.app[RECEIVER]


async def test_a_verified_delivery_reaches_on_change(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    assert await _post(client, _body(CREATED)) == 200
    await _receiver(client).drain()
    assert list(store.records) == [OPP_ID]
    assert store.seen[0].kind is ChangeKind.UPSERT


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _headers(
            _body(CREATED), key="d586429b2e3592dc13adc79a76778ecc2e2778e52edd3b551be4b28f96fc9abf"
        ),
        _headers(_body(CREATED), ts=int(time.time()) - 3600),
        _headers(_body(CREATED), ts=int(time.time()) + 3600),
        _headers(_body(UPDATED)),  # signed for another body
    ],
    ids=["unsigned", "wrong key", "stale", "future", "tampered body"],
)
async def test_a_bad_signature_gets_401_and_nothing_reaches_on_change(
    client: TestClient[web.Request, web.Application],
    store: Store,
    headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert await _post(client, _body(CREATED), headers) == 401
        await _receiver(client).drain()
    assert store.seen == []
    assert _receiver(client).stats.rejected == 1
    assert KEY not in caplog.text


async def test_a_malformed_verified_delivery_gets_400(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    assert await _post(client, b'{"event": {"id": 1}}') == 400
    assert store.seen == []
    assert _receiver(client).stats.malformed == 1


async def test_duplicates_are_applied_once(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    for _ in range(3):
        assert await _post(client, _body(CREATED)) == 200
    await _receiver(client).drain()
    assert len(store.seen) == 1
    assert _receiver(client).stats.duplicates == 2


async def test_a_late_update_never_overwrites_a_later_state(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    await _post(client, _body(UPDATED))
    await _post(client, _body(CREATED))  # older: arrives late
    await _receiver(client).drain()
    assert store.records[OPP_ID].status_label == "Won"
    assert len(store.seen) == 1
    assert _receiver(client).stats.stale == 1


async def test_a_late_update_after_a_delete_does_not_revive(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    await _post(client, _body(CREATED))
    await _post(client, _body(_deleted("2024-06-14T05:30:00.000000")))
    await _post(client, _body(UPDATED))  # 05:20, late
    await _receiver(client).drain()
    assert store.records == {}
    assert [c.kind for c in store.seen] == [ChangeKind.UPSERT, ChangeKind.DELETE]
    assert _receiver(client).stats.after_delete == 1


async def test_other_object_types_are_acknowledged_and_ignored(
    client: TestClient[web.Request, web.Application], store: Store
) -> None:
    lead_event = EXAMPLES["lead_deletion_cascade"]["events_newest_first"][0]
    assert await _post(client, _body(lead_event)) == 200
    await _receiver(client).drain()
    assert store.seen == []
    assert _receiver(client).stats.ignored == 1


async def test_the_handler_answers_before_the_change_is_applied(store: Store) -> None:
    release = asyncio.Event()
    applied: list[Change] = []

    async def slow(change: Change) -> None:
        await release.wait()
        applied.append(change)

    app = close_webhook_app(KEY, slow)
    async with TestClient(TestServer(app)) as test_client:
        body = _body(CREATED)
        response = await test_client.post("/", data=body, headers=_headers(body))
        assert response.status == 200
        assert applied == []  # answered while on_change still waits
        release.set()
        await test_client.app[RECEIVER].drain()
        assert len(applied) == 1


async def test_shutdown_drains_the_queue() -> None:
    applied: list[Change] = []

    async def slow(change: Change) -> None:
        await asyncio.sleep(0)
        applied.append(change)

    app = close_webhook_app(KEY, slow)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    for event in (CREATED, UPDATED):
        body = _body(event)
        response = await test_client.post("/", data=body, headers=_headers(body))
        assert response.status == 200
    await test_client.close()  # the app's cleanup drains before stopping the worker
    assert len(applied) == 2


async def test_a_full_queue_asks_close_to_retry(store: Store) -> None:
    release = asyncio.Event()

    async def blocked(change: Change) -> None:
        await release.wait()

    app = close_webhook_app(KEY, blocked, max_queue=1)
    async with TestClient(TestServer(app)) as test_client:
        statuses = []
        for event_id in ("ev_a", "ev_b", "ev_c"):
            body = _body({**CREATED, "id": event_id})
            response = await test_client.post("/", data=body, headers=_headers(body))
            statuses.append(response.status)
            await asyncio.sleep(0)  # let the worker take the first one
        assert statuses == [200, 200, 503]
        release.set()


async def test_a_failing_on_change_is_logged_and_not_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Change] = []

    def flaky(change: Change) -> None:
        calls.append(change)
        if len(calls) == 1:
            raise RuntimeError("database down")

    app = close_webhook_app(KEY, flaky)
    async with TestClient(TestServer(app)) as test_client:
        body = _body(CREATED)
        with caplog.at_level(logging.ERROR, logger="close_opps.webhooks"):
            for _ in range(2):  # Close redelivers the same event
                await test_client.post("/", data=body, headers=_headers(body))
            await test_client.app[RECEIVER].drain()
        assert len(calls) == 2  # the redelivery is applied: the failure was not recorded
        assert test_client.app[RECEIVER].stats.failed == 1
        assert "database down" in caplog.text


def _without_data(event: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(event)
    stripped.pop("data")
    stripped.pop("previous_data")
    return stripped


async def test_an_event_without_data_is_completed_with_fetch(store: Store) -> None:
    fetched: list[str] = []

    async def fetch(opportunity_id: str) -> Opportunity:
        fetched.append(opportunity_id)
        return close_to_opportunity(UPDATED["data"])

    app = close_webhook_app(KEY, store.apply, fetch=fetch)
    async with TestClient(TestServer(app)) as test_client:
        body = _body(_without_data(UPDATED))
        await test_client.post("/", data=body, headers=_headers(body))
        await test_client.app[RECEIVER].drain()
    assert fetched == [OPP_ID]
    assert store.records[OPP_ID].status_label == "Won"


async def test_an_event_without_data_for_a_gone_record_is_a_delete(store: Store) -> None:
    async def fetch(opportunity_id: str) -> Opportunity:
        raise NotFoundError("gone", provider="close", status=404)

    store.records[OPP_ID] = close_to_opportunity(CREATED["data"])
    app = close_webhook_app(KEY, store.apply, fetch=fetch)
    async with TestClient(TestServer(app)) as test_client:
        body = _body(_without_data(UPDATED))
        await test_client.post("/", data=body, headers=_headers(body))
        await test_client.app[RECEIVER].drain()
    assert store.records == {}


async def test_an_event_without_data_and_no_fetch_is_skipped_loudly(
    client: TestClient[web.Request, web.Application],
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = _body(_without_data(UPDATED))
    with caplog.at_level(logging.WARNING, logger="close_opps.webhooks"):
        assert await _post(client, body) == 200
        await _receiver(client).drain()
    assert store.seen == []
    assert "no fetch" in caplog.text


async def test_the_receiver_mounts_on_the_callers_app_with_an_adapter_as_fetch(
    store: Store,
) -> None:
    async with CloseAdapter("k", base_url="http://127.0.0.1:1/api/v1") as close:
        receiver = CloseWebhookReceiver(KEY, store.apply, fetch=close.get)
        app = web.Application()
        receiver.setup(app, "/hooks/close")
        async with TestClient(TestServer(app)) as test_client:
            body = _body(CREATED)
            response = await test_client.post("/hooks/close", data=body, headers=_headers(body))
            assert response.status == 200
            await receiver.drain()
    assert list(store.records) == [OPP_ID]
    assert KEY not in repr(receiver)


def test_a_receiver_refuses_a_malformed_key_at_once() -> None:
    with pytest.raises(ValueError, match="hex"):
        CloseWebhookReceiver("not hex", lambda change: None)


async def test_a_receiver_that_was_not_started_fails_loudly() -> None:
    receiver = CloseWebhookReceiver(KEY, lambda change: None)
    app = web.Application()
    app.router.add_post("/", receiver.handle)
    async with TestClient(TestServer(app)) as test_client:
        body = _body(CREATED)
        response = await test_client.post("/", data=body, headers=_headers(body))
        assert response.status == 500


async def test_a_fetched_record_is_not_undone_by_an_older_event_arriving_later(
    store: Store,
) -> None:
    async def fetch(opportunity_id: str) -> Opportunity:
        return close_to_opportunity(UPDATED["data"])  # the current state: won, 05:20:42

    app = close_webhook_app(KEY, store.apply, fetch=fetch)
    async with TestClient(TestServer(app)) as test_client:
        early = {**_without_data(UPDATED), "id": "ev_early"}
        early["date_updated"] = early["date_created"] = "2024-06-14T05:15:00.000000"
        # An older state (05:18, active) arrives after the fetch: newer than the event that
        # caused the fetch, older than the record fetched.
        middle = {**CREATED, "id": "ev_middle", "date_updated": "2024-06-14T05:18:00.000000"}
        for event in (early, middle):
            body = _body(event)
            await test_client.post("/", data=body, headers=_headers(body))
        await test_client.app[RECEIVER].drain()
    assert store.records[OPP_ID].status_label == "Won"
    assert len(store.seen) == 1
