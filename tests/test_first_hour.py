"""What a newcomer hits in the first hour (issue 14): each defect, reproduced and fixed."""

from __future__ import annotations

import copy
import logging
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stamina

from close_opps import CloseAdapter, DecodeError, GetrazeAdapter, Opportunity, ReevoAdapter
from close_opps._constants import USER_AGENT
from close_opps.adapters.base import BaseAdapter
from close_opps.sandbox import Fault, Sandbox
from close_opps.sync import SyncStore, sync

from .test_cli import assert_one_error_line, invoke

ADAPTERS: list[type[BaseAdapter]] = [CloseAdapter, GetrazeAdapter, ReevoAdapter]


@pytest.fixture
async def sandbox() -> Any:
    async with Sandbox(seed=3, records=8) as sb:
        yield sb


async def _all(sb: Sandbox) -> list[Opportunity]:
    found = []
    for cls in ADAPTERS:
        server = sb[cls.provider]
        async with cls(server.api_key, base_url=server.base_url) as adapter:
            found += [opp async for opp in adapter.list()]
    return found


# ------------------------------------------------------------------ 1: invalid ids


@pytest.mark.parametrize("bad", ["..", "."])
@pytest.mark.parametrize("provider", ["close", "getraze", "reevo"])
def test_an_invalid_id_is_one_usage_line(provider: str, bad: str) -> None:
    result = invoke(["get", provider, bad, "--sandbox"])
    assert_one_error_line(result, exit_code=2, contains="not a valid id")


def test_an_invalid_id_with_a_base_url_is_one_usage_line() -> None:
    args = ["get", "close", "..", "--base-url", "http://127.0.0.1:9/api/v1", "--api-key", "k-1"]
    assert_one_error_line(invoke(args), exit_code=2, contains="not a valid id")


# --------------------------------------------------------- 2: records cross processes


async def test_records_pickle_and_deep_copy(sandbox: Sandbox) -> None:
    records = await _all(sandbox)
    assert {opp.provider for opp in records} == {"close", "getraze", "reevo"}
    for opp in records:
        assert pickle.loads(pickle.dumps(opp)) == opp  # noqa: S301 - our own bytes
        assert copy.deepcopy(opp) == opp
        assert copy.copy(opp) == opp


def test_nested_values_are_read_only() -> None:
    from datetime import UTC, datetime

    from close_opps.model import FrozenDict, FrozenList

    moment = datetime(2025, 1, 1, tzinfo=UTC)
    opp = Opportunity(
        provider="x",
        id="1",
        created_at=moment,
        updated_at=moment,
        raw={"a": {"b": [1, {"c": 2}]}},
        custom_fields={"tags": ["x"]},
    )
    assert opp.raw == {"a": {"b": [1, {"c": 2}]}}
    assert isinstance(opp.raw["a"], FrozenDict)
    assert isinstance(opp.raw["a"]["b"], FrozenList)
    with pytest.raises(TypeError):
        opp.raw["a"]["b"].append(3)
    with pytest.raises(TypeError):
        opp.raw["a"]["b"][1]["c"] = 3
    with pytest.raises(TypeError):
        opp.custom_fields["tags"].clear()
    with pytest.raises(TypeError):
        opp.raw["z"] = 1  # type: ignore[index]
    again = pickle.loads(pickle.dumps(opp))  # noqa: S301 - our own bytes
    with pytest.raises(TypeError):
        again.raw["a"]["b"].append(3)


# -------------------------------------------------- 3 and 4: retries, tests, logging


@pytest.fixture
def users_test_mode() -> Iterator[None]:
    """What docs/errors-and-retries.md tells users to do in their tests."""
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


async def test_the_documented_test_mode_keeps_retrying(
    sandbox: Sandbox, users_test_mode: None
) -> None:
    sandbox.close.script(Fault.rate_limit(wait=5), Fault.server_error(503))
    async with CloseAdapter(sandbox.close.api_key, base_url=sandbox.close.base_url) as close:
        found = [opp async for opp in close.list()]
    assert len(found) == 8


