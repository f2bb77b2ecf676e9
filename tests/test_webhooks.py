"""Close webhooks: signatures (every vector of the vendor examples), parsing, the ledger."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import traceback
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from close_opps import Change, ChangeKind, CloseOppsError, DecodeError, WebhookSignatureError
from close_opps.http import Secret
from close_opps.model import OpportunityStatus
from close_opps.webhooks import (
    ChangeLedger,
    EventDataMissingError,
    Verdict,
    parse_close_delivery,
    read_close_delivery,
    verify_close_signature,
)

EXAMPLES_NAME = "close-events-examples.json"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "vendor-docs" / EXAMPLES_NAME
COPY = Path(__file__).parent / "sandbox" / "fixtures" / EXAMPLES_NAME  # the one copy
KEY = "5766b2447c7b51c5a08643792532e310eabfde421c0bb49b9bb2838e1d0cc1ca"


def _examples() -> list[tuple[str, dict[str, Any]]]:
    """The examples copied into tests/sandbox/fixtures, and the shared original when it is
    beside us."""
    sources = [("fixtures", json.loads(COPY.read_text(encoding="utf-8")))]
    if SHARED.is_file():
        sources.append(("shared", json.loads(SHARED.read_text(encoding="utf-8"))))
    return sources


EXAMPLES = _examples()[0][1]


def _resolve(examples: dict[str, Any], ref: str) -> str:
    section, _, rest = ref.partition("[")
    index, _, field = rest.partition("].")
    return str(examples[section][int(index)][field])


def _vector_cases() -> list[Any]:
    cases = []
    for source, examples in _examples():
        for vector in examples["signature_test_vectors"]:
            body = vector.get("raw_body")
            if body is None:
                body = _resolve(examples, vector["raw_body_ref"])
            cases.append(pytest.param(vector, body, id=f"{source}: {vector['name']}"))
    return cases


def test_the_copied_examples_match_the_shared_original() -> None:
    if not SHARED.is_file():
        pytest.skip("shared/vendor-docs is not beside the repository")
    assert COPY.read_bytes() == SHARED.read_bytes()


@pytest.mark.parametrize(("vector", "body"), _vector_cases())
def test_every_signature_vector_gives_the_answer_it_states(
    vector: dict[str, Any], body: str
) -> None:
    headers = {
        "close-sig-timestamp": vector["close_sig_timestamp"],
        "close-sig-hash": vector["close_sig_hash_header"],
    }
    now = float(vector["close_sig_timestamp"])
    raw = body.encode("utf-8")
    # The vector's own digest is what the rule computes (the file is self-consistent).
    computed = hmac.new(
        bytes.fromhex(vector["signature_key_hex"]),
        vector["close_sig_timestamp"].encode() + raw,
        hashlib.sha256,
    ).hexdigest()
    assert computed == vector["hmac_sha256_hex"]
    if vector["expected_valid"]:
        verify_close_signature(vector["signature_key_hex"], headers, raw, now=now)
    else:
        with pytest.raises(WebhookSignatureError):
            verify_close_signature(vector["signature_key_hex"], headers, raw, now=now)


def _signed(body: bytes, *, key: str = KEY, ts: int = 1_718_341_812) -> dict[str, str]:
    digest = hmac.new(bytes.fromhex(key), str(ts).encode() + body, hashlib.sha256).hexdigest()
    return {"Close-Sig-Timestamp": str(ts), "Close-Sig-Hash": digest}


BODY = b'{"subscription_id":"whsub_x","event":{"id":"ev_1"}}'


def test_header_names_are_case_insensitive_and_a_secret_key_works() -> None:
    headers = _signed(BODY)
    verify_close_signature(Secret(KEY), headers, BODY, now=1_718_341_812)
    upper = {k.upper(): v.upper() for k, v in headers.items()}  # hex digits in capitals too
    verify_close_signature(KEY, upper, BODY, now=1_718_341_812)


def test_a_tampered_body_is_refused() -> None:
    headers = _signed(BODY)
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_close_signature(KEY, headers, BODY.replace(b"ev_1", b"ev_2"), now=1_718_341_812)


def test_a_wrong_key_is_refused_and_the_key_is_never_echoed() -> None:
    other = "d586429b2e3592dc13adc79a76778ecc2e2778e52edd3b551be4b28f96fc9abf"
    with pytest.raises(WebhookSignatureError) as caught:
        verify_close_signature(other, _signed(BODY), BODY, now=1_718_341_812)
    assert isinstance(caught.value, CloseOppsError)
    text = "".join(traceback.format_exception(caught.value))
    assert other not in text
    assert KEY not in text


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**6])
def test_stale_and_future_timestamps_are_refused(offset: int) -> None:
    headers = _signed(BODY)
    with pytest.raises(WebhookSignatureError, match="timestamp"):
        verify_close_signature(KEY, headers, BODY, now=1_718_341_812 + offset)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamps_within_the_tolerance_pass(offset: int) -> None:
    verify_close_signature(KEY, _signed(BODY), BODY, now=1_718_341_812 + offset)


def test_the_tolerance_is_configurable() -> None:
    headers = _signed(BODY)
    verify_close_signature(KEY, headers, BODY, now=1_718_341_812 + 3600, tolerance=7200)
    with pytest.raises(WebhookSignatureError):
        verify_close_signature(KEY, headers, BODY, now=1_718_341_812 + 61, tolerance=60)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"close-sig-timestamp": "1718341812"}, "close-sig-hash header is missing"),
        ({"close-sig-hash": "0" * 64}, "close-sig-timestamp header is missing"),
        ({"close-sig-timestamp": "soon", "close-sig-hash": "0" * 64}, "not a Unix time"),
        ({"close-sig-timestamp": "1718341812", "close-sig-hash": "zz"}, "64 hex"),
        ({"close-sig-timestamp": "1718341812", "close-sig-hash": "é" * 64}, "64 hex"),
    ],
)
def test_missing_or_malformed_headers_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(WebhookSignatureError, match=message):
        verify_close_signature(KEY, headers, BODY, now=1_718_341_812)


def test_a_key_that_is_not_hex_is_a_configuration_error_that_does_not_quote_it() -> None:
    bad = "not-a-hex-key-but-a-secret-nonetheless"
    with pytest.raises(ValueError, match="hex") as caught:
        verify_close_signature(bad, _signed(BODY), BODY, now=1_718_341_812)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None  # no chained error quoting a position in the key
    assert bad not in "".join(traceback.format_exception(caught.value))


# ---------------------------------------------------------------------------------- parsing


def _delivery(name: str) -> bytes:
    for delivery in EXAMPLES["webhook_deliveries"]:
        if delivery["name"] == name:
            if "raw_body" in delivery:
                return str(delivery["raw_body"]).encode()
            return json.dumps(delivery["body_json"]).encode()
    raise KeyError(name)


def _event_body(event: dict[str, Any]) -> bytes:
    return json.dumps({"subscription_id": "whsub_x", "event": event}).encode()


def test_a_created_opportunity_is_an_upsert_carrying_the_record() -> None:
    changes = parse_close_delivery(_delivery("opportunity.created"))
    assert len(changes) == 1
    change = changes[0]
    assert change.kind is ChangeKind.UPSERT
    assert change.provider == "close"
    assert change.id == "oppo_QVk3NOcnjS5uMrY15AO9G964o27WTWDjI9TlsBken1H"
    assert change.occurred_at == datetime(2024, 6, 14, 5, 10, 11, 130000, tzinfo=UTC)
    assert change.opportunity is not None
    assert change.opportunity.amount is not None
    assert change.opportunity.amount.amount == Decimal("2500")
    assert change.opportunity.status is OpportunityStatus.OPEN


def test_a_consolidated_update_is_an_upsert_of_the_new_state() -> None:
    delivery = read_close_delivery(_delivery("opportunity.updated (consolidated)"))
    assert delivery.event_id == "ev_mutu5yy45KcTyMxM377d8r"
    assert delivery.occurred_at == datetime(2024, 6, 14, 5, 20, 42, 506000, tzinfo=UTC)
    assert delivery.subscription_id == "whsub_C2aQPfLAA0rAmJ6ofTpNLj"
    (change,) = delivery.changes
    assert change.opportunity is not None
    assert change.opportunity.status is OpportunityStatus.WON
    assert change.opportunity.custom_fields["cf_PiJIRbYN4xQAFIaSAmCA8ZzZcndGiFODGC1QloBCdZ0"] == (
        "Premium"
    )


@pytest.mark.parametrize(
    "name", ["opportunity.deleted", "opportunity.deleted caused by lead deletion"]
)
def test_a_deletion_direct_or_cascaded_from_a_lead_is_a_delete(name: str) -> None:
    (change,) = parse_close_delivery(_delivery(name))
    assert change.kind is ChangeKind.DELETE
    assert change.opportunity is None
    assert change.id.startswith("oppo_")


def test_a_deletion_with_data_as_an_empty_object_is_a_delete() -> None:
    event = EXAMPLES["single_events"]["opportunity_deleted_data_empty_object"]["event"]
    (change,) = parse_close_delivery(_event_body(event))
    assert change == Change.delete(
        "close",
        "oppo_q9HsjCBpWmEeDZXtUVRjGP8E3wUVBrFWGl8OGwdAbbG",
        occurred_at=datetime(2024, 6, 14, 5, 25, 0, 310000, tzinfo=UTC),
    )


def test_the_docs_example_is_keyed_on_object_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="close_opps.webhooks"):
        (change,) = parse_close_delivery(_delivery(EXAMPLES["webhook_deliveries"][4]["name"]))
    assert change.id == "oppo_7H4sjNso7FyBFaeR3RXi5PMJbilfo0c6UPCxsJtEhCO"
    assert change.opportunity is not None
    assert change.opportunity.status is OpportunityStatus.WON
    assert "differs from object_id" in caplog.text


@pytest.mark.parametrize(
    "event",
    [
        ev
        for ev in EXAMPLES["lead_deletion_cascade"]["events_newest_first"]
        + EXAMPLES["lead_merge"]["events_newest_first"]
        if ev["object_type"] != "opportunity"
    ],
    ids=lambda ev: f"{ev['object_type']}.{ev['action']}",
)
def test_events_of_other_object_types_give_no_change(event: dict[str, Any]) -> None:
    assert parse_close_delivery(_event_body(event)) == []


def test_a_merge_moving_an_opportunity_is_an_upsert() -> None:
    (event,) = [
        ev
        for ev in EXAMPLES["lead_merge"]["events_newest_first"]
        if ev["object_type"] == "opportunity"
    ]
    (change,) = parse_close_delivery(_event_body(event))
    assert change.kind is ChangeKind.UPSERT


def test_an_unknown_opportunity_action_gives_no_change() -> None:
    event = {**EXAMPLES["single_events"]["opportunity_created"]["event"], "action": "merged"}
    assert parse_close_delivery(_event_body(event)) == []


def test_an_update_without_data_names_the_opportunity_to_fetch() -> None:
    event = EXAMPLES["single_events"]["opportunity_event_non_admin_older_than_1h_unverified"][
        "event"
    ]
    delivery = read_close_delivery(_event_body(event))
    assert delivery.needs_fetch
    assert delivery.changes == ()
    with pytest.raises(EventDataMissingError) as caught:
        parse_close_delivery(_event_body(event))
    assert isinstance(caught.value, DecodeError)
    assert caught.value.opportunity_id == "oppo_QVk3NOcnjS5uMrY15AO9G964o27WTWDjI9TlsBken1H"
    assert caught.value.event_id == "ev_mutu5yy45KcTyMxM377d8r"


def test_a_decoded_mapping_is_accepted_too() -> None:
    body = json.loads(_delivery("opportunity.created"))
    assert parse_close_delivery(body) == parse_close_delivery(_delivery("opportunity.created"))


CREATED = EXAMPLES["single_events"]["opportunity_created"]["event"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"<html>", "$"),
        (b"[]", "$"),
        (b"{}", "$.event"),
        (b'{"event": []}', "$.event"),
        (_event_body({k: v for k, v in CREATED.items() if k != "id"}), "$.event.id"),
        (_event_body({**CREATED, "action": 3}), "$.event.action"),
        (_event_body({**CREATED, "object_type": None}), "$.event.object_type"),
        (_event_body({**CREATED, "object_id": None}), "$.event.object_id"),
        (_event_body({**CREATED, "date_updated": "yesterday"}), "$.event.date_updated"),
        (_event_body({**CREATED, "data": "oops"}), "$.event.data"),
        (
            _event_body({**CREATED, "data": {**CREATED["data"], "date_created": 5}}),
            "$.event.data.date_created",
        ),
    ],
)
def test_a_malformed_delivery_is_a_decode_error_naming_the_field(body: bytes, path: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_close_delivery(body)
    assert caught.value.path == path
    assert caught.value.provider == "close"


# ---------------------------------------------------------------------------------- ledger

T0 = datetime(2024, 6, 14, 5, 0, tzinfo=UTC)


def _upsert(seconds: int, *, oid: str = "oppo_1", name: str = "x") -> tuple[Change, datetime]:
    from close_opps.model import Opportunity

    at = T0 + timedelta(seconds=seconds)
    opp = Opportunity(
        provider="close",
        id=oid,
        name=name,
        status=OpportunityStatus.OPEN,
        created_at=T0,
        updated_at=at,
    )
    return Change.upsert(opp, occurred_at=at), at


def test_the_ledger_applies_newer_changes_only() -> None:
    ledger = ChangeLedger()
    first, t1 = _upsert(1)
    second, t2 = _upsert(2)
    assert ledger.decide(second, event_id="ev_2", occurred_at=t2) is Verdict.APPLY
    ledger.record(second, event_id="ev_2", occurred_at=t2)
    assert ledger.decide(second, event_id="ev_2", occurred_at=t2) is Verdict.DUPLICATE
    assert ledger.decide(first, event_id="ev_1", occurred_at=t1) is Verdict.STALE
    # The same event id consolidated later is newer: applied.
    third, t3 = _upsert(3)
    assert ledger.decide(third, event_id="ev_2", occurred_at=t3) is Verdict.APPLY


def test_a_deletion_is_final() -> None:
    ledger = ChangeLedger()
    update, t1 = _upsert(1)
    delete = Change.delete("close", "oppo_1", occurred_at=T0 + timedelta(seconds=2))
    ledger.record(delete, event_id="ev_d", occurred_at=T0 + timedelta(seconds=2))
    assert ledger.decide(update, event_id="ev_1", occurred_at=t1) is Verdict.DELETED
    late, t9 = _upsert(9)
    assert ledger.decide(late, event_id="ev_9", occurred_at=t9) is Verdict.DELETED


def test_a_delete_at_the_same_instant_as_an_update_wins() -> None:
    ledger = ChangeLedger()
    update, at = _upsert(1)
    ledger.record(update, event_id="ev_u", occurred_at=at)
    delete = Change.delete("close", "oppo_1", occurred_at=at)
    assert ledger.decide(delete, event_id="ev_d", occurred_at=at) is Verdict.APPLY


def test_the_ledger_is_bounded() -> None:
    ledger = ChangeLedger(max_events=3, max_objects=2)
    for i in range(10):
        change, at = _upsert(i, oid=f"oppo_{i}")
        ledger.record(change, event_id=f"ev_{i}", occurred_at=at)
    assert len(ledger) == 2
    assert len(ledger._events) == 3
    assert ledger.seen_event("ev_9", T0 + timedelta(seconds=9))
    assert not ledger.seen_event("ev_0", T0)
    with pytest.raises(ValueError, match="at least 1"):
        ChangeLedger(max_events=0)


@pytest.mark.parametrize("key", ["", "  "])
def test_an_empty_key_is_refused_so_nobody_can_sign_with_it(key: str) -> None:
    body = b"{}"
    forged = hmac.new(b"", b"1718341812" + body, hashlib.sha256).hexdigest()
    headers = {"close-sig-timestamp": "1718341812", "close-sig-hash": forged}
    with pytest.raises(ValueError, match="hex"):
        verify_close_signature(key, headers, body, now=1_718_341_812)
