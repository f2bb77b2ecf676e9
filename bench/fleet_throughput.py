"""Benchmark: a fleet's sync throughput with one worker process and with three.

Starts a throwaway PostgreSQL server (as the tests do: ``tests/_postgres.py``), the three
CRM emulators with a latency per request, registers N connections over them, then, for
each worker count, in a fresh database: queues one sync of every connection, starts the
worker processes, and times until every job has succeeded. Prints records/s side by side.
Run from the repository root::

    python bench/fleet_throughput.py                      # 30 connections of 200 records
    python bench/fleet_throughput.py --connections 60 --records 500 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from close_opps import workers
from close_opps.connections import Connection
from close_opps.sandbox import Sandbox
from close_opps.sync import open_store
from tests._postgres import new_database, postgres_server

VENDORS = ("close", "getraze", "reevo")
WORKER = (
    "import asyncio, sys\n"
    "from close_opps.workers import run_worker\n"
    "asyncio.run(run_worker(sys.argv[1], concurrency=int(sys.argv[2]),"
    " fetch_job_polling_interval=0.2))\n"
)


async def _count(url: str, sql: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(sql.encode())
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


async def _succeeded(url: str) -> int:
    return await _count(
        url,
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded' "
        "AND task_name = 'close_opps.sync_connection'",
    )


async def _run(server: str, sb: Sandbox, args: argparse.Namespace, processes: int) -> float:
    url = new_database(server)
    env = {**os.environ, **{f"BENCH_{v.upper()}_KEY": sb[v].api_key for v in VENDORS}}
    async with open_store(url) as store:
        for i in range(args.connections):
            vendor = VENDORS[i % 3]
            await store.add_connection(
                Connection(
                    f"c{i:03d}",
                    vendor,
                    base_url=sb[vendor].base_url,
                    key_env=f"BENCH_{vendor.upper()}_KEY",
                )
            )
    await workers.ensure_schema(url)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, url, str(args.concurrency), env=env
        )
        for _ in range(processes)
    ]
    try:
        # time the syncs, not the workers' start-up: queue once every worker is polling
        while await _count(url, "SELECT count(*) FROM procrastinate_workers") < processes:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await workers.enqueue(url)
        started = time.perf_counter()
        while await _succeeded(url) < args.connections:  # noqa: ASYNC110 - polls the database
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()
    return float(args.connections * args.records / elapsed)


async def main(args: argparse.Namespace) -> None:
    with postgres_server() as server:
        async with Sandbox(seed=1, records=args.records, latency=args.latency) as sb:
            results = {n: await _run(server, sb, args, n) for n in (1, 3)}
    print(
        f"{args.connections} connections x {args.records} records, "
        f"{args.latency * 1000:.0f} ms per request, concurrency {args.concurrency} per worker"
    )
    for count, rate in results.items():
        print(f"  {count} worker(s): {rate:10.0f} records/s")
    print(f"  three vs one: {results[3] / results[1]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
