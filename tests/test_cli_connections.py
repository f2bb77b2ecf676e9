"""``connections add|list|remove``, ``sync --all``, ``enqueue`` and ``worker``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from close_opps.sandbox import Sandbox
from close_opps.sync import open_store
from tests.test_cli import assert_one_error_line, invoke


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'opps.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_connections_add_list_remove(db: str) -> None:
    result = invoke(
        [
            "connections",
            "add",
            "acme",
            "--provider",
            "close",
            "--key-env",
            "ACME_KEY",
            "--every",
            "15",
            "--base-url",
            "http://127.0.0.1:9/api/v1",
            "--db",
            db,
        ]
    )
    assert result.exit_code == 0, result.output
    assert (
        invoke(
            ["connections", "add", "beta", "--provider", "reevo", "--key-env", "B", "--db", db]
        ).exit_code
        == 0
    )
    again = invoke(
        ["connections", "add", "acme", "--provider", "close", "--key-env", "X", "--db", db]
    )
    assert_one_error_line(again, exit_code=1, contains="exists already")
    listed = invoke(["connections", "list", "--db", db])
    assert listed.stdout.splitlines() == [
        "acme\tclose\tACME_KEY\t15m\thttp://127.0.0.1:9/api/v1",
        "beta\treevo\tB\t-\t-",
    ]
    assert invoke(["connections", "remove", "beta", "--db", db]).exit_code == 0
    gone = invoke(["connections", "remove", "beta", "--db", db])
    assert_one_error_line(gone, exit_code=1, contains="no connection named 'beta'")
    assert invoke(["connections", "list", "--db", db]).stdout.splitlines()[1:] == []


def test_connections_add_checks_its_arguments(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    bad = invoke(["connections", "add", "a", "--provider", "nope", "--key-env", "K", "--db", db])
    assert_one_error_line(bad, exit_code=2, contains="unknown provider 'nope'")
    name = invoke(
        ["connections", "add", "a b", "--provider", "close", "--key-env", "K", "--db", db]
    )
    assert_one_error_line(name, exit_code=2, contains="connection name")
    url = invoke(["connections", "list", "--db", "mysql://u:pw@h/db"])
    line = assert_one_error_line(url, exit_code=1, contains="unknown database URL scheme")
    assert "pw" not in line


async def test_sync_all_syncs_every_connection(db: str) -> None:
    async with Sandbox(seed=3, records=7) as sb:
        env: dict[str, str] = {}
        for vendor in ("close", "getraze", "reevo"):
            env[f"K_{vendor.upper()}"] = sb[vendor].api_key
            for n in (1, 2):
                added = await asyncio.to_thread(
                    invoke,
                    [
                        "connections",
                        "add",
                        f"{vendor}-{n}",
                        "--provider",
                        vendor,
                        "--key-env",
                        f"K_{vendor.upper()}",
                        "--base-url",
                        sb[vendor].base_url,
                        "--db",
                        db,
                    ],
                )
                assert added.exit_code == 0, added.output
        result = await asyncio.to_thread(invoke, ["sync", "--db", db, "--all"], env)
        assert result.exit_code == 0, result.output
        assert "42 opportunities stored" in result.stdout
        assert all(sb[v].api_key not in result.output for v in ("close", "getraze", "reevo"))
        async with open_store(db) as store:
            assert {c: await store.count(c) for c in ["close-1", "reevo-2"]} == {
                "close-1": 7,
                "reevo-2": 7,
            }
        again = await asyncio.to_thread(invoke, ["sync", "--db", db, "--all"], env)
        assert again.exit_code == 0, again.output


def test_sync_all_usage(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    empty = invoke(["sync", "--db", db, "--all"])
    assert_one_error_line(empty, exit_code=1, contains="no connections in")
    both = invoke(["sync", "--db", db, "--all", "close"])
    assert_one_error_line(both, exit_code=2, contains="--all syncs every connection")


def test_enqueue_and_worker_need_postgresql(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    assert_one_error_line(
        invoke(["enqueue", "--db", db, "--all"]), exit_code=1, contains="need a postgresql://"
    )
    assert_one_error_line(
        invoke(["worker", "--db", db]), exit_code=1, contains="need a postgresql://"
    )
    assert_one_error_line(invoke(["enqueue", "--db", db]), exit_code=2, contains="or give --all")


async def test_enqueue_then_a_worker_stopped_by_sigterm(postgres_url: str) -> None:
    async with Sandbox(seed=3, records=5, vendors=["reevo"]) as sb:
        added = await asyncio.to_thread(
            invoke,
            [
                "connections",
                "add",
                "r1",
                "--provider",
                "reevo",
                "--key-env",
                "R1_KEY",
                "--base-url",
                sb.reevo.base_url,
                "--db",
                postgres_url,
            ],
        )
        assert added.exit_code == 0, added.output
        unknown = await asyncio.to_thread(invoke, ["enqueue", "--db", postgres_url, "zz"])
        assert_one_error_line(unknown, exit_code=1, contains="unknown connections: zz")
        queued = await asyncio.to_thread(invoke, ["enqueue", "--db", postgres_url, "r1"])
        assert queued.exit_code == 0 and "queued 1 sync(s)" in queued.stderr
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "close_opps.cli",
            "worker",
            "--db",
            postgres_url,
            "--concurrency",
            "2",
            env={**os.environ, "R1_KEY": sb.reevo.api_key},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            async with open_store(postgres_url) as store:
                for _ in range(300):
                    if await store.count("r1") == 5:
                        break
                    await asyncio.sleep(0.1)
                assert await store.count("r1") == 5
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
        assert code == 0, await proc.stderr.read() if proc.stderr else b""
