"""CloseAdapter webhook subscriptions against the Close emulator (and a few mocked answers)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aioresponses import aioresponses

from close_opps import CloseAdapter, DecodeError, InvalidRequestError, NotFoundError, ServerError
from close_opps.sandbox import Fault, Sandbox
from close_opps.sandbox.close_webhooks import WEBHOOKS, CloseWebhooks
from close_opps.webhooks import (
    CreatedWebhook,
    WebhookEvent,
    WebhookStatus,
    WebhookSubscription,
)

URL = "http://127.0.0.1:9/hooks/close"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=3, records=5, vendors=["close"]) as running:
        yield running


@pytest.fixture
async def close(sandbox: Sandbox) -> AsyncIterator[CloseAdapter]:
    async with CloseAdapter(sandbox.close.api_key, base_url=sandbox.close.base_url) as adapter:
        yield adapter


def _hooks(sandbox: Sandbox) -> CloseWebhooks:
    return sandbox.close.app[WEBHOOKS]


def _posts(sandbox: Sandbox) -> int:
    return sum(
        1 for r in sandbox.close.requests if r.method == "POST" and r.path.endswith("/webhook/")
    )


async def test_create_list_get_delete(close: CloseAdapter, sandbox: Sandbox) -> None:
    created = await close.create_webhook(URL)
    assert isinstance(created, CreatedWebhook)
    assert created.id.startswith("whsub_")
    key = created.signature_key.reveal()
    assert len(key) == 64
    assert key == _hooks(sandbox).subscriptions[created.id].signature_key
    assert key not in repr(created)
    assert key not in str(created)
    assert created.subscription.status is WebhookStatus.ACTIVE
    assert created.subscription.events == (
        WebhookEvent(object_type="opportunity", action="created"),
        WebhookEvent(object_type="opportunity", action="updated"),
        WebhookEvent(object_type="opportunity", action="deleted"),
    )
    assert "signature_key" not in created.subscription.raw

    listed = await close.list_webhooks()
    assert [s.id for s in listed] == [created.id]
    assert listed[0].url == URL
    assert await close.get_webhook(created.id) == listed[0]

    await close.delete_webhook(created.id)
    assert await close.list_webhooks() == []
    with pytest.raises(NotFoundError):
        await close.delete_webhook(created.id)


async def test_create_takes_events_in_several_forms(close: CloseAdapter) -> None:
    extra = {"type": "field_accessor", "field": "changed_fields", "filter": {"type": "non_null"}}
    created = await close.create_webhook(
        URL,
        events=[
            ("opportunity", "created"),
            {"object_type": "opportunity", "action": "updated", "extra_filter": extra},
        ],
        verify_ssl=False,
    )
    assert created.subscription.verify_ssl is False
    assert created.subscription.events[1].extra_filter == extra
    with pytest.raises(ValueError, match="at least one"):
        await close.create_webhook(URL, events=[])


async def test_the_emulator_refuses_a_bad_create(close: CloseAdapter) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await close.create_webhook("not a url")
    assert "url" in caught.value.field_errors


async def test_list_pages_through_has_more(
    close: CloseAdapter, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = _hooks(sandbox)
    for i in range(30):
        hooks.create(f"http://127.0.0.1:9/{i}", [{"object_type": "lead", "action": "created"}])
    monkeypatch.setattr("close_opps.adapters._close_webhooks._LIST_PAGE", 7)
    listed = await close.list_webhooks()
    assert [s.url for s in listed] == [f"http://127.0.0.1:9/{i}" for i in range(30)]
    lists = [r for r in sandbox.close.requests if r.method == "GET"]
    assert [r.query["_skip"] for r in lists] == ["0", "7", "14", "21", "28"]


async def test_a_paused_subscription_is_reported_and_can_be_resumed(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    created = await close.create_webhook(URL)
    _hooks(sandbox).subscriptions[created.id].status = "paused"
    (listed,) = await close.list_webhooks()
    assert listed.status is WebhookStatus.PAUSED
    assert listed.paused
    resumed = await close.resume_webhook(created.id)
    assert resumed.status is WebhookStatus.ACTIVE
    assert not resumed.paused
    assert not (await close.get_webhook(created.id)).paused


@pytest.mark.parametrize(
    "fault",
    [
        Fault.incomplete(),
        Fault.malformed("truncated_json", status=502),
        Fault.malformed("truncated_json", status=200),
    ],
    ids=[
        "connection dropped after the create",
        "502 after the create",
        "unreadable answer to the create",
    ],
)
async def test_a_create_whose_answer_is_lost_is_never_duplicated(
    close: CloseAdapter, sandbox: Sandbox, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    # The first read is the listing before the create; the POST itself creates the
    # subscription and loses the answer (and its key).
    sandbox.close.script(Fault.ok(), fault)
    with caplog.at_level(logging.INFO, logger="close_opps"):
        created = await close.create_webhook(URL)
    subs = _hooks(sandbox).subscriptions
    assert list(subs) == [created.id]  # exactly one subscription
    assert created.signature_key.reveal() == subs[created.id].signature_key
    assert _posts(sandbox) == 2  # the lost create and one more, after deleting the orphan
    assert "deleting it before creating again" in caplog.text
    assert created.signature_key.reveal() not in caplog.text


async def test_a_create_refused_before_anything_is_retried(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    sandbox.close.script(Fault.ok(), Fault.server_error(503), Fault.ok(), Fault.rate_limit())
    created = await close.create_webhook(URL)
    assert list(_hooks(sandbox).subscriptions) == [created.id]
    assert _posts(sandbox) == 3


async def test_a_create_is_not_retried_when_it_says_no(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    sandbox.close.script(Fault.ok(), Fault.respond(400, {"error": "nope"}))
    with pytest.raises(InvalidRequestError):
        await close.create_webhook(URL)
    assert _posts(sandbox) == 1


async def test_a_pre_existing_identical_subscription_is_left_alone(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    first = await close.create_webhook(URL)
    sandbox.close.script(Fault.ok(), Fault.malformed("truncated_json", status=502))
    second = await close.create_webhook(URL)
    assert set(_hooks(sandbox).subscriptions) == {first.id, second.id}


async def test_when_the_listing_shows_the_key_the_lost_create_is_used() -> None:
    base = "http://127.0.0.1:1/api/v1"
    sub = {
        "id": "whsub_1",
        "url": URL,
        "events": [{"object_type": "opportunity", "action": "created"}],
        "status": "active",
        "signature_key": "ab" * 32,
    }
    async with CloseAdapter("k", base_url=base, max_retries=2) as close:
        with aioresponses() as mock:
            mock.get(f"{base}/webhook/?_skip=0&_limit=100", payload={"data": [], "has_more": False})
            mock.post(f"{base}/webhook/", status=500, payload={"error": "boom"})
            mock.get(
                f"{base}/webhook/?_skip=0&_limit=100", payload={"data": [sub], "has_more": False}
            )
            created = await close.create_webhook(URL, events=[("opportunity", "created")])
    assert created.id == "whsub_1"
    assert created.signature_key.reveal() == "ab" * 32


async def test_with_no_retries_an_ambiguous_failure_is_raised_after_the_lookup() -> None:
    base = "http://127.0.0.1:1/api/v1"
    empty = {"data": [], "has_more": False}
    async with CloseAdapter("k", base_url=base, max_retries=0) as close:
        with aioresponses() as mock:
            mock.get(f"{base}/webhook/?_skip=0&_limit=100", payload=empty)
            mock.post(f"{base}/webhook/", status=500, payload={"error": "boom"})
            mock.get(f"{base}/webhook/?_skip=0&_limit=100", payload=empty)
            with pytest.raises(ServerError):
                await close.create_webhook(URL)


async def test_a_create_answer_without_a_key_is_a_decode_error() -> None:
    base = "http://127.0.0.1:1/api/v1"
    async with CloseAdapter("k", base_url=base) as close:
        with aioresponses() as mock:
            mock.get(f"{base}/webhook/?_skip=0&_limit=100", payload={"data": [], "has_more": False})
            mock.post(
                f"{base}/webhook/",
                status=201,
                payload={"id": "whsub_1", "url": URL, "events": [], "status": "active"},
            )
            with pytest.raises(DecodeError) as caught:
                await close.create_webhook(URL)
    assert caught.value.path == "$.signature_key"


async def test_an_unknown_status_is_kept_as_unknown(caplog: pytest.LogCaptureFixture) -> None:
    base = "http://127.0.0.1:1/api/v1"
    async with CloseAdapter("k", base_url=base) as close:
        with aioresponses() as mock:
            mock.get(
                f"{base}/webhook/whsub_1/",
                payload={"id": "whsub_1", "url": URL, "events": [], "status": "disabled"},
            )
            sub = await close.get_webhook("whsub_1")
    assert isinstance(sub, WebhookSubscription)
    assert sub.status is WebhookStatus.UNKNOWN
    assert sub.raw["status"] == "disabled"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"data": "x"}, "$.data"),
        ({"data": [{"url": URL}], "has_more": False}, "$.data[0].id"),
        ({"data": [{"id": "whsub_1", "url": 3}], "has_more": False}, "$.data[0].url"),
        (
            {"data": [{"id": "whsub_1", "url": URL, "events": [{"action": 1}]}]},
            "$.data[0].events[0].object_type",
        ),
    ],
)
async def test_a_malformed_list_names_the_field(body: object, path: str) -> None:
    base = "http://127.0.0.1:1/api/v1"
    async with CloseAdapter("k", base_url=base) as close:
        with aioresponses() as mock:
            mock.get(f"{base}/webhook/?_skip=0&_limit=100", payload=body)
            with pytest.raises(DecodeError) as caught:
                await close.list_webhooks()
    assert caught.value.path == path


async def test_an_ambiguous_delete_is_checked_before_it_is_sent_again(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    created = await close.create_webhook(URL)
    # DELETE is not a "read" for the fault injector, so the failure is mocked around it.
    base = sandbox.close.base_url
    with aioresponses(passthrough=[sandbox.close.origin]) as mock:
        mock.delete(f"{base}/webhook/{created.id}/", status=502, body="<html>")
        await close.delete_webhook(created.id)  # the read-back finds it, the retry deletes it
    assert _hooks(sandbox).subscriptions == {}


async def test_an_ambiguous_resume_reads_back_the_status(
    close: CloseAdapter, sandbox: Sandbox
) -> None:
    created = await close.create_webhook(URL)
    _hooks(sandbox).subscriptions[created.id].status = "paused"
    base = sandbox.close.base_url
    with aioresponses(passthrough=[sandbox.close.origin]) as mock:
        mock.put(f"{base}/webhook/{created.id}/", status=504, body="")
        resumed = await close.resume_webhook(created.id)
    assert resumed.status is WebhookStatus.ACTIVE
    puts = [r for r in sandbox.close.requests if r.method == "PUT"]
    assert len(puts) == 1  # the mocked one never reached the emulator


async def test_a_delete_answered_without_a_body_is_done() -> None:
    base = "http://127.0.0.1:1/api/v1"
    async with CloseAdapter("k", base_url=base) as close:
        with aioresponses() as mock:
            mock.delete(f"{base}/webhook/whsub_1/", status=200, body="")
            await close.delete_webhook("whsub_1")


def test_webhook_events_compare_their_filters_and_stay_hashable() -> None:
    plain = WebhookEvent(object_type="opportunity", action="updated")
    filtered = WebhookEvent(
        object_type="opportunity", action="updated", extra_filter={"type": "non_null"}
    )
    assert plain != filtered
    assert len({plain, filtered}) == 2