async def test_one_info_line_per_retry_and_none_from_stamina(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.getraze.script(Fault.drop(), Fault.drop(), Fault.server_error(500))
    server = sandbox.getraze
    async with GetrazeAdapter(server.api_key, base_url=server.base_url, max_retries=3) as g:
        found = [opp async for opp in g.list()]
    assert len(found) == 8
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.INFO, logging.INFO]
    first = retries[0].getMessage()
    assert first.count("failed") == 1, first
    assert first.count("getraze") == 1, first
    assert "(retry 1 of 3)" in first
    assert "HTTP 500" in retries[1].getMessage()
    assert not [r for r in caplog.records if r.name == "stamina"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_final_failure_is_the_exception_not_a_log_line(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox.close.script(*[Fault.server_error(500)] * 3)
    async with CloseAdapter(
        sandbox.close.api_key, base_url=sandbox.close.base_url, max_retries=2
    ) as close:
        with pytest.raises(Exception, match="HTTP 500"):
            await close.get(sandbox.close.ids[0])
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2


# ------------------------------------------------------------------- 5: User-Agent


async def test_the_callers_user_agent_is_kept(sandbox: Sandbox) -> None:
    server = sandbox.close
    async with (
        aiohttp.ClientSession(headers={"User-Agent": "mine/1.0"}) as session,
        CloseAdapter(server.api_key, base_url=server.base_url, session=session) as c,
    ):
        await c.get(server.ids[0])
    assert server.requests[-1].headers["User-Agent"] == "mine/1.0"


async def test_user_agent_is_appended_to_ours(sandbox: Sandbox) -> None:
    server = sandbox.reevo
    async with ReevoAdapter(
        server.api_key, base_url=server.base_url, user_agent="acme-sync/2.1"
    ) as reevo:
        await reevo.get(server.ids[0])
    assert server.requests[-1].headers["User-Agent"] == f"{USER_AGENT} acme-sync/2.1"


# ------------------------------------------------------------------------ 6: proxies


async def test_the_adapters_own_session_follows_the_environment() -> None:
    adapter = CloseAdapter("k", base_url="https://api.example.com/api/v1")
    try:
        assert adapter._transport._client().trust_env is True
    finally:
        await adapter.aclose()


async def test_a_proxy_receives_the_requests(sandbox: Sandbox) -> None:
    """The Getraze emulator stands in for a proxy: a proxied request arrives there with
    the absolute URL of its real target."""
    proxy = sandbox.getraze.base_url.split("/external")[0]
    adapter = CloseAdapter("k", base_url="http://localhost:1/api/v1", proxy=proxy, max_retries=0)
    async with adapter:
        with pytest.raises(Exception):  # noqa: B017 - the stand-in answers 404
            await adapter.get("x")
    assert sandbox.getraze.requests[-1].path.endswith("/api/v1/opportunity/x/")


def test_a_bad_proxy_is_refused() -> None:
    with pytest.raises(ValueError, match="proxy"):
        CloseAdapter("k", proxy="proxy.example:3128")


def test_cli_proxy_option() -> None:
    result = invoke(["list", "close", "--sandbox", "--proxy", "http://127.0.0.1:1"])
    assert_one_error_line(result, exit_code=2, contains="--proxy")
    assert "--proxy URL" in invoke(["list", "--help"]).stdout


# ------------------------------------------------------------------ 7: decode errors


def test_a_decode_error_without_a_place_has_one_colon() -> None:
    assert str(DecodeError("the response body is not JSON", provider="close")) == (
        "close: the response body is not JSON"
    )
    placed = DecodeError("bad", provider="close", record_id="o1", path="$.x")
    assert str(placed) == "close: record 'o1' at $.x: bad"


# ---------------------------------------------------------------- 10: keys from env


@pytest.mark.parametrize("cls", ADAPTERS)
def test_the_key_comes_from_the_environment(
    cls: type[BaseAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"{cls.provider.upper()}_API_KEY"
    monkeypatch.setenv(variable, "from-env-123")
    adapter = cls()
    assert adapter._transport._api_key.reveal() == "from-env-123"
    monkeypatch.delenv(variable)
    with pytest.raises(ValueError, match=variable):
        cls()


# ------------------------------------------------------- 11: sync what has a key


def test_sync_syncs_the_providers_with_keys_and_names_the_others(tmp_path: Path) -> None:
    with _served_close() as env:
        result = invoke(["sync", "--db", str(tmp_path / "x.db")], env=env)
    assert result.exit_code == 0, result.stderr
    assert "close" in result.stdout
    assert "left out (no API key): getraze (set GETRAZE_API_KEY), reevo (set REEVO_API_KEY)" in (
        result.stderr
    )


def test_sync_with_no_key_at_all_names_every_variable(tmp_path: Path) -> None:
    result = invoke(["sync", "--db", str(tmp_path / "x.db")])
    line = assert_one_error_line(result, exit_code=2, contains="CLOSE_API_KEY")
    assert "GETRAZE_API_KEY" in line
    assert "REEVO_API_KEY" in line


def _served_close() -> Any:
    from contextlib import contextmanager

    from .test_cli import ServedSandbox

    @contextmanager
    def served() -> Iterator[dict[str, str]]:
        with ServedSandbox(seed=2, records=5, vendors=["close"]) as sb:
            yield {"CLOSE_API_KEY": sb.close.api_key, "CLOSE_BASE_URL": sb.close.base_url}

    return served()


# --------------------------------------------------------------------------- help


def test_help_has_no_type_placeholders_and_reads_well() -> None:
    for args in (["--help"], ["list", "--help"], ["get", "--help"], ["sync", "--help"]):
        text = invoke(args, env={"COLUMNS": "80"}).stdout
        assert "<int>" not in text
        assert "<bool>" not in text
        assert "<str>" not in text
        assert "list[" not in text
        assert "{PROVIDER}" not in text
        assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "Usage: close-opps sync [OPTIONS] [PROVIDER]..." in invoke(["sync", "--help"]).stdout
    root = " ".join(invoke(["--help"]).stdout.split())
    assert "-v retries" in root
    assert "-vv every request" in root


def test_list_documents_the_errors_iterating_raises() -> None:
    doc = CloseAdapter.list.__doc__ or ""
    for name in ("AuthenticationError", "RateLimitError", "TransportError", "DecodeError"):
        assert name in doc, name


# ---------------------------------------------------------- one flattening for both


async def test_sqlite_and_csv_share_the_flat_columns(tmp_path: Path, sandbox: Sandbox) -> None:
    from close_opps.serialize import flat_columns

    async with (
        SyncStore(tmp_path / "o.db") as store,
        CloseAdapter(sandbox.close.api_key, base_url=sandbox.close.base_url) as close,
    ):
        await sync([close], store)
        rows = await store.rows()
    columns = [c.name for c in flat_columns()]
    assert set(columns) <= set(rows[0])
    assert rows[0]["custom_fields"] is not None


def test_a_version_1_database_gains_the_new_columns(tmp_path: Path) -> None:
    import asyncio

    from close_opps import sync as syncing

    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db)
    for statement in syncing._MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    values = {name: "x" for name, _ in syncing._V1_FIELD_COLUMNS}
    values["raw"] = "{}"
    values["record"] = '{"contact": {"phone": "+1 555"}, "custom_fields": {"a": 1}}'
    names = ["provider", "id", *values]
    marks = ", ".join("?" for _ in names)
    conn.execute(
        f"INSERT INTO opportunities ({', '.join(names)}) VALUES ({marks})",  # noqa: S608
        ["close", "o1", *values.values()],
    )
    conn.commit()
    conn.close()

    async def read() -> dict[str, Any] | None:
        async with SyncStore(db) as store:
            assert await store.schema_version() == syncing.SCHEMA_VERSION
            return await store.get("close", "o1")

    row = asyncio.run(read())
    assert row is not None
    assert row["contact_phone"] == "+1 555"
    assert row["custom_fields"] == '{"a":1}'


# ------------------------------------------------------ the sandbox's data is recent


def test_the_sandbox_data_is_dated_relative_to_today() -> None:
    from datetime import UTC, date, datetime, timedelta

    from close_opps.sandbox import generate_deals

    today = date(2030, 3, 15)
    deals = generate_deals(0, 60, today=today)
    assert deals == generate_deals(0, 60, today=today)  # deterministic for seed and today
    start = datetime(2030, 3, 8, tzinfo=UTC)
    recent = [d for d in deals if d.updated_at >= start]
    assert len(recent) >= 5
    assert all(d.updated_at < datetime(2030, 3, 15, tzinfo=UTC) for d in deals)
    current = generate_deals(0, 60)
    week_ago = datetime.now(UTC) - timedelta(days=7)
    assert [d for d in current if d.updated_at >= week_ago]


# ------------------------------------------------------------------ 8: the table


def _table_lines(width: int, *extra: str) -> list[str]:
    result = invoke(
        ["list", "close", "--sandbox", "--format", "table", "--limit", "5", *extra],
        env={"COLUMNS": str(width)},
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def test_amount_and_status_survive_at_80_columns() -> None:
    lines = _table_lines(80)
    header = next(line for line in lines if line.strip().startswith("id"))
    assert "status" in header
    assert "amount" in header
    assert all(len(line) <= 80 for line in lines)


def test_ids_are_never_cut() -> None:
    served = invoke(["list", "close", "--sandbox", "--format", "jsonl", "--limit", "5"])
    ids = [line.split('"id": "')[1].split('"')[0] for line in served.stdout.splitlines()]
    for width in (60, 80):
        text = "\n".join(_table_lines(width))
        assert all(record_id in text for record_id in ids), (width, text)
        assert "…" not in text.split("\n", 3)[-1].split()[0]


def test_a_large_table_is_capped_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from close_opps.cli import _render

    monkeypatch.setattr(_render, "TABLE_MAX_ROWS", 7)
    result = invoke(["list", "close", "--sandbox", "--format", "table"])
    assert result.exit_code == 0, result.stderr
    assert "the first 7 opportunities; there are more" in result.stdout
    assert "--format jsonl" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.strip().startswith("oppo_")]
    assert len(rows) == 7
