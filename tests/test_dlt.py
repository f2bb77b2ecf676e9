"""``close_opps.dlt``: real dlt pipelines into DuckDB, from the sandbox (no network).

dlt pipelines are slow to start: one sandbox for the module, few runs per test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

dlt = pytest.importorskip("dlt")
duckdb = pytest.importorskip("duckdb")

from close_opps import BaseAdapter, Change, ChangeKind, Opportunity, connect  # noqa: E402
from close_opps.dlt import (  # noqa: E402
    AmountPrecisionError,
    Connection,
    _changes,
    opportunities_source,
    table_columns,
)
from close_opps.sandbox import Fault, ManualClock, Sandbox  # noqa: E402
from close_opps.serialize import jsonable  # noqa: E402
from tests.test_cli import ServedSandbox, invoke  # noqa: E402

VENDORS = ("close", "getraze", "reevo")


#: The sandbox's clock, moved by hand: Close's feed re-reads the last five minutes of its
#: event log, so each run here starts ten minutes after the previous one.
CLOCK = ManualClock(datetime(2026, 7, 1, 9, tzinfo=UTC))


@pytest.fixture(scope="module")
def served() -> Iterator[Sandbox]:
    with ServedSandbox(seed=12, records=30, clock=CLOCK, today=CLOCK().date()) as sandbox:
        yield sandbox


def later() -> None:
    CLOCK.advance(minutes=10)


def factories(sandbox: Sandbox, **options: Any) -> dict[str, Callable[[], BaseAdapter]]:
    """``{provider: factory}``: a new adapter per run, in dlt's loop."""

    def factory(vendor: str) -> Callable[[], BaseAdapter]:
        server = sandbox[vendor]
        return lambda: connect(vendor, api_key=server.api_key, base_url=server.base_url, **options)

    return {vendor: factory(vendor) for vendor in VENDORS}


def make_pipeline(tmp_path: Path, name: str = "crm") -> Any:
    return dlt.pipeline(
        pipeline_name=name,
        pipelines_dir=str(tmp_path / "pipelines"),
        destination=dlt.destinations.duckdb(str(tmp_path / "warehouse.duckdb")),
        dataset_name="crm",
    )


