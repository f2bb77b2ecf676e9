"""Connections: the store keyed by connection, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from close_opps.connections import Connection, ConnectionKeyError, sync_connections
from close_opps.pgstore import PostgresStore
from close_opps.sandbox import Sandbox
from close_opps.serialize import opportunity_to_dict
from close_opps.sync import _MIGRATIONS, SCHEMA_VERSION, SyncError, SyncStore, open_store, sync

V1_FIXTURE = Path(__file__).parent / "fixtures" / "sync_v1.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'copy.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_open_store_chooses_by_url(tmp_path: Path) -> None:
    assert open_store(f"sqlite:///{tmp_path}/a.db").path == f"{tmp_path}/a.db"
    assert open_store("sqlite:///rel.db").path == "rel.db"
    assert open_store(tmp_path / "b.db").path == str(tmp_path / "b.db")
    assert isinstance(open_store("postgresql://u:secret@h/db"), PostgresStore)
    assert "secret" not in repr(open_store("postgres://u:secret@h/db"))
    with pytest.raises(ValueError, match="unknown database URL scheme 'mysql'"):
        open_store("mysql://h/db")


def test_connection_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="connection name"):
        Connection("bad name", "close")
    with pytest.raises(ValueError, match="every_minutes"):
        Connection("a", "close", every_minutes=0)
    with pytest.raises(ValueError, match="api_key"):
        Connection("a", "close", options={"api_key": "k"})


async def test_keys_come_from_the_variable_or_the_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACME_KEY", raising=False)
    acme = Connection("acme", "close", key_env="ACME_KEY")
    with pytest.raises(ConnectionKeyError, match="ACME_KEY is not set") as caught:
        await acme.api_key()
    assert caught.value.connection == "acme"
    monkeypatch.setenv("ACME_KEY", "k1")
    assert await acme.api_key() == "k1"

    async def resolve(name: str) -> str:
        return {"beta": "k2"}[name]

    beta = Connection("beta", "close")
    assert await beta.api_key(resolve) == "k2"
    with pytest.raises(ConnectionKeyError, match="resolver failed for connection 'gamma'"):
        await Connection("gamma", "close").api_key(resolve)


async def test_connections_are_stored_without_keys(store_url: str) -> None:
    acme = Connection(
        "acme",
        "close",
        base_url="http://x",
        key_env="ACME_KEY",
        every_minutes=5,
        options={"page_size": 50},
    )
    async with open_store(store_url) as store:
        await store.add_connection(acme)
        await store.add_connection(Connection("beta", "reevo"))
        with pytest.raises(ValueError, match="exists already"):
            await store.add_connection(acme)
        assert [c.name for c in await store.connections()] == ["acme", "beta"]
        assert await store.connection("acme") == acme
        await store.add_connection(Connection("acme", "close", every_minutes=9), replace=True)
        assert (await store.connection("acme") or acme).every_minutes == 9
        assert await store.remove_connection("beta")
        assert not await store.remove_connection("beta")
        assert await store.connection("beta") is None


async def test_two_accounts_of_one_provider_sync_side_by_side(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        Sandbox(seed=1, records=12, vendors=["close"]) as one,
        Sandbox(seed=2, records=9, vendors=["close"]) as two,
        open_store(store_url) as store,
    ):
        monkeypatch.setenv("ONE_KEY", one.close.api_key)
        await store.add_connection(
            Connection("one", "close", base_url=one.close.base_url, key_env="ONE_KEY")
        )
        await store.add_connection(Connection("two", "close", base_url=two.close.base_url))

        async def resolve(name: str) -> str:
            assert name == "two"
            return two.close.api_key

        reports = await sync_connections(store, resolver=resolve)
        assert {name: r.inserted for name, r in reports.items()} == {"one": 12, "two": 9}
        for name, sb in (("one", one), ("two", two)):
            rows = await store.rows(name)
            assert {r["id"] for r in rows} == set(sb.close.ids)
            assert {(r["connection"], r["provider"]) for r in rows} == {(name, "close")}
            assert await store.cursor_complete(name) is True
        assert await store.count() == 21
        # a purge removes one account's copy and state, not the other's
        assert await store.remove_connection("two", purge=True)
        assert await store.count() == 12 and await store.cursor("two") is None


async def test_a_missing_key_fails_that_connection_only(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    async with Sandbox(seed=1, records=5, vendors=["reevo"]) as sb, open_store(store_url) as store:
        monkeypatch.setenv("R_KEY", sb.reevo.api_key)
        await store.add_connection(
            Connection("ok", "reevo", base_url=sb.reevo.base_url, key_env="R_KEY")
        )
        await store.add_connection(Connection("nokey", "reevo", key_env="NOPE_KEY"))
        with pytest.raises(SyncError) as caught:
            await sync_connections(store)
        assert set(caught.value.errors) == {"nokey"}
        assert caught.value.reports["ok"].inserted == 5
        with pytest.raises(ValueError, match="unknown connections: zzz"):
            await sync_connections(store, ["zzz"])


async def test_a_version_3_store_migrates_to_connections_losing_nothing(tmp_path: Path) -> None:
    """A version 3 store whose copy was synced under a hub name ("acme") and a provider name
    ("reevo"): both become connections; records, tombstones, cursors and watermarks kept."""
    path = tmp_path / "v3.db"
    shutil.copy(V1_FIXTURE, path)
    with sqlite3.connect(path) as conn:
        for version in (2, 3):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("UPDATE opportunities SET provider = 'acme' WHERE provider = 'close'")
        conn.execute("UPDATE watermarks SET provider = 'acme' WHERE provider = 'close'")
        conn.execute(
            "UPDATE opportunities SET deleted_at = '2026-01-01T00:00:00.000000+00:00' "
            "WHERE provider = 'reevo' AND id = (SELECT MIN(id) FROM opportunities "
            "WHERE provider = 'reevo')"
        )
        conn.execute(
            "INSERT INTO feed_cursors VALUES ('acme', 'c-acme', 1, '2026-01-01'), "
            "('reevo', 'c-reevo', 0, '2026-01-01')"
        )
        before = conn.execute(
            "SELECT provider, id, record, raw, content_hash, deleted_at FROM opportunities "
            "ORDER BY provider, id"
        ).fetchall()
        marks = conn.execute("SELECT provider, updated_at FROM watermarks").fetchall()
    conn.close()
    async with SyncStore(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION == 4
        rows = await store.rows(include_deleted=True)
        import json

        after = sorted(
            (
                r["connection"],
                r["id"],
                json.dumps(r["record"], ensure_ascii=False, separators=(",", ":")),
                r["content_hash"],
                r["deleted_at"],
            )
            for r in rows
        )
        assert after == sorted((p, i, rec, h, d) for p, i, rec, _raw, h, d in before)
        vendor = {r["connection"]: r["provider"] for r in rows}
        assert vendor == {"acme": "close", "getraze": "getraze", "reevo": "reevo"}
        assert await store.cursor("acme") == "c-acme"
        assert await store.cursor_complete("reevo") is False
        assert {
            k: v.isoformat(timespec="microseconds") for k, v in (await store.watermarks()).items()
        } == dict(marks)
        assert await store.connections() == []


async def test_many_writers_of_one_postgres_at_once(postgres_url: str) -> None:
    """Stores in parallel (each its own connection and thread) migrate once and write the
    same connection and others without losing a record."""
    async with Sandbox(seed=4, records=30, vendors=["getraze"]) as sb:
        from close_opps import connect

        stores = [open_store(postgres_url) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            async with connect(
                "getraze", api_key=sb.getraze.api_key, base_url=sb.getraze.base_url
            ) as adapter:
                opps = [o async for o in adapter.list()]
            results = await asyncio.gather(
                *(s.upsert(name, opps) for s in stores for name in ("shared", f"own-{id(s)}"))
            )
            shared = [r for i, r in enumerate(results) if i % 2 == 0]
            # exactly one writer inserted the shared connection's records; the rest saw them
            assert sorted(r.inserted for r in shared) == [0, 0, 0, 30]
            assert await stores[0].count("shared") == 30
            assert await stores[0].count() == 30 * 5
            assert await stores[1].schema_version() == SCHEMA_VERSION
            assert all(opportunity_to_dict(o)["id"] for o in opps)
        finally:
            await asyncio.gather(*(s.aclose() for s in stores))


async def test_sync_over_a_mapping_names_the_connections(store_url: str) -> None:
    async with (
        Sandbox(seed=5, records=6, vendors=["getraze"]) as sb,
        open_store(store_url) as store,
    ):
        from close_opps import connect

        async with (
            connect("getraze", api_key=sb.getraze.api_key, base_url=sb.getraze.base_url) as a,
            connect("getraze", api_key=sb.getraze.api_key, base_url=sb.getraze.base_url) as b,
        ):
            await sync({"first": a, "second": b}, store)
        assert await store.count("first") == await store.count("second") == 6
