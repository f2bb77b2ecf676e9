"""The JSONL and CSV writers of ``close-opps list``: keys never shown, records scrubbed only
when their text may show one.

Scrubbing a record walks every value of it (raw included), which cost more than listing
it; the writers make each record's text and scrub the record only when a form of a key in
use occurs in that text, or when a key has a character JSON or CSV would escape (then the
text cannot tell).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from close_opps import Opportunity
from close_opps._redact import forms_of
from close_opps.cli import _runtime
from close_opps.cli._render import OutputFormat, make_writer
from close_opps.cli._runtime import may_hold_key, scrub

KEY = "sk_test_4f1b9a77c2d34e0f"


def record(note: str | None = None, raw_text: str = "plain") -> Opportunity:
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    return Opportunity(
        provider="close",
        id="oppo_1",
        created_at=moment,
        updated_at=moment,
        note=note,
        raw={"text": raw_text, "nested": [{"deep": raw_text}]},
    )


@pytest.fixture
def key_in_use() -> Iterator[str]:
    _runtime._secrets.add(KEY)
    try:
        yield KEY
    finally:
        _runtime._secrets.discard(KEY)


class Spy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, opportunity: Opportunity) -> Opportunity:
        self.calls += 1
        return scrub(opportunity)


def written(fmt: OutputFormat, records: list[Opportunity], spy: Spy) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        writer = make_writer(fmt, scrub=spy, may_hold_key=may_hold_key)
        for opp in records:
            writer.write(opp)
        writer.finish()
    return out.getvalue()


def test_may_hold_key(key_in_use: str) -> None:
    assert not may_hold_key('{"note": "nothing here"}')
    for form in forms_of(key_in_use):
        assert may_hold_key(f'{{"note": "before {form} after"}}'), form


def test_a_key_json_would_escape_makes_every_text_suspect() -> None:
    odd = 'k"ey\\with\tquote'
    _runtime._secrets.add(odd)
    try:
        assert may_hold_key("anything at all")
    finally:
        _runtime._secrets.discard(odd)


@pytest.mark.parametrize("fmt", [OutputFormat.JSONL, OutputFormat.CSV])
def test_clean_records_are_not_scrubbed(key_in_use: str, fmt: OutputFormat) -> None:
    spy = Spy()
    text = written(fmt, [record("fine"), record("also fine")], spy)
    assert spy.calls == 0
    assert "also fine" in text


@pytest.mark.parametrize("fmt", [OutputFormat.JSONL, OutputFormat.CSV])
def test_a_record_showing_a_key_is_scrubbed(key_in_use: str, fmt: OutputFormat) -> None:
    spy = Spy()
    base64_form = forms_of(key_in_use)[0]
    records = [record("fine"), record(f"echo {key_in_use}", raw_text=base64_form)]
    text = written(fmt, records, spy)
    assert spy.calls == 1
    assert all(form not in text for form in forms_of(key_in_use))
    assert "echo ***" in text
    if fmt is OutputFormat.JSONL:
        line = json.loads(text.splitlines()[1])
        assert line["raw"] == {"text": "***", "nested": [{"deep": "***"}]}


def test_a_key_with_escaped_characters_is_still_redacted() -> None:
    odd = 'k"ey\\with\tquote'
    _runtime._secrets.add(odd)
    try:
        spy = Spy()
        text = written(OutputFormat.JSONL, [record(f"echo {odd}", raw_text=odd)], spy)
    finally:
        _runtime._secrets.discard(odd)
    assert spy.calls == 1
    line = json.loads(text)
    assert line["note"] == "echo ***"
    assert line["raw"]["text"] == "***"
