"""Benchmark: storing records with close-opps' sync against a hand-written executemany loop.

In one run, on the same Close records (fetched once from the sandbox's Close emulator over
127.0.0.1, then decoded, so no network is timed), alternating, into fresh SQLite files:

- **baseline**: hand-written code that stores exactly the columns close-opps' store holds
  (``opportunities``: the flat columns, ``record`` and ``raw`` as JSON, the content digest)
  with ``orjson`` and one ``executemany`` of the same upsert per batch, one transaction each;
- **close-opps**: ``SyncStore.upsert`` per batch (serializing, hashing, comparing with
  the stored digests and writing, in the store's thread), which is what ``sync()`` does
  with each batch of its change feed;
- **old**: the same with the code of the first release (commit ``b19ac54``, "today's
  rate" when issue #9 was filed), extracted with ``git archive`` and run in a subprocess on
  the same bodies (its own decoder makes its own records from them).

Baseline and close-opps swap places every round. It prints records/s (median and best
run: the machine may be shared) and the ratios close-opps / baseline (target >= 0.90) and
close-opps / old (target >= 1.5). The tables of the baseline and close-opps are compared
after the first round, so the baseline cannot be faster by storing less. Then the same
records are stored again into each filled store (a re-run that finds nothing changed:
the baseline rewrites every row, close-opps compares digests and writes none).

``--end-to-end`` adds the real thing against the emulator (in its own process, no injected
latency): ``sync()`` of a fresh store; ``CloseAdapter.list()`` plus the baseline's writer;
and the old release's ``sync()``. Run::

    pip install -e ".[bench]"
    PYTHONPATH=. python bench/sync_side_by_side.py                  # 5000 records
    PYTHONPATH=. python bench/sync_side_by_side.py --records 20000 --end-to-end
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from list_throughput import emulator_process  # the emulator in its own process, shared

import close_opps
from close_opps import CloseAdapter, Opportunity
from close_opps.adapters.close import close_to_opportunity
from close_opps.sandbox import CloseOptions, Sandbox
from close_opps.sync import SyncStore, sync

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "b19ac54"
PAGE = 100

# ------------------------------------------------------------------------------ records


async def fetch_bodies(records: int) -> list[bytes]:
    """Every Close list page of ``records`` records, as the raw bytes the emulator sent."""
    bodies: list[bytes] = []
    options = CloseOptions(records=records, rate_limit=None)
    async with (
        Sandbox(seed=1, vendors=["close"], close=options) as sb,
        aiohttp.ClientSession(headers=sb.close.auth_headers) as session,
    ):
        for skip in range(0, records, PAGE):
            params = {"_skip": str(skip), "_limit": str(PAGE), "_order_by": "date_created"}
            async with session.get(f"{sb.close.base_url}/opportunity/", params=params) as resp:
                resp.raise_for_status()
                bodies.append(await resp.read())
    return bodies


def decode(bodies: Iterable[bytes]) -> list[Opportunity]:
    """The bodies' records as close-opps makes them (exact decimals)."""
    return [
        close_to_opportunity(raw)
        for body in bodies
        for raw in json.loads(body, parse_float=Decimal)["data"]
    ]


# ----------------------------------------------------------------------------- baseline


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