def rows(path: Path, dataset: str = "crm") -> dict[tuple[str, str], dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as db:
        cursor = db.execute(f"SELECT * FROM {dataset}.opportunities")  # noqa: S608
        names = [d[0] for d in cursor.description]
        return {
            (r["connection"], r["id"]): r
            for r in (dict(zip(names, t, strict=True)) for t in cursor.fetchall())
        }


def current(
    sandbox: Sandbox, vendors: Sequence[str] = VENDORS
) -> dict[tuple[str, str], Opportunity]:
    """What the emulators serve now, read through the adapters."""

    async def read() -> dict[tuple[str, str], Opportunity]:
        found: dict[tuple[str, str], Opportunity] = {}
        for vendor in vendors:
            server = sandbox[vendor]
            async with connect(vendor, api_key=server.api_key, base_url=server.base_url) as a:
                async for opp in a.list():
                    found[(vendor, opp.id)] = opp
        return found

    return asyncio.run(read())


def assert_equal_to(
    stored: dict[tuple[str, str], dict[str, Any]],
    sandbox: Sandbox,
    vendors: Sequence[str] = VENDORS,
) -> None:
    expected = current(sandbox, vendors)
    assert set(stored) == set(expected)
    for key, opp in expected.items():
        row = stored[key]
        amount = opp.amount.amount if opp.amount else None
        assert row["amount"] == amount, key  # exact: a Decimal, never a float
        assert isinstance(row["amount"], Decimal | None)
        assert row["currency"] == (opp.amount.currency if opp.amount else None)
        assert row["name"] == opp.name
        assert row["status"] == opp.status.value
        assert row["provider"] == opp.provider
        assert row["updated_at"] == opp.updated_at
        assert row["updated_at"].utcoffset() is not None
        assert row["created_at"] == opp.created_at
        assert row["owner_name"] == (opp.owner.name if opp.owner else None)
        assert json.loads(row["custom_fields"]) == jsonable(opp.custom_fields)
        assert json.loads(row["raw"]) == jsonable(opp.raw)
        assert row["deleted"] is False


def new_rows(pipeline: Any) -> int:
    """Rows of the ``opportunities`` table the last run normalized (0 when none)."""
    counts = pipeline.last_trace.last_normalize_info.row_counts
    return int(counts.get("opportunities", 0))


def test_three_runs_load_everything_then_changes_then_nothing(
    served: Sandbox, tmp_path: Path
) -> None:
    pipeline = make_pipeline(tmp_path)

    def source() -> Any:
        later()
        return opportunities_source(factories(served), clock=CLOCK)

    pipeline.run(source())
    stored = rows(tmp_path / "warehouse.duckdb")
    assert len(stored) == 90
    assert_equal_to(stored, served)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
        types = dict(
            db.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'crm' AND table_name = 'opportunities'"
            ).fetchall()
        )
    assert types["amount"] == "DECIMAL(38,9)"
    assert types["updated_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["custom_fields"] == types["raw"] == "JSON"
    assert pipeline.state["sources"]["close_opps"]["resources"]["opportunities"]["cursors"]

    created = {v: served[v].create(title="Brand new", amount=Decimal("1234.56")) for v in VENDORS}
    served.getraze.edit(served.getraze.ids[0], amount=Decimal("99.99"))
    served.reevo.edit(served.reevo.ids[1], title="Renamed")
    served.close.edit(served.close.ids[2], amount=Decimal("0.01"))
    gone = {v: served[v].ids[3] for v in VENDORS}
    for vendor, opportunity_id in gone.items():
        served[vendor].delete(opportunity_id)

    pipeline.run(source())
    stored = rows(tmp_path / "warehouse.duckdb")
    assert_equal_to(stored, served)
    assert not set(gone.items()) & set(stored)
    assert len(stored) == 90
    assert stored[("getraze", served.getraze.ids[0])]["amount"] == Decimal("99.99")
    assert len(created) == 3
    # only the changes were loaded: 3 created, 3 edited, 3 deleted
    assert new_rows(pipeline) == 9

    pipeline.run(source())
    assert new_rows(pipeline) == 0
    assert rows(tmp_path / "warehouse.duckdb") == stored


def test_a_run_failing_midway_commits_nothing_and_the_next_repeats_it(
    served: Sandbox, tmp_path: Path
) -> None:
    pipeline = make_pipeline(tmp_path, "failing")
    connections = factories(served, max_retries=0, page_size=10)

    def source() -> Any:
        later()
        return opportunities_source(connections, batch_size=5, deletions="flag", clock=CLOCK)

    pipeline.run(source())
    before = rows(tmp_path / "warehouse.duckdb")
    state = json.dumps(pipeline.state["sources"], sort_keys=True, default=str)

    served.getraze.edit(served.getraze.ids[5], title="Edited before the failure")
    served.reevo.delete(served.reevo.ids[6])
    # Getraze's third page fails: its first pages (and Reevo's changes) were already handed
    # to dlt in batches of 5
    served.getraze.script(Fault.ok(), Fault.ok(), Fault.server_error(500))
    with pytest.raises(Exception, match="HTTP 500"):
        pipeline.run(source())
    assert [r.fault for r in served.getraze.requests[-3:] if r.fault] == ["server_error"]
    assert rows(tmp_path / "warehouse.duckdb") == before
    assert json.dumps(pipeline.state["sources"], sort_keys=True, default=str) == state

    pipeline.run(source())
    stored = rows(tmp_path / "warehouse.duckdb")
    assert stored[("getraze", served.getraze.ids[5])]["name"] == "Edited before the failure"
    tombstone = [row for key, row in stored.items() if key[0] == "reevo" and row["deleted"]]
    assert len(tombstone) == 1
    assert tombstone[0]["name"] is None
    assert tombstone[0]["deleted_at"].utcoffset() is not None
    live = {key: row for key, row in stored.items() if not row["deleted"]}
    assert set(live) == set(current(served))


def test_two_accounts_of_one_provider_are_two_connections(tmp_path: Path) -> None:
    with ServedSandbox(seed=3, records=5, vendors=["getraze"]) as sandbox:
        server = sandbox.getraze
        adapters = {
            name: connect("getraze", api_key=server.api_key, base_url=server.base_url)
            for name in ("eu", "us")
        }
        pipeline = make_pipeline(tmp_path, "accounts")
        pipeline.run(opportunities_source(adapters, raw=False))
        pipeline.run(opportunities_source(adapters, raw=False))  # the adapters run again
        stored = rows(tmp_path / "warehouse.duckdb")
    assert {key[0] for key in stored} == {"eu", "us"}
    assert len(stored) == 10
    assert "raw" not in next(iter(stored.values()))


def test_arguments_are_checked_at_once() -> None:
    adapter = connect("close", api_key="k", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="unique"):
        opportunities_source([adapter, adapter])
    with pytest.raises(ValueError, match="deletions"):
        opportunities_source(adapter, deletions="soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        opportunities_source([])
    with pytest.raises(TypeError, match="name"):
        opportunities_source(lambda: adapter)  # type: ignore[arg-type]
    assert opportunities_source([Connection("a", lambda: adapter)]).resources["opportunities"]


def test_columns_are_typed_and_the_delete_hint_follows_the_choice() -> None:
    columns = table_columns()
    assert columns["amount"]["data_type"] == "decimal"
    assert (columns["amount"]["precision"], columns["amount"]["scale"]) == (38, 9)
    assert columns["deleted"]["hard_delete"] is True
    assert "hard_delete" not in table_columns(deletions="flag")["deleted"]
    assert columns["won_at"] == {
        "name": "won_at",
        "data_type": "timestamp",
        "timezone": True,
        "nullable": True,
    }
    assert columns["confidence"]["data_type"] == "bigint"
    assert "raw" not in table_columns(raw=False)


def test_an_amount_that_would_be_rounded_is_refused() -> None:
    from close_opps.changes import Change, ChangeKind
    from close_opps.dlt import _row
    from close_opps.model import Money

    now = datetime(2026, 1, 1, tzinfo=UTC)
    opp = Opportunity(
        provider="reevo",
        id="x",
        created_at=now,
        updated_at=now,
        amount=Money(amount=Decimal("1.0000000001"), currency="USD"),
    )
    change = Change(kind=ChangeKind.UPSERT, provider="reevo", id="x", opportunity=opp)
    with pytest.raises(AmountPrecisionError, match="reevo: opportunity x: amount"):
        _row(change, "reevo", 1, raw=False, now=now)


def test_the_cli_loads_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["load", "--sandbox", "--dataset", "crm", "--pipelines-dir", str(tmp_path / "p")]
    first = invoke(args)
    assert first.exit_code == 0, first.stderr
    assert "180 rows" in first.stdout  # 60 per emulator
    stored = rows(tmp_path / "close_opps.duckdb")
    assert len(stored) == 180
    assert all(isinstance(row["amount"], Decimal | None) for row in stored.values())

    again = invoke([*args, "getraze"])  # the same seeded records: nothing changed
    assert again.exit_code == 0, again.stderr
    assert "0 rows" in again.stdout


def test_the_cli_loads_changes_and_deletions(
    served: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        key: value
        for vendor in ("getraze", "reevo")
        for key, value in {
            f"{vendor.upper()}_API_KEY": served[vendor].api_key,
            f"{vendor.upper()}_BASE_URL": served[vendor].base_url,
        }.items()
    }
    args = ["load", "getraze", "reevo", "--pipelines-dir", str(tmp_path / "p")]
    first = invoke(args, env=env)
    assert first.exit_code == 0, first.stderr
    assert_equal_to(rows(tmp_path / "close_opps.duckdb"), served, ("getraze", "reevo"))

    served.reevo.delete(served.reevo.ids[0])
    served.getraze.create(title="From the command line", amount=Decimal("10.05"))
    served.getraze.edit(served.getraze.ids[1], amount=Decimal("7.77"))
    second = invoke(args, env=env)
    assert second.exit_code == 0, second.stderr
    assert second.stdout == (
        "getraze, reevo: 3 rows loaded into duckdb dataset 'crm' (pipeline 'close_opps')\n"
    )
    assert_equal_to(rows(tmp_path / "close_opps.duckdb"), served, ("getraze", "reevo"))

    third = invoke(args, env=env)
    assert third.exit_code == 0, third.stderr
    assert "0 rows loaded" in third.stdout


def test_the_cli_fails_on_one_line_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with ServedSandbox(seed=5, records=4, vendors=["getraze"]) as sandbox:
        server = sandbox.getraze
        env = {"GETRAZE_API_KEY": server.api_key, "GETRAZE_BASE_URL": server.base_url}
        args = ["load", "getraze", "--pipelines-dir", str(tmp_path / "p")]
        assert invoke(args, env=env).exit_code == 0
        for gone in server.ids[:3]:
            server.delete(gone)
        guarded = invoke(args, env=env)
        assert guarded.exit_code == 1
        assert guarded.stderr.splitlines() == [
            "close-opps: error: getraze: the change feed would delete 3 of the 4 known "
            "records: nothing was loaded. If the deletions are real, run again with "
            "--allow-mass-deletion"
        ]
        assert len(rows(tmp_path / "close_opps.duckdb")) == 4
        allowed = invoke([*args, "--allow-mass-deletion"], env=env)
        assert allowed.exit_code == 0, allowed.stderr
        assert len(rows(tmp_path / "close_opps.duckdb")) == 1

    unknown = invoke(["load", "--sandbox", "reevo", "--destination", "nowhere"])
    assert unknown.exit_code == 1
    (line,) = unknown.stderr.splitlines()
    assert line.startswith("close-opps: error: dlt: ")


def test_an_id_delivered_twice_in_a_run_ends_as_its_last_change(tmp_path: Path) -> None:
    """``change_seq`` (dedup_sort) decides: an upsert then a delete deletes, and back."""
    columns = table_columns(raw=False)
    base = {"provider": "reevo", "name": "n", "amount": Decimal("1.5"), "deleted": False}
    batches = [
        [{"connection": "r", "id": "a", "change_seq": 1, **base}],
        [
            {"connection": "r", "id": "a", "change_seq": 2, "deleted": True},
            {"connection": "r", "id": "b", "change_seq": 3, "deleted": True},
            {"connection": "r", "id": "b", "change_seq": 4, **base},
        ],
    ]
    pipeline = make_pipeline(tmp_path, "twice")
    for batch in batches:
        resource = dlt.resource(
            batch,
            name="opportunities",
            primary_key=("connection", "id"),
            write_disposition="merge",
            columns=columns,
        )
        pipeline.run(resource)
    assert set(rows(tmp_path / "warehouse.duckdb")) == {("r", "b")}


def test_close_opps_does_not_import_dlt() -> None:
    code = (
        "import sys, close_opps, close_opps.cli._app\n"
        "assert 'close_opps.cli._load' in sys.modules and 'dlt' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603


class _Feed:
    """A change feed of deletes that waits, after its first, for the other feed's first."""

    def __init__(self, provider: str, mine: asyncio.Event, theirs: asyncio.Event) -> None:
        self.provider, self.mine, self.theirs = provider, mine, theirs
        self.cursor: str | None = None

    async def __aenter__(self) -> _Feed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def _changes(self) -> AsyncIterator[Change]:
        for number in range(3):
            yield Change(kind=ChangeKind.DELETE, provider=self.provider, id=f"{number}")
            self.mine.set()
            await self.theirs.wait()  # read one feed, then the other: this never returns
        self.cursor = f"{self.provider}-cursor"

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._changes()


class _Adapter:
    def __init__(self, feed: _Feed) -> None:
        self.feed = feed
        self.closed = False

    def changes(self, since: str | None, **options: Any) -> _Feed:
        assert since == (None if self.feed.provider == "a" else "b-old")
        return self.feed

    async def aclose(self) -> None:
        self.closed = True


async def test_the_connections_are_read_concurrently_in_one_loop() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    adapters = [_Adapter(_Feed("a", first, second)), _Adapter(_Feed("b", second, first))]
    connections = [
        Connection(a.feed.provider, lambda a=a: cast(BaseAdapter, a))  # type: ignore[misc]
        for a in adapters
    ]
    state: dict[str, Any] = {"cursors": {"b": "b-old", "gone": "kept"}}
    batches = _changes(
        connections,
        state,
        raw=False,
        max_deletion_share=0.5,
        allow_mass_deletion=False,
        clock=None,
        batch_size=1,
    )
    delivered = await asyncio.wait_for(_collect(batches), timeout=10)
    assert sorted((row["connection"], row["id"]) for row in delivered) == [
        (name, str(n)) for name in "ab" for n in range(3)
    ]
    assert sorted(row["change_seq"] for row in delivered) == list(range(1, 7))
    assert state["cursors"] == {"a": "a-cursor", "b": "b-cursor", "gone": "kept"}
    assert all(a.closed for a in adapters)


async def _collect(batches: AsyncIterator[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [row async for batch in batches for row in batch]


# dlt 1.31 reports the pending package with the deprecated ``Logger.warn``
@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
def test_a_destination_failure_leaves_the_package_for_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlt.destinations.job_client_impl import SqlJobClientBase

    monkeypatch.chdir(tmp_path)
    args = ["load", "--sandbox", "reevo", "--pipelines-dir", str(tmp_path / "p")]

    def broken(self: Any, load_id: str) -> None:
        raise RuntimeError("the warehouse went away")

    with monkeypatch.context() as patched:
        patched.setattr(SqlJobClientBase, "complete_load", broken)
        failed = invoke(args)
    assert failed.exit_code == 1
    (line,) = failed.stderr.splitlines()
    assert line.startswith("close-opps: error: the destination failed; the load package")
    assert "the warehouse went away" in line

    again = invoke(args)
    assert again.exit_code == 0, again.stderr
    assert len(rows(tmp_path / "close_opps.duckdb")) == 60
