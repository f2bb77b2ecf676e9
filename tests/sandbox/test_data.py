"""The seeded data: deterministic, realistic, full of shared timestamps."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from close_opps.sandbox import (
    CloseOptions,
    GetrazeOptions,
    ReevoOptions,
    generate_deals,
    make_close_app,
    make_getraze_app,
    make_reevo_app,
)
from close_opps.sandbox._common import STATE
from close_opps.sandbox._data import (
    RANGE_END,
    RANGE_START,
    REFERENCE_TODAY,
    render_close,
    render_getraze_detail,
    render_getraze_list,
    render_reevo,
)

from ._support import FIXTURES, load_fixture

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
GETRAZE_TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\+00$")
CLOSE_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


def test_same_seed_same_deals_and_records() -> None:
    first, second = generate_deals(11, 150), generate_deals(11, 150)
    assert first == second
    for a, b in zip(first, second, strict=True):
        assert render_close(11, a) == render_close(11, b)
        assert render_getraze_list(11, a) == render_getraze_list(11, b)
        assert render_getraze_detail(11, a) == render_getraze_detail(11, b)
        assert render_reevo(11, a) == render_reevo(11, b)


def test_other_seed_other_deals() -> None:
    ids = {render_close(1, d)["id"] for d in generate_deals(1, 20)}
    others = {render_close(2, d)["id"] for d in generate_deals(2, 20)}
    assert not ids & others
    assert [d.title for d in generate_deals(1, 20)] != [d.title for d in generate_deals(2, 20)]


def test_fewer_records_are_a_prefix() -> None:
    assert generate_deals(5, 25) == generate_deals(5, 200)[:25]


def test_apps_built_twice_serve_identical_records() -> None:
    pairs = [
        (
            make_close_app(CloseOptions(records=80), seed=3),
            make_close_app(CloseOptions(records=80), seed=3),
        ),
        (make_getraze_app(GetrazeOptions(records=80), seed=3), make_getraze_app(seed=3)),
        (
            make_reevo_app(ReevoOptions(records=80), seed=3),
            make_reevo_app(ReevoOptions(records=80), seed=3),
        ),
    ]
    for one, two in pairs:
        assert one[STATE].records[:60] == two[STATE].records[:60]
        assert len(one[STATE].records) == 80
    one, two = pairs[0]
    assert one[STATE].details == two[STATE].details


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_many_records_share_an_updated_timestamp(seed: int) -> None:
    deals = generate_deals(seed, 60)
    counts = Counter(d.updated_at for d in deals)
    shared = [n for n in counts.values() if n >= 5]
    assert shared, "at least one group of 5+ deals with the same updated_at"
    assert sum(shared) >= 15
    # the groups survive rendering, in every vendor's own timestamp form
    close = Counter(render_close(seed, d)["date_updated"] for d in deals)
    getraze = Counter(render_getraze_list(seed, d)["updated_at"] for d in deals)
    reevo = Counter(render_reevo(seed, d)["updated_at"] for d in deals)
    assert (
        max(close.values()) == max(getraze.values()) == max(reevo.values()) == max(counts.values())
    )


def test_deals_are_realistic() -> None:
    deals = generate_deals(0, 300, today=REFERENCE_TODAY)
    assert {d.currency for d in deals} == {"USD", "EUR", "BRL", "GBP"}
    assert {d.status for d in deals} == {"open", "won", "lost"}
    assert "discarded" in {d.stage for d in deals}
    assert {d.value_period for d in deals} == {"one_time", "monthly", "annual"}
    assert len({d.owner for d in deals}) >= 5
    assert len({d.company.name for d in deals}) >= 20
    assert any(d.custom for d in deals) and any(not d.custom for d in deals)
    assert any(d.comments for d in deals)
    for d in deals:
        assert RANGE_START <= d.created_at <= d.updated_at <= RANGE_END
        assert d.created_at.tzinfo is not None
        assert 0 <= d.confidence <= 100
        assert d.amount == d.amount.quantize(Decimal("0.01")) and d.amount > 0
        if d.status == "open":
            assert d.closed_at is None
        else:
            assert d.closed_at is not None
            assert d.created_at <= d.closed_at <= d.updated_at


def test_vendor_record_forms() -> None:
    for deal in generate_deals(0, 120):
        close = render_close(0, deal)
        assert re.fullmatch(r"oppo_[0-9A-Za-z]{43}", close["id"])
        assert CLOSE_TS.match(close["date_created"]) and CLOSE_TS.match(close["date_updated"])
        assert close["value"] == int(deal.amount * 100)
        assert isinstance(close["value"], int)
        assert (close["date_won"] is not None) == (deal.status == "won")
        if close["date_won"]:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", close["date_won"])
        assert (close["date_lost"] is not None) == (deal.status == "lost")
        assert close["status_type"] == {"open": "active", "won": "won", "lost": "lost"}[deal.status]

        getraze = render_getraze_list(0, deal)
        assert UUID.match(getraze["id"])
        assert GETRAZE_TS.match(getraze["created_at"]) and GETRAZE_TS.match(getraze["updated_at"])
        assert re.fullmatch(r"\d+\.\d{2}", getraze["value"])
        assert Decimal(getraze["value"]) == deal.amount

        reevo = render_reevo(0, deal)
        assert UUID.match(reevo["id"])
        assert reevo["attributes"]["amount"]["value"] == {
            "amount": f"{deal.amount:.2f}",
            "currency_code": deal.currency,
        }


def test_fixtures_are_verbatim_copies_of_the_vendor_docs() -> None:
    docs = Path(__file__).resolve().parents[3] / "shared" / "vendor-docs"
    if not docs.is_dir():
        pytest.skip("shared/vendor-docs is not beside the repository")
    verbatim = (
        "getraze-live-responses.json",
        "getraze-live-responses-2.json",
        "close-events-examples.json",
    )
    for name in verbatim:
        assert (FIXTURES / name).read_bytes() == (docs / name).read_bytes(), name
    close_page = (docs / "close-list-opportunities-page.txt").read_text(encoding="utf-8")
    for record in load_fixture("close-list-example.json")["data"]:
        assert f'"id": "{record["id"]}"' in close_page
    reevo_page = (docs / "reevo-read-one-opportunity.txt").read_text(encoding="utf-8")
    for name in load_fixture("reevo-read-one-example.json")["data"]["attributes"]:
        assert f'"{name}":' in reevo_page