_SORTED = orjson.OPT_SORT_KEYS


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def baseline_row(connection: str, o: Opportunity, now: str) -> tuple[Any, ...]:
    """One row, written out by hand: every column close-opps stores, in its order.

    As fast as hand-written code goes: orjson writes the (UTC) datetimes itself, the
    custom fields are serialized once for their column and the record, nothing is checked.
    """
    stage, pipeline, amount, owner, company, contact = (
        o.stage,
        o.pipeline,
        o.amount,
        o.owner,
        o.company,
        o.contact,
    )
    custom_json = orjson.dumps(o.custom_fields, default=_default, option=_SORTED)
    record = {
        "provider": o.provider,
        "id": o.id,
        "created_at": o.created_at,
        "updated_at": o.updated_at,
        "name": o.name,
        "status": o.status.value,
        "status_label": o.status_label,
        "stage": None if stage is None else {"id": stage.id, "name": stage.name},
        "pipeline": None if pipeline is None else {"id": pipeline.id, "name": pipeline.name},
        "amount": None
        if amount is None
        else {"amount": str(amount.amount), "currency": amount.currency},
        "value_period": o.value_period,
        "confidence": o.confidence,
        "owner": None if owner is None else {"id": owner.id, "name": owner.name},
        "company": None if company is None else {"id": company.id, "name": company.name},
        "contact": None
        if contact is None
        else {
            "id": contact.id,
            "name": contact.name,
            "email": contact.email,
            "phone": contact.phone,
            "title": contact.title,
            "url": contact.url,
        },
        "note": o.note,
        "source": o.source,
        "won_at": o.won_at,
        "lost_at": o.lost_at,
        "closed_at": o.closed_at,
        "expected_close_at": o.expected_close_at,
        "custom_fields": orjson.Fragment(custom_json),
    }
    record_json = orjson.dumps(record, option=_SORTED)
    raw_json = orjson.dumps(o.raw, default=_default, option=_SORTED)
    digest = hashlib.sha256(record_json + b"\n" + raw_json).hexdigest()
    custom = custom_json.decode()
    return (
        connection,
        o.id,
        o.provider,
        _stamp(o.created_at),
        _stamp(o.updated_at),
        o.name,
        o.status.value,
        o.status_label,
        None if stage is None else stage.id,
        None if stage is None else stage.name,
        None if pipeline is None else pipeline.id,
        None if pipeline is None else pipeline.name,
        None if amount is None else str(amount.amount),
        None if amount is None else amount.currency,
        o.value_period,
        o.confidence,
        None if owner is None else owner.id,
        None if owner is None else owner.name,
        None if company is None else company.id,
        None if company is None else company.name,
        None if contact is None else contact.id,
        None if contact is None else contact.name,
        None if contact is None else contact.email,
        None if contact is None else contact.phone,
        None if contact is None else contact.title,
        None if contact is None else contact.url,
        o.note,
        o.source,
        _stamp(o.won_at),
        _stamp(o.lost_at),
        _stamp(o.closed_at),
        _stamp(o.expected_close_at),
        custom,
        record_json.decode(),
        raw_json.decode(),
        digest,
        now,
        now,
        None,
    )


#: The baseline's column order (checked against the table close-opps creates).
BASELINE_COLUMNS = (
    *("connection", "id", "provider", "created_at", "updated_at", "name", "status"),
    *("status_label", "stage_id", "stage_name", "pipeline_id", "pipeline_name", "amount"),
    *("currency", "value_period", "confidence", "owner_id", "owner_name", "company_id"),
    *("company_name", "contact_id", "contact_name", "contact_email", "contact_phone"),
    *("contact_title", "contact_url", "note", "source", "won_at", "lost_at", "closed_at"),
    *("expected_close_at", "custom_fields", "record", "raw", "content_hash"),
    *("first_synced_at", "synced_at", "deleted_at"),
)


def upsert_sql(columns: Sequence[str]) -> str:
    """The same upsert close-opps runs (first_synced_at kept on conflict)."""
    keep = ("connection", "id", "first_synced_at")
    return (
        f"INSERT INTO opportunities ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT (connection, id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keep)
    )


class BaselineWriter:
    """sqlite3, the store's pragmas, one executemany per batch in one transaction."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        columns = [row[1] for row in self.conn.execute("PRAGMA table_info(opportunities)")]
        if sorted(columns) != sorted(BASELINE_COLUMNS):
            raise SystemExit(f"the store's columns changed: {columns}; update the baseline")
        self.sql = upsert_sql(BASELINE_COLUMNS)

    def write(self, connection: str, batch: Sequence[Opportunity]) -> None:
        now = _stamp(datetime.now(UTC))
        rows = [baseline_row(connection, o, now or "") for o in batch]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(self.sql, rows)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


async def new_store(path: str) -> None:
    """An empty store with close-opps' schema (created before any timing)."""
    async with SyncStore(path):
        pass


def batches(opps: Sequence[Opportunity], size: int) -> list[Sequence[Opportunity]]:
    return [opps[i : i + size] for i in range(0, len(opps), size)]


async def time_baseline(path: str, opps: Sequence[Opportunity], size: int) -> tuple[float, float]:
    """Storing every record into a fresh store, then the same records again."""
    await new_store(path)
    writer = BaselineWriter(path)
    times = []
    try:
        for _ in range(2):
            started = time.perf_counter()
            for batch in batches(opps, size):
                writer.write("close", batch)
            times.append(time.perf_counter() - started)
    finally:
        writer.close()
    return times[0], times[1]


