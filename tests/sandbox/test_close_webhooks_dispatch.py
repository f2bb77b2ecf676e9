"""Through the Close emulator: signed deliveries with duplicates, reordering, failures, pauses.

A subscription is made with the SDK, the emulator's dispatcher delivers events published to it
over real HTTP to a receiver on 127.0.0.1, and the receiver's copy is compared with the truth.
Time is virtual: days of retries run in no real time.
"""

from __future__ import annotations

import ast
import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

import close_opps.sandbox.close_webhooks as sandbox_webhooks
from close_opps import Change, ChangeKind, CloseAdapter
from close_opps.model import Opportunity
from close_opps.sandbox import Sandbox
from close_opps.sandbox.close_webhooks import (
    WEBHOOKS,
    CloseWebhooks,
    DeliveryOptions,
    VirtualClock,
    opportunity_event,
)
from close_opps.webhooks import CloseWebhookReceiver, WebhookStatus


@attrs.define
class Receiver:
    """A receiver on 127.0.0.1 keeping a copy, as a caller would."""

    url: str
    runner: web.AppRunner
    records: dict[str, Opportunity] = attrs.Factory(dict)
    receiver: CloseWebhookReceiver | None = None

    def apply(self, change: Change) -> None:
        if change.kind is ChangeKind.UPSERT:
            assert change.opportunity is not None
            self.records[change.id] = change.opportunity
        else:
            self.records.pop(change.id, None)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/close"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=11, records=6, vendors=["close"]) as running:
        yield running


@pytest.fixture
async def close(sandbox: Sandbox) -> AsyncIterator[CloseAdapter]:
    async with CloseAdapter(sandbox.close.api_key, base_url=sandbox.close.base_url) as adapter:
        yield adapter


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def _hooks(sandbox: Sandbox) -> CloseWebhooks:
    return sandbox.close.app[WEBHOOKS]


async def _subscribed_receiver(
    close: CloseAdapter, sandbox: Sandbox, clock: VirtualClock, **receiver_args: Any
) -> AsyncIterator[Receiver]:
    """Create the subscription with the SDK, then the receiver with the key it returned."""
    created = await close.create_webhook("http://127.0.0.1:9/placeholder")
    holder = Receiver(url="", runner=None)  # type: ignore[arg-type]
    receiver = CloseWebhookReceiver(
        created.signature_key, holder.apply, clock=clock.now, **receiver_args
    )
    app = web.Application()
    receiver.setup(app, "/close")
    runner, url = await _serve(app)
    holder.url, holder.runner, holder.receiver = url, runner, receiver
    _hooks(sandbox).subscriptions[created.id].url = url  # where it listens, now we know
    try:
        yield holder
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver(
    close: CloseAdapter, sandbox: Sandbox, clock: VirtualClock
) -> AsyncIterator[Receiver]:
    async for holder in _subscribed_receiver(close, sandbox, clock):
        yield holder


def _story(
    records: list[dict[str, Any]], rng: random.Random, start: datetime
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any] | None]]:
    """Events for each record (created, updates, some consolidated, some deleted), in time
    order, and the final state each should end in (``None``: deleted)."""
    events: list[tuple[datetime, dict[str, Any]]] = []
    truth: dict[str, dict[str, Any] | None] = {}
    counter = iter(range(1, 10_000))
    for index, base in enumerate(records):
        at = start + timedelta(seconds=index)
        record = {**base, "date_updated": at.isoformat()}
        events.append((at, opportunity_event("created", record, at=at, event_id=f"ev_c{index}")))
        for step in range(rng.randint(1, 4)):
            at += timedelta(seconds=rng.randint(1, 20))
            record = {**record, "confidence": step * 10 + index, "date_updated": at.isoformat()}
            event_id = f"ev_u{next(counter)}"
            events.append((at, opportunity_event("updated", record, at=at, event_id=event_id)))
            if rng.random() < 0.4:  # consolidated: the same event again, later, newer data
                at += timedelta(milliseconds=rng.randint(1, 900))
                record = {**record, "note": f"consolidated {step}", "date_updated": at.isoformat()}
                events.append((at, opportunity_event("updated", record, at=at, event_id=event_id)))
        truth[record["id"]] = record
        if index % 3 == 0:
            at += timedelta(seconds=rng.randint(1, 20))
            events.append(
                (at, opportunity_event("deleted", record, at=at, event_id=f"ev_d{index}"))
            )
            truth[record["id"]] = None
    events.sort(key=lambda pair: pair[0])
    return [event for _, event in events], truth


