"""The fleet: connections synced by procrastinate workers on a real PostgreSQL.

50 connections over the three emulators, three worker processes, one killed with SIGKILL
midway: in the end every connection's copy equals its emulator's records, and the store's
record of sync runs shows no connection ever synced by two workers at once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import procrastinate
import psycopg
import pytest

from close_opps import connect, workers
from close_opps.connections import Connection
from close_opps.sandbox import Fault, Sandbox
from close_opps.serialize import opportunity_to_dict
from close_opps.sync import SyncError, open_store

VENDORS = ("close", "getraze", "reevo")
CONNECTIONS = 50
#: A worker process with short heartbeats, so a killed one is found dead in ~2 s.
WORKER = (
    "import asyncio, sys\n"
    "from close_opps.workers import run_worker\n"
    "asyncio.run(run_worker(sys.argv[1], concurrency=3, heartbeat=0.5, stalled_after=2.0,"
    " recover_every=0.5, fetch_job_polling_interval=0.5))\n"
)


def _key_env(vendor: str) -> str:
    return f"FLEET_{vendor.upper()}_KEY"


async def _jobs(url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs "
            "WHERE task_name = 'close_opps.sync_connection' GROUP BY status"
        )
        return {status: int(n) for status, n in await cursor.fetchall()}


async def _wait_for(check: Any, *, deadline: float, what: str) -> None:
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _overlaps(runs: list[dict[str, Any]], killed_at: str) -> list[tuple[str, str, str]]:
    """Pairs of runs of one connection that overlap in time (a run with no end: its worker
    was killed, so it ended at ``killed_at`` at the latest)."""
    found = []
    by_connection: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_connection.setdefault(run["connection"], []).append(run)
    for name, mine in by_connection.items():
        mine.sort(key=lambda r: r["started_at"])
        for before, after in itertools.pairwise(mine):
            end = before["finished_at"] or killed_at
            if after["started_at"] < end:
                found.append((name, before["worker"], after["worker"]))
    return found


async def test_a_fleet_of_workers_survives_a_killed_one(postgres_url: str) -> None:
    async with Sandbox(seed=13, records=30, latency=0.03) as sb:
        env = {**os.environ, **{_key_env(v): sb[v].api_key for v in VENDORS}}
        async with open_store(postgres_url) as store:
            for i in range(CONNECTIONS):
                vendor = VENDORS[i % 3]
                await store.add_connection(
                    Connection(
                        f"c{i:02d}-{vendor}",
                        vendor,
                        base_url=sb[vendor].base_url,
                        key_env=_key_env(vendor),
                        options={"page_size": 10, "max_retries": 2},
                    )
                )
        os.environ.update({_key_env(v): sb[v].api_key for v in VENDORS})
        try:
            queued, skipped = await workers.enqueue(postgres_url)
        finally:
            for vendor in VENDORS:
                os.environ.pop(_key_env(vendor), None)
        assert len(queued) == CONNECTIONS and skipped == []
        # a second enqueue while they wait queues nothing (one waiting job per connection)
        assert await workers.enqueue(postgres_url) == ([], queued)

        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                postgres_url,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(3)
        ]
        deadline = time.monotonic() + 50
        victim = procs[0]
        try:
            async with open_store(postgres_url) as store:

                async def victim_is_midway() -> bool:
                    runs = await store.runs()
                    done = sum(1 for r in runs if r["finished_at"])
                    busy = [
                        r
                        for r in runs
                        if r["finished_at"] is None and r["worker"].endswith(f":{victim.pid}")
                    ]
                    return done >= 5 and bool(busy)

                await _wait_for(victim_is_midway, deadline=deadline, what="a busy victim")
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
                # the killed runs ended by now at the latest (stamps as the store writes them)
                killed_at = datetime.now(UTC).isoformat(timespec="microseconds")
                orphaned = [
                    r["connection"]
                    for r in await store.runs()
                    if r["finished_at"] is None and r["worker"].endswith(f":{victim.pid}")
                ]
                assert orphaned

                async def all_done() -> bool:
                    return (await _jobs(postgres_url)) == {"succeeded": CONNECTIONS}

                await _wait_for(all_done, deadline=deadline, what="every sync to succeed")
                runs = await store.runs()
                # the killed worker's connections were synced again, by another worker
                for name in orphaned:
                    assert any(r["connection"] == name and r["outcome"] == "ok" for r in runs), name
                assert _overlaps(runs, killed_at) == []

                truth = {}
                for vendor in VENDORS:
                    async with connect(
                        vendor, api_key=sb[vendor].api_key, base_url=sb[vendor].base_url
                    ) as adapter:
                        truth[vendor] = {
                            o.id: opportunity_to_dict(o)["raw"] async for o in adapter.list()
                        }
                for connection in await store.connections():
                    copy = {r["id"]: r["raw"] for r in await store.rows(connection.name)}
                    assert copy == truth[connection.provider], connection.name
        finally:
            for proc in procs[1:]:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), 30) for p in procs[1:]]
        assert codes == [0, 0], [await p.stderr.read() for p in procs[1:] if p.stderr]


async def test_transient_failures_are_retried_and_others_are_not(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Sandbox(seed=3, records=5, vendors=["reevo"]) as sb:
        monkeypatch.setenv("W_KEY", sb.reevo.api_key)
        monkeypatch.setenv("W_BAD", "not-the-key")
        async with open_store(postgres_url) as store:
            await store.add_connection(
                Connection(
                    "down",
                    "reevo",
                    base_url=sb.reevo.base_url,
                    key_env="W_KEY",
                    options={"max_retries": 0},
                )
            )
            await store.add_connection(
                Connection("badkey", "reevo", base_url=sb.reevo.base_url, key_env="W_BAD")
            )
        await workers.ensure_schema(postgres_url)
        app = workers.make_app(postgres_url)
        task = app.tasks["close_opps.sync_connection"]
        strategy = task.retry_strategy
        assert isinstance(strategy, procrastinate.RetryStrategy)

        def retry_at(exc: BaseException, attempts: int) -> datetime | None:
            job: Any = SimpleNamespace(attempts=attempts)
            decision = strategy.get_retry_decision(exception=exc, job=job)
            return None if decision is None else decision.retry_at

        transient = workers.TransientSyncError("503")
        waits = [retry_at(transient, n) for n in range(workers.MAX_ATTEMPTS)]
        assert all(w is not None for w in waits)
        assert waits == sorted(w for w in waits if w is not None)  # longer each time
        assert retry_at(transient, workers.MAX_ATTEMPTS) is None  # then it fails
        assert retry_at(SyncError({}, {}), 0) is None  # not transient: no retry

        sb.reevo.script(Fault.server_error(503))
        with pytest.raises(workers.TransientSyncError):
            await task.func(connection="down")
        with pytest.raises(SyncError):
            await task.func(connection="badkey")
        assert await task.func(connection="down") == {
            "inserted": 5,
            "updated": 0,
            "unchanged": 0,
            "deleted": 0,
        }
        async with open_store(postgres_url) as store:
            outcomes = [(r["connection"], r["outcome"]) for r in await store.runs()]
        assert outcomes == [
            ("badkey", "AuthenticationError"),
            ("down", "ServerError"),
            ("down", "ok"),
        ]


async def test_the_schedule_queues_connections_that_are_due(postgres_url: str) -> None:
    async with Sandbox(seed=3, records=3, vendors=["getraze"]) as sb:
        async with open_store(postgres_url) as store:
            for name, every in (("fresh", 60), ("stale", 5), ("never", 5), ("manual", None)):
                await store.add_connection(
                    Connection(name, "getraze", base_url=sb.getraze.base_url, every_minutes=every)
                )
            for name in ("fresh", "stale"):
                await store.set_cursor(name, "c")  # a complete sync, committed now
        await workers.ensure_schema(postgres_url)
        app = workers.make_app(postgres_url)
        later = datetime.now(UTC) + timedelta(minutes=10)
        async with app.open_async():
            assert await workers.schedule_due(app, postgres_url, now=later) == ["never", "stale"]
            # already waiting: not queued twice
            assert await workers.schedule_due(app, postgres_url, now=later) == []
            assert await workers.schedule_due(app, postgres_url) == []
        assert (await _jobs(postgres_url)) == {"todo": 2}