async def time_close_opps(path: str, opps: Sequence[Opportunity], size: int) -> tuple[float, float]:
    """Storing every record into a fresh store, then the same records again."""
    await new_store(path)
    times = []
    async with SyncStore(path) as store:
        for _ in range(2):
            started = time.perf_counter()
            for batch in batches(opps, size):
                await store.upsert("close", batch)
            times.append(time.perf_counter() - started)
    return times[0], times[1]


def table(path: str) -> list[tuple[Any, ...]]:
    """Every stored value but the sync times, by id (JSON columns parsed: key order aside)."""
    columns = [c for c in BASELINE_COLUMNS if c not in ("first_synced_at", "synced_at")]
    parsed = {columns.index(c) for c in ("record", "raw", "custom_fields")}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sql = f"SELECT {', '.join(columns)} FROM opportunities ORDER BY id"  # noqa: S608
        return [
            tuple(json.loads(v) if i in parsed else v for i, v in enumerate(row))
            for row in conn.execute(sql).fetchall()
        ]


# ---------------------------------------------------------------------------- old code

#: Run in the old tree: decode the same bodies with the old code, time its store (or sync).
OLD_SCRIPT = r"""
import asyncio, json, sys, time
from decimal import Decimal
from close_opps.adapters.close import CloseAdapter, close_to_opportunity
from close_opps.sync import SyncStore, sync

mode, arg, db, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def store_only():
    bodies = json.load(open(arg))
    opps = [close_to_opportunity(r) for b in bodies
            for r in json.loads(b, parse_float=Decimal)["data"]]
    async with SyncStore(db) as store:
        started = time.perf_counter()
        for i in range(0, len(opps), size):
            await store.upsert("close", opps[i : i + size])
        return time.perf_counter() - started, len(opps)

async def end_to_end():
    base_url, api_key = json.loads(arg)
    async with SyncStore(db) as store:
        started = time.perf_counter()
        adapter = CloseAdapter(api_key, base_url=base_url)
        async with adapter:
            reports = await sync({"close": adapter}, store, batch_size=size)
        return time.perf_counter() - started, reports["close"].inserted

elapsed, count = asyncio.run(store_only() if mode == "store" else end_to_end())
print(json.dumps([elapsed, count]))
"""


def old_tree(commit: str, into: str) -> str:
    """The package as of ``commit``, extracted from this checkout's git history."""
    archive = subprocess.run(  # noqa: S603
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "close_opps"],  # noqa: S607
        check=True,
        capture_output=True,
    ).stdout
    target = os.path.join(into, "old")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def time_old(tree: str, mode: str, arg: str, db: str, size: int, expected: int) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", OLD_SCRIPT, mode, arg, db, str(size)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
    )
    elapsed, count = json.loads(done.stdout.strip().splitlines()[-1])
    if count != expected:
        raise SystemExit(f"the old code stored {count} records, expected {expected}")
    return float(elapsed)


# ---------------------------------------------------------------------------- end to end


async def e2e_close_opps(base_url: str, api_key: str, db: str, size: int, n: int) -> float:
    await new_store(db)
    async with SyncStore(db) as store:
        started = time.perf_counter()
        async with CloseAdapter(api_key, base_url=base_url) as adapter:
            reports = await sync({"close": adapter}, store, batch_size=size)
        elapsed = time.perf_counter() - started
    if reports["close"].inserted != n:
        raise SystemExit(f"sync stored {reports['close'].inserted}, expected {n}")
    return elapsed


async def e2e_baseline(base_url: str, api_key: str, db: str, size: int, n: int) -> float:
    await new_store(db)
    writer = BaselineWriter(db)
    count = 0
    try:
        started = time.perf_counter()
        batch: list[Opportunity] = []
        async with CloseAdapter(api_key, base_url=base_url) as adapter:
            async for opp in adapter.list():
                batch.append(opp)
                if len(batch) >= size:
                    writer.write("close", batch)
                    count += len(batch)
                    batch = []
        writer.write("close", batch)
        count += len(batch)
        elapsed = time.perf_counter() - started
    finally:
        writer.close()
    if count != n:
        raise SystemExit(f"the baseline stored {count}, expected {n}")
    return elapsed


# ---------------------------------------------------------------------------------- main