def _state(receiver: Receiver) -> dict[str, tuple[Any, Any, Any]]:
    return {
        oid: (opp.confidence, opp.note, opp.updated_at) for oid, opp in receiver.records.items()
    }


def _expected(truth: dict[str, dict[str, Any] | None]) -> dict[str, tuple[Any, Any, Any]]:
    return {
        oid: (
            record["confidence"],
            record["note"],
            datetime.fromisoformat(record["date_updated"]).astimezone(UTC),
        )
        for oid, record in truth.items()
        if record is not None
    }


def _naive(events: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """What a receiver applying every delivery as it arrives would end with."""
    by_key = {(e["id"], e["date_updated"]): e for e in events}
    state: dict[str, Any] = {}
    for key in order:
        event_id, _, date = key.partition("|")
        event = by_key[(event_id, date)]
        if event["action"] == "deleted":
            state.pop(event["object_id"], None)
        else:
            data = event["data"]
            state[event["object_id"]] = (
                data["confidence"],
                data["note"],
                datetime.fromisoformat(data["date_updated"]).astimezone(UTC),
            )
    return state


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_duplicates_and_reordering_never_yield_a_wrong_final_state(
    sandbox: Sandbox, receiver: Receiver, clock: VirtualClock, seed: int
) -> None:
    rng = random.Random(seed)
    start = datetime.fromtimestamp(clock.now(), UTC)
    events, truth = _story(sandbox.close.records, rng, start)
    hooks = _hooks(sandbox)
    dispatcher = hooks.dispatcher
    dispatcher.clock, dispatcher.sleep = clock.now, clock.sleep
    dispatcher.options = DeliveryOptions(
        delay=(0.0, 60.0), duplicate_rate=0.4, failure_rate=0.2, seed=seed
    )
    for event in events:
        assert hooks.publish(event) >= 1
    await dispatcher.run_until_idle()
    assert receiver.receiver is not None
    await receiver.receiver.drain()

    assert _state(receiver) == _expected(truth)
    # The run was hostile: duplicates arrived, and arrival order was not publication order.
    stats = receiver.receiver.stats
    assert stats.duplicates > 0
    assert stats.stale + stats.after_delete > 0
    delivered = [a for a in dispatcher.attempts if a.status == 200]
    order = [a.event_id for a in delivered]
    assert order != sorted(order, key=[e["id"] for e in events].index)
    assert any(a.number > 1 for a in dispatcher.attempts)  # failed deliveries were retried
    # ... and applying deliveries as they came would have been wrong.
    arrivals = [f"{a.event_id}|{a.event_date}" for a in delivered]
    assert _naive(events, arrivals) != _expected(truth)


async def test_a_receiver_with_the_wrong_key_gets_nothing(
    close: CloseAdapter, sandbox: Sandbox, clock: VirtualClock
) -> None:
    created = await close.create_webhook("http://127.0.0.1:9/placeholder")
    applied: list[Change] = []
    other_key = "d586429b2e3592dc13adc79a76778ecc2e2778e52edd3b551be4b28f96fc9abf"
    receiver = CloseWebhookReceiver(other_key, applied.append, clock=clock.now)
    app = web.Application()
    receiver.setup(app, "/close")
    runner, url = await _serve(app)
    try:
        hooks = _hooks(sandbox)
        hooks.subscriptions[created.id].url = url
        hooks.dispatcher.clock, hooks.dispatcher.sleep = clock.now, clock.sleep
        hooks.dispatcher.options = DeliveryOptions(retry_initial=10, give_up_after=100)
        record = sandbox.close.records[0]
        at = datetime.fromtimestamp(clock.now(), UTC)
        hooks.publish(opportunity_event("created", record, at=at, event_id="ev_1"))
        await hooks.dispatcher.run_until_idle()
        await receiver.drain()
    finally:
        await runner.cleanup()
    assert applied == []
    assert {a.status for a in hooks.dispatcher.attempts} == {401}
    assert hooks.dispatcher.dropped == [(created.id, "ev_1")]


async def test_a_subscription_failing_for_three_days_is_paused_and_reported(
    close: CloseAdapter, sandbox: Sandbox, clock: VirtualClock
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/close", broken)
    runner, url = await _serve(app)
    try:
        created = await close.create_webhook(url)
        hooks = _hooks(sandbox)
        dispatcher = hooks.dispatcher
        dispatcher.clock, dispatcher.sleep = clock.now, clock.sleep
        started = clock.now()
        record = sandbox.close.records[0]
        at = datetime.fromtimestamp(started, UTC)
        hooks.publish(opportunity_event("created", record, at=at, event_id="ev_1"))
        hooks.publish(opportunity_event("updated", record, at=at, event_id="ev_2"))
        await dispatcher.run_until_idle()
    finally:
        await runner.cleanup()

    elapsed = clock.now() - started
    assert 3 * 86400 <= elapsed < 3 * 86400 + 1300  # Close's 3 days (20-minute tries)
    gaps = [b.at - a.at for a, b in zip(dispatcher.attempts, dispatcher.attempts[2:], strict=False)]
    assert max(gaps) <= 20 * 60 + 1
    assert dispatcher.pending == 0  # the queue was cleared

    (listed,) = await close.list_webhooks()
    assert listed.id == created.id
    assert listed.status is WebhookStatus.PAUSED
    assert listed.paused

    # Nothing is delivered while paused; resumed, new events flow again.
    count = len(dispatcher.attempts)
    assert hooks.publish(opportunity_event("updated", record, at=at, event_id="ev_3")) == 0
    resumed = await close.resume_webhook(created.id)
    assert resumed.status is WebhookStatus.ACTIVE
    assert hooks.publish(opportunity_event("updated", record, at=at, event_id="ev_4")) == 1
    assert len(dispatcher.attempts) == count


async def test_a_backlog_over_the_maximum_pauses_the_subscription(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    created = await close.create_webhook("http://127.0.0.1:9/never")
    hooks = _hooks(sandbox)
    hooks.dispatcher.options = DeliveryOptions(max_backlog=3)
    record = sandbox.close.records[0]
    at = datetime.now(UTC)
    for i in range(3):
        hooks.publish(opportunity_event("updated", record, at=at, event_id=f"ev_{i}"))
    assert hooks.dispatcher.pending == 0
    assert (await close.get_webhook(created.id)).paused


async def test_only_wanted_events_of_active_subscriptions_are_delivered(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    await close.create_webhook("http://127.0.0.1:9/a", events=[("opportunity", "deleted")])
    hooks = _hooks(sandbox)
    record = sandbox.close.records[0]
    at = datetime.now(UTC)
    assert hooks.publish(opportunity_event("updated", record, at=at, event_id="ev_1")) == 0
    assert hooks.publish(opportunity_event("deleted", record, at=at, event_id="ev_2")) == 1


async def test_the_dispatcher_never_sends_beyond_loopback(
    close: CloseAdapter, sandbox: Sandbox, clock: VirtualClock
) -> None:
    await close.create_webhook("https://hooks.example.com/close")
    hooks = _hooks(sandbox)
    hooks.dispatcher.clock, hooks.dispatcher.sleep = clock.now, clock.sleep
    hooks.dispatcher.options = DeliveryOptions(give_up_after=30)
    record = sandbox.close.records[0]
    hooks.publish(opportunity_event("created", record, at=datetime.now(UTC), event_id="ev_1"))
    await hooks.dispatcher.run_until_idle()
    assert all(a.status is None and "loopback" in a.note for a in hooks.dispatcher.attempts)


def test_the_sandbox_webhooks_import_nothing_of_the_sdk() -> None:
    """The emulator stays a stand-in for Close: it must not share code with the client."""
    tree = ast.parse(Path(sandbox_webhooks.__file__).read_text(encoding="utf-8"))
    absolute = [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert [name for name in absolute if name.startswith("close_opps")] == []


async def test_the_dispatcher_delivers_in_the_background_once_started(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    got: list[Change] = []
    arrived = asyncio.Event()
    created = await close.create_webhook("http://127.0.0.1:9/placeholder")

    def apply(change: Change) -> None:
        got.append(change)
        arrived.set()

    receiver = CloseWebhookReceiver(created.signature_key, apply)
    app = web.Application()
    receiver.setup(app, "/close")
    runner, url = await _serve(app)
    hooks = _hooks(sandbox)
    hooks.subscriptions[created.id].url = url
    try:
        await hooks.dispatcher.start()
        record = sandbox.close.records[0]
        at = datetime.now(UTC)
        hooks.publish(opportunity_event("created", record, at=at, event_id="ev_bg"))
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await hooks.dispatcher.aclose()
        await runner.cleanup()
    assert [c.id for c in got] == [record["id"]]
