"""Hostile answers: each defect of the hostile-input report, reproduced against 127.0.0.1.

Nothing a server sends may make the SDK raise anything but a ``CloseOppsError``, hang, leak
the key, or leave a session open. See ``tests/test_fuzz_hostile.py`` for the fuzz test.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from close_opps import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    CloseOppsError,
    DecodeError,
    GetrazeAdapter,
    Opportunity,
    OpportunityHub,
    ReevoAdapter,
    ServerError,
    TransportError,
)
from close_opps.http import RateLimit, parse_rate_limit, parse_retry_after
from close_opps.sandbox import Sandbox
from close_opps.sync import SyncError, SyncStore, sync
from tests._hostile import (
    BASIC,
    IDS,
    KEY,
    RECORDS,
    Answer,
    HostileServer,
    close_record,
    everything_said,
    getraze_record,
    json_answer,
    leaks,
    list_body,
    one_body,
    reevo_record,
)

PROVIDERS = ("close", "getraze", "reevo")
#: No answer of a few kilobytes may take longer than this (generous: a shared machine).
BOUND = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        yield running


async def get_error(server: HostileServer, provider: str, answer: Answer) -> CloseOppsError:
    """The error ``get`` raises for ``answer``, within :data:`BOUND` seconds."""
    server.answer = answer
    started = time.monotonic()
    async with server.adapter(provider) as adapter:
        with pytest.raises(CloseOppsError) as caught:
            await adapter.get(IDS[provider])
    assert time.monotonic() - started < BOUND
    return caught.value


def spoil(provider: str, value: Any) -> Any:
    """A record of ``provider`` whose number field (confidence/probability/expected_days)
    holds the raw JSON text ``value`` (a placeholder replaced in the body's text)."""
    if provider == "close":
        return close_record(confidence="__X__")
    if provider == "getraze":
        return getraze_record(probability="__X__")
    stage = {"id": "s1", "closing_probability": "40", "expected_days": "__X__"}
    return reevo_record(stage={"value": stage, "value_type": "opportunity_stage"})


def raw_answer(data: Any, placeholder: str, status: int = 200) -> Answer:
    import json

    text = json.dumps(data).replace('"__X__"', placeholder)
    return Answer(status=status, body=text.encode())


# ----------------------------------------------------------------- 1. deep nesting


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", [200, 404, 500])
async def test_deep_nesting_of_the_whole_body(
    server: HostileServer, provider: str, status: int
) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    error = await get_error(server, provider, Answer(status=status, body=body))
    assert isinstance(error, DecodeError if status == 200 else APIError)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_deep_nesting_inside_a_field(server: HostileServer, provider: str) -> None:
    deep = "[" * 3000 + "]" * 3000
    record = RECORDS[provider]()
    record["note" if provider != "reevo" else "id"] = "__X__"
    if provider == "reevo":
        record = reevo_record(notes={"value": "__X__", "value_type": "string"})
    error = await get_error(server, provider, raw_answer(one_body(provider, record), deep))
    assert isinstance(error, DecodeError)
    assert "deeper than" in str(error)


async def test_moderate_nesting_in_custom_fields_is_accepted(server: HostileServer) -> None:
    nested = "[" * 30 + "1" + "]" * 30
    record = getraze_record(custom_fields="__X__")
    server.answer = raw_answer(one_body("getraze", record), '{"deep": ' + nested + "}")
    async with server.adapter("getraze") as adapter:
        opp = await adapter.get(IDS["getraze"])
    assert "deep" in opp.custom_fields


# ------------------------------------------------- 2. numbers rejected before conversion


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("number", ["1e999999999", "-1e999999999", "1" * 30, "4e30"])
async def test_huge_integers_are_refused_at_once(
    server: HostileServer, provider: str, number: str
) -> None:
    answer = raw_answer(one_body(provider, spoil(provider, None)), number)
    error = await get_error(server, provider, answer)
    assert isinstance(error, DecodeError), error
    assert "range" in str(error) or "integer" in str(error)


async def test_integral_decimals_still_read(server: HostileServer) -> None:
    server.answer = raw_answer(one_body("close", close_record(confidence="__X__")), "4e1")
    async with server.adapter("close") as adapter:
        assert (await adapter.get("oppo_1")).confidence == 40


@pytest.mark.parametrize(
    "pagination",
    [
        '{"page": 1e999999999, "has_next": false}',
        '{"page": 1, "total_pages": 1e999999999, "has_next": false}',
        '{"page": 1, "total": 123456789012345678901234567890, "has_next": false}',
    ],
)
async def test_getraze_pagination_numbers(server: HostileServer, pagination: str) -> None:
    body = {"success": True, "data": [getraze_record()], "pagination": "__X__"}
    server.answer = raw_answer(body, pagination)
    started = time.monotonic()
    async with server.adapter("getraze") as adapter:
        with pytest.raises(DecodeError, match="pagination"):
            [opp async for opp in adapter.list()]
    assert time.monotonic() - started < BOUND


@pytest.mark.parametrize("probability", ['"1e999999999"', "1e999999999", '"1e-999999999"'])
async def test_reevo_closing_probability(server: HostileServer, probability: str) -> None:
    stage = {"id": "s1", "display_value": "Q", "closing_probability": "__X__"}
    record = reevo_record(stage={"value": stage, "value_type": "opportunity_stage"})
    server.answer = raw_answer(one_body("reevo", record), probability)
    started = time.monotonic()
    async with server.adapter("reevo") as adapter:
        try:
            opp = await adapter.get(IDS["reevo"])
        except DecodeError:
            pass
        else:
            assert opp.confidence in (None, 0)
    assert time.monotonic() - started < BOUND


async def test_integers_too_long_for_any_field_are_refused(server: HostileServer) -> None:
    record = getraze_record(custom_fields={"n": "__X__"})
    error = await get_error(server, "getraze", raw_answer(one_body("getraze", record), "9" * 500))
    assert isinstance(error, DecodeError)


# ------------------------------------------------------------------- 3. Close's cents


@pytest.mark.parametrize("value", ["1e999999999", '"1e999999999"', '"-1E+1000000"', "1e-999"])
async def test_close_value_out_of_range(server: HostileServer, value: str) -> None:
    answer = raw_answer(close_record(value="__X__"), value)
    error = await get_error(server, "close", answer)
    assert isinstance(error, DecodeError)
    assert error.path == "$.value"


# ---------------------------------------------------------------- 4. calendar edges


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_timestamps_at_the_edge_of_the_calendar(
    server: HostileServer, provider: str, stamp: str
) -> None:
    if provider == "close":
        record = close_record(date_updated=stamp)
    elif provider == "getraze":
        record = getraze_record(updated_at=stamp)
    else:
        record = reevo_record(closed_at={"value": stamp, "value_type": "timestamp"})
    error = await get_error(server, provider, json_answer(one_body(provider, record)))
    assert isinstance(error, DecodeError)


# ----------------------------------------------------------- 5. unreadable rate limits


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit": "limit=inf, remaining=1, reset=1"},
        {"X-RateLimit-Limit": "1e999"},
        {"X-RateLimit-Remaining": "inf"},
        {"X-RateLimit-Reset": "1e300"},
        {"X-RateLimit-Reset": "nan", "X-Rate-Limit-Limit": "-5"},
        {"Retry-After": "Mon, 01 Jan 0001 00:00:00 +0100"},
    ],
)
async def test_unreadable_rate_limit_headers_never_lose_a_page(
    server: HostileServer, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    server.answer = json_answer(close_record(), headers=headers)
    with caplog.at_level(logging.DEBUG, logger="close_opps.http"):
        async with server.adapter("close") as adapter:
            opp = await adapter.get("oppo_1")
            assert opp.id == "oppo_1"
            if adapter.rate_limit is not None:
                adapter.rate_limit.resets_at  # noqa: B018 - must not raise
    if "Retry-After" not in headers:
        assert any("ignoring" in r.getMessage() for r in caplog.records)


def test_resets_at_never_raises() -> None:
    far = RateLimit(limit=1, remaining=0, reset=1e300, observed_at=datetime.now(UTC))
    assert far.resets_at == datetime.max.replace(tzinfo=UTC)
    assert parse_rate_limit({"X-RateLimit-Reset": "1e300"}) is None
    assert parse_retry_after({"Retry-After": "inf"}) is None
    assert parse_retry_after({"Retry-After-Ms": "1e999"}) is None


# --------------------------------------------------------------------- 7. echoed keys


ECHOES = [
    json_answer({"error": f"Invalid API key {KEY}. You sent: Basic {BASIC}"}, status=401),
    json_answer({"error": f"bad key {KEY}"}, status=404),
    json_answer({"error": {"code": KEY, "message": f"Bearer {KEY}"}}, status=500),
    Answer(status=401, body=f"<html><p>Authorization: Basic {BASIC}</p></html>".encode()),
    json_answer({"detail": [{"loc": ["body", KEY], "msg": BASIC}]}, status=422),
    json_answer({"error": "nope"}, 401, {"X-Request-Id": KEY, "X-Echo": f"Basic {BASIC}"}),
    Answer(status=200, body=f"not json: {KEY} {BASIC}".encode()),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("answer", ECHOES)
async def test_echoed_credentials_are_redacted_from_errors(
    server: HostileServer, provider: str, answer: Answer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        error = await get_error(server, provider, answer)
        logging.getLogger("close_opps.hub").warning("failed: %s", error)
    assert leaks(everything_said(error)) == []
    assert "***" in everything_said(error)
    assert leaks(caplog.text) == []


async def test_authentication_error_code_and_request_id(server: HostileServer) -> None:
    answer = json_answer({"error": KEY, "message": "x"}, 401, {"X-Request-Id": KEY})
    error = await get_error(server, "reevo", answer)
    assert isinstance(error, AuthenticationError)
    assert error.code == "***"
    assert error.request_id == "***"


async def test_retry_log_records_are_redacted(
    server: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.answer = json_answer({"error": f"down, key {KEY} / {BASIC}"}, status=503)
    with caplog.at_level(logging.DEBUG):
        async with server.adapter("close", max_retries=2) as adapter:
            with pytest.raises(ServerError):
                await adapter.get("oppo_1")
        # stamina's own record, as it logs retries elsewhere (repr of the exception)
        logging.getLogger("stamina").warning(
            "stamina.retry_scheduled", extra={"stamina.caused_by": f"Error('{BASIC}')"}
        )
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert any(r.name == "stamina" for r in caplog.records)
    for record in caplog.records:
        assert leaks(repr(vars(record))) == [], record


# ------------------------------------------------------------ 8. keys in decode errors


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("form", [KEY, BASIC])
async def test_a_field_holding_the_key_is_not_quoted(
    server: HostileServer, provider: str, form: str
) -> None:
    if provider == "reevo":
        record = reevo_record(display_name={"value": 1, "value_type": "string"})
        record["created_at"] = form
    else:  # the parser's own message quotes the value it could not read
        field = "date_updated" if provider == "close" else "updated_at"
        record = RECORDS[provider](**{field: form})
    error = await get_error(server, provider, json_answer(one_body(provider, record)))
    assert isinstance(error, DecodeError)
    assert leaks(everything_said(error)) == []


async def test_a_record_id_holding_the_key_is_redacted(server: HostileServer) -> None:
    record = close_record(id=KEY, date_updated="yesterday")
    error = await get_error(server, "close", json_answer(record))
    assert isinstance(error, DecodeError)
    assert error.record_id == "***"
    assert leaks(everything_said(error)) == []


# ---------------------------------------------------------------- 9. after aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_closed_adapter_refuses_and_opens_nothing(
    server: HostileServer, provider: str
) -> None:
    server.answer = json_answer(one_body(provider, RECORDS[provider]()))
    adapter = server.adapter(provider, max_retries=3)
    async with adapter:
        await adapter.get(IDS[provider])
    before = server.requests
    with pytest.raises(ClientClosedError, match="closed"):
        await adapter.get(IDS[provider])
    with pytest.raises(ClientClosedError):
        [opp async for opp in adapter.list()]
    assert server.requests == before
    assert adapter._transport._session is None


def test_an_adapter_in_a_second_event_loop(server: HostileServer) -> None:
    server.answer = json_answer(close_record())
    adapter = server.adapter("close")

    async def use() -> None:
        await adapter.get("oppo_1")
        await adapter.aclose()

    asyncio.run(use())
    with pytest.raises(ClientClosedError):
        asyncio.run(adapter.get("oppo_1"))


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unclosed_adapter_in_a_second_event_loop(server: HostileServer) -> None:
    """Never closed, the first loop's session leaks (nothing can close it once its loop has
    ended); what matters is a clear error instead of "Event loop is closed"."""
    server.answer = json_answer(close_record())
    adapter = server.adapter("close", max_retries=3)
    asyncio.run(adapter.get("oppo_1"))
    with pytest.raises(ClientClosedError, match="another event loop"):
        asyncio.run(adapter.get("oppo_1"))
    del adapter
    gc.collect()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_aclose_with_a_request_in_flight(server: HostileServer, provider: str) -> None:
    server.answer = json_answer(one_body(provider, RECORDS[provider]()))
    server.answer.delay = 0.3
    adapter = server.adapter(provider, max_retries=4)
    before = server.requests
    fetch = asyncio.ensure_future(adapter.get(IDS[provider]))
    while server.requests == before:  # noqa: ASYNC110 - a counter of the server's thread
        await asyncio.sleep(0.01)
    await adapter.aclose()
    with pytest.raises(ClientClosedError):
        await fetch
    await asyncio.sleep(0.4)
    assert server.requests == before + 1  # not retried
    assert adapter._transport._session is None


async def test_leaving_a_hub_while_listing(server: HostileServer) -> None:
    server.answer = json_answer(list_body("close", [close_record()], more=True))
    server.answer.delay = 0.05
    adapters = [server.adapter("close", max_retries=4)]
    async with OpportunityHub(adapters) as hub:
        listing = hub.list()
        await listing.__anext__()
    await listing.aclose()
    await asyncio.sleep(0.1)  # requests sent before the close reach the server's thread
    before = server.requests
    await asyncio.sleep(0.3)
    assert server.requests == before
    assert adapters[0]._transport.closed


# ------------------------------------------------------- 10. storable and printable


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfffb"', '{"\\ud800": 1}'])
async def test_lone_surrogates_are_refused(server: HostileServer, provider: str, text: str) -> None:
    record = RECORDS[provider]()
    record["extra"] = "__X__"
    error = await get_error(server, provider, raw_answer(one_body(provider, record), text))
    assert isinstance(error, DecodeError)
    assert "surrogate" in str(error)


async def test_surrogate_pairs_are_fine(server: HostileServer) -> None:
    server.answer = raw_answer(close_record(note="__X__"), '"\\ud83d\\ude00"')
    async with server.adapter("close") as adapter:
        assert (await adapter.get("oppo_1")).note == "\U0001f600"


async def test_the_store_refuses_what_it_cannot_hold(tmp_path: Any) -> None:
    now = datetime.now(UTC)
    bad = [
        Opportunity(provider="x", id="1", created_at=now, updated_at=now, name="\ud800"),
        Opportunity(provider="x", id="2", created_at=now, updated_at=now, confidence=10**30),
    ]
    async with SyncStore(tmp_path / "s.db") as store:
        for opp in bad:
            with pytest.raises(DecodeError, match="cannot be stored"):
                await store.upsert("x", [opp])
        assert await store.count() == 0


async def test_one_bad_close_record_does_not_stop_the_others(
    server: HostileServer, tmp_path: Any
) -> None:
    records = [close_record(id=f"oppo_{i}") for i in range(300)]
    records[150]["confidence"] = "__X__"
    server.answer = raw_answer(list_body("close", records), "1" * 30)
    async with Sandbox(seed=1, vendors=["getraze", "reevo"]) as sb:
        adapters = {
            "close": server.adapter("close"),
            "getraze": GetrazeAdapter(sb.getraze.api_key, base_url=sb.getraze.base_url),
            "reevo": ReevoAdapter(sb.reevo.api_key, base_url=sb.reevo.base_url),
        }
        async with OpportunityHub(adapters) as hub, SyncStore(tmp_path / "s.db") as store:
            with pytest.raises(SyncError) as caught:
                await sync(hub, store)
            assert set(caught.value.errors) == {"close"}
            assert isinstance(caught.value.errors["close"], DecodeError)
            assert set(caught.value.reports) == {"getraze", "reevo"}
            assert await store.count("getraze") == len(sb.getraze.ids)
            assert await store.count("reevo") == len(sb.reevo.ids)
            marks = await store.watermarks()
            assert set(marks) == {"getraze", "reevo"}


async def test_a_watermark_at_the_start_of_the_calendar(
    server: HostileServer, tmp_path: Any
) -> None:
    server.answer = json_answer(list_body("close", [close_record()]))
    async with SyncStore(tmp_path / "s.db") as store:
        await store.set_watermark("close", datetime.min.replace(tzinfo=UTC))
        async with server.adapter("close") as adapter:
            reports = await sync([adapter], store)
    assert reports["close"].total == 1


# ------------------------------------------------------------------- the command line


def cli(server: HostileServer, *args: str) -> Any:
    from tests.test_cli import invoke

    return invoke([*args, "--base-url", server.base_url("close"), "--api-key", KEY])


@pytest.mark.parametrize("answer", ECHOES)
def test_cli_error_line_shows_no_key(server: HostileServer, answer: Answer) -> None:
    server.answer = answer
    result = cli(server, "get", "close", "oppo_1", "--retries", "0")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert leaks(result.output + result.stderr) == []


def test_cli_list_with_a_bad_record_is_one_error_line(server: HostileServer) -> None:
    records = [close_record(id=f"oppo_{i}") for i in range(300)]
    records[150]["note"] = "__X__"
    server.answer = raw_answer(list_body("close", records), '"\\ud800"')
    result = cli(server, "list", "close", "--format", "jsonl", "--retries", "0")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.startswith("close-opps: error: close:")
    assert len(result.stderr.splitlines()) == 1
    assert "surrogate" in result.stderr


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_cli_prints_hostile_text_harmlessly(server: HostileServer, fmt: str) -> None:
    name = f"[/x] \x1b[2J\u202e {KEY} Basic {BASIC}"
    server.answer = json_answer(list_body("close", [close_record(lead_name=name)]))
    result = cli(server, "list", "close", "--format", fmt, "--retries", "0")
    assert result.exit_code == 0, result.output
    assert leaks(result.stdout) == []
    if fmt != "csv":  # CSV is data for a file: its text is written as received
        assert "\x1b" not in result.stdout
    if fmt == "table":
        assert "[/x]" in result.stdout
    server.answer = json_answer(close_record(lead_name=name))
    result = cli(server, "get", "close", "oppo_1", "--format", "table", "--retries", "0")
    assert result.exit_code == 0, result.output
    assert leaks(result.stdout) == []
    assert "\x1b" not in result.stdout


# --------------------------------------------------------------------- siblings found


@pytest.mark.parametrize(
    "location", ["http://[::1", "http://127.0.0.1:99999/", "http://[zz]/", "mailto:x"]
)
async def test_an_unreadable_redirect_is_a_transport_error(
    server: HostileServer, location: str
) -> None:
    error = await get_error(server, "close", Answer(status=302, headers={"Location": location}))
    assert isinstance(error, TransportError)


@pytest.mark.parametrize("message", ["max_skip=" + "9" * 5000, "_limit at most " + "9" * 5000])
async def test_a_huge_maximum_in_an_error_message(server: HostileServer, message: str) -> None:
    server.answer = json_answer({"error": message}, status=400)
    async with server.adapter("close") as adapter:
        with pytest.raises(CloseOppsError):
            [opp async for opp in adapter.list()]
    async with server.adapter("reevo") as adapter:
        with pytest.raises(CloseOppsError):
            [opp async for opp in adapter.list(page_size=500)]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_leaving_async_with_while_pages_are_in_flight(
    server: HostileServer, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    records = [RECORDS[provider]()]
    body = list_body(provider, records, more=True)
    if provider == "close":
        body["total_results"] = 1000
    server.answer = json_answer(body)
    server.answer.delay = 0.05
    adapter = server.adapter(provider, max_retries=4, concurrency=4)
    async with adapter:
        listing = adapter.list(page_size=1)
        await listing.__anext__()
    with pytest.raises(ClientClosedError):
        await listing.__anext__()
    await listing.aclose()
    await asyncio.sleep(0.1)  # requests sent before the close reach the server's thread
    before = server.requests
    await asyncio.sleep(0.3)
    gc.collect()
    assert server.requests == before
    assert adapter._transport._session is None
    assert "never retrieved" not in caplog.text


async def test_close_change_feed_with_an_event_at_the_start_of_the_calendar(
    server: HostileServer,
) -> None:
    records = [close_record(id="oppo_1"), close_record(id="oppo_2")]
    server.answer = json_answer(list_body("close", records))
    start = datetime.min.replace(tzinfo=UTC)
    async with server.adapter("close") as adapter:
        current = adapter._current({"oppo_1": start, "oppo_2": start})  # type: ignore[attr-defined]
        changes = [change async for change in current]
    assert len(changes) == 2


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"event": "\\ud800"}', b'{"n": ' + b"9" * 500 + b"}"],
)
def test_a_hostile_webhook_delivery_is_a_decode_error(body: bytes) -> None:
    from close_opps.webhooks import parse_close_delivery

    with pytest.raises(DecodeError):
        parse_close_delivery(body)
    with pytest.raises(DecodeError):
        parse_close_delivery(body.decode("utf-8"))


def test_a_cursor_naming_a_huge_count_is_refused_at_once() -> None:
    import base64
    import json
    import zlib

    from close_opps.errors import InvalidCursorError
    from close_opps.feed import decode_cursor

    header = json.dumps({"v": 1, "p": "getraze", "n": 10**12}).encode()
    blob = base64.urlsafe_b64encode(zlib.compress(header + b"\n[]")).decode().rstrip("=")
    started = time.monotonic()
    with pytest.raises(InvalidCursorError):
        decode_cursor("coc1." + blob, provider="getraze")
    assert time.monotonic() - started < BOUND