def report(title: str, n: int, runs: dict[str, list[float]], *, targets: bool = True) -> None:
    """Median and best time of each, and the ratios of both (a shared machine is noisy:
    the best runs are the ones least disturbed)."""
    medians = {name: statistics.median(times) for name, times in runs.items() if times}
    bests = {name: min(times) for name, times in runs.items() if times}
    print(title)
    for name, median in medians.items():
        print(
            f"  {name:<11} median {median:6.3f} s {n / median:9,.0f} records/s   "
            f"best {bests[name]:6.3f} s {n / bests[name]:9,.0f} records/s"
        )
    if "close-opps" not in medians:
        return
    for other, target in (("baseline", ">= 0.90"), ("old", ">= 1.5")):
        if other in medians:
            target = target if targets else "none"
            by_median = medians[other] / medians["close-opps"]
            by_best = bests[other] / bests["close-opps"]
            print(
                f"  close-opps / {other} (rate): {by_median:5.2f} by medians, "
                f"{by_best:5.2f} by best runs   (target {target})"
            )


def main(args: argparse.Namespace) -> None:
    print(f"close_opps from {Path(close_opps.__file__).parent}, Python {sys.version.split()[0]}")
    bodies = asyncio.run(fetch_bodies(args.records))
    opps = decode(bodies)
    n = len(opps)
    with tempfile.TemporaryDirectory(prefix="close-opps-bench-") as tmp:
        tree = None if args.no_old else old_tree(args.old_commit, tmp)
        bodies_file = os.path.join(tmp, "bodies.json")
        with open(bodies_file, "w") as out:
            json.dump([b.decode() for b in bodies], out)

        runs: dict[str, list[float]] = {"baseline": [], "close-opps": [], "old": []}
        again: dict[str, list[float]] = {"baseline": [], "close-opps": []}
        for round_ in range(args.repeat):  # alternate: every contender sees the same machine
            paths = {name: os.path.join(tmp, f"{name}-{round_}.db") for name in runs}
            timers = {"baseline": time_baseline, "close-opps": time_close_opps}
            order = list(timers) if round_ % 2 == 0 else list(reversed(timers))  # no favourite
            for name in order:
                first, second = asyncio.run(timers[name](paths[name], opps, args.batch))
                runs[name].append(first)
                again[name].append(second)
            if round_ == 0 and table(paths["baseline"]) != table(paths["close-opps"]):
                raise SystemExit("the baseline does not store what close-opps stores")
            if tree is not None:
                runs["old"].append(
                    time_old(tree, "store", bodies_file, paths["old"], args.batch, n)
                )
            for path in paths.values():
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path + suffix)
        report(
            f"store only: {n} Close records decoded beforehand, batches of {args.batch} "
            f"(one transaction each), fresh SQLite file, median of {args.repeat} "
            f"alternating runs; old = {args.old_commit}",
            n,
            runs,
        )
        report(
            "the same records stored again (nothing changed: the baseline rewrites every row, "
            "close-opps compares digests and writes none)",
            n,
            again,
            targets=False,
        )
        if args.end_to_end:
            end_to_end(args, tmp, tree, n)


def end_to_end(args: argparse.Namespace, tmp: str, tree: str | None, n: int) -> None:
    with emulator_process(args.records, 0.0) as server:
        base_url, api_key = server.base_url, server.api_key
        runs: dict[str, list[float]] = {"baseline": [], "close-opps": [], "old": []}
        for round_ in range(args.repeat):
            paths = {name: os.path.join(tmp, f"e2e-{name}-{round_}.db") for name in runs}
            runs["baseline"].append(
                asyncio.run(e2e_baseline(base_url, api_key, paths["baseline"], args.batch, n))
            )
            runs["close-opps"].append(
                asyncio.run(e2e_close_opps(base_url, api_key, paths["close-opps"], args.batch, n))
            )
            if tree is not None:
                arg = json.dumps([base_url, api_key])
                runs["old"].append(time_old(tree, "sync", arg, paths["old"], args.batch, n))
    report(
        f"end to end against the Close emulator (own process, no injected latency): "
        f"baseline = CloseAdapter.list() + the hand-written writer; close-opps = sync(); "
        f"old = sync() of {args.old_commit}; median of {args.repeat}",
        n,
        runs,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200, help="records per transaction")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--end-to-end", action="store_true", help="also sync() over HTTP")
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--no-old", action="store_true", help="skip the old release")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
