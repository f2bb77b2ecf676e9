"""The key registry of ``close_opps._redact``: every form, one place, never blocking."""

from __future__ import annotations

import base64
import gc
import logging
import threading

import pytest

from close_opps import _redact
from close_opps.errors import APIError, DecodeError
from close_opps.http import Secret

KEY = "sk_test_0123456789abcdef+/"


def test_every_form_a_key_travels_in() -> None:
    forms = _redact.forms_of(KEY)
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    bare = base64.b64encode(KEY.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(f"{KEY}:".encode()).decode()
    for form in (KEY, basic, basic.rstrip("="), bare, bare.rstrip("="), urlsafe):
        assert form in forms
    assert "sk_test_0123456789abcdef%2B%2F" in forms
    assert list(forms) == sorted(forms, key=len, reverse=True)


def test_errors_are_redacted_while_the_secret_lives() -> None:
    secret = Secret(KEY)
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    error = APIError(
        f"Basic {basic}",
        provider="x",
        status=401,
        code=KEY,
        headers={"X-Echo": f"Bearer {KEY}"},
        body={"nested": [f"key={KEY}"], KEY: 1},
        request_id=basic,
    )
    said = f"{error} {error!r} {error.code} {error.headers} {error.body} {error.request_id}"
    assert KEY not in said
    assert basic not in said
    decode = DecodeError(f"bad {KEY}", provider="x", record_id=KEY, path=f"$.{KEY}")
    assert KEY not in f"{decode} {decode.record_id} {decode.path}"
    del secret
    gc.collect()
    Secret("another-key-registers")  # the dead key's forms are dropped at a registration
    assert KEY in str(APIError(KEY, provider="x", status=401))


def test_a_short_key_is_redacted_from_its_own_messages_only() -> None:
    secret = Secret("k_1")
    assert secret.redact("bad key k_1") == "bad key ***"
    assert _redact.redact("take_1 step") == "take_1 step"


def test_a_finalizer_during_registration_does_not_deadlock() -> None:
    """A garbage collection inside ``register`` (which holds the lock) runs finalizers of dead
    secrets: they must not wait for the lock."""
    done = threading.Event()

    def finalizer_inside_registration() -> None:
        with _redact._lock:
            _redact._unregister(-1)
        done.set()

    thread = threading.Thread(target=finalizer_inside_registration, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set()
    Secret("drains-the-dead-list")
    assert -1 not in _redact._dead


def test_log_filter_redacts_message_arguments_and_extras(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = Secret(KEY)
    logger = _redact.get_logger("close_opps.test_redact")
    with caplog.at_level(logging.DEBUG, logger="close_opps.test_redact"):
        logger.warning("sent %s", f"Bearer {KEY}", extra={"echo": KEY, "many": (KEY,)})
    (record,) = caplog.records
    assert record.getMessage() == "sent Bearer ***"
    assert KEY not in repr(vars(record))
    del secret
