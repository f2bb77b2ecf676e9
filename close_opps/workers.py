"""Syncs run by procrastinate workers on the store's PostgreSQL (the ``workers`` extra).

::

    close-opps connections add acme --provider close --key-env ACME_KEY --every 15 --db $DB
    close-opps worker --db $DB --concurrency 8        # on as many machines as you like
    close-opps enqueue --db $DB --all                  # or wait for the schedule

How it holds together (see ``docs/fleet.md``):

- **One task, one connection.** :func:`enqueue` defers ``close_opps.sync_connection`` with
  procrastinate's ``lock`` and ``queueing_lock`` set to the connection's name: jobs of one
  connection run one after the other, never two at once, and at most one waits in the queue
  (a second ``enqueue`` of a waiting connection is skipped). The task itself also holds a
  PostgreSQL session advisory lock on the connection while it syncs (the store's
  connection): a second sync of it in any process waits, and the lock dies with its
  process.
- **A killed worker loses nothing.** Each worker sends procrastinate heartbeats; every
  ``recover_every`` seconds each worker hands the jobs of workers whose heartbeat stopped
  (``stalled_after`` seconds) back to the queue (procrastinate's ``get_stalled_jobs`` and
  ``retry_job``), and another worker takes the job up, resuming from the checkpoint the
  killed run committed (see ``docs/sync.md``). The connection's later jobs are not blocked:
  the stalled job is the one that runs again.
- **Retries with backoff.** A sync that failed for a transient reason (rate limit, server
  error, network) raises :class:`TransientSyncError`, which procrastinate retries with an
  exponential wait, up to ``MAX_ATTEMPTS``; other failures fail that job only: other
  connections go on.
- **Scheduling.** A procrastinate periodic task, ``close_opps.schedule_due``, runs every
  minute on one worker (procrastinate defers each periodic run once, whatever the number of
  workers) and enqueues each connection whose ``every_minutes`` have passed since its last
  complete sync.
- **SIGTERM / Ctrl-C**: procrastinate's worker stops taking jobs, lets the running syncs
  finish, and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued

from close_opps.connections import KeyResolver, sync_connections
from close_opps.errors import APITimeoutError, RateLimitError, ServerError, TransportError
from close_opps.pgstore import PostgresStore
from close_opps.sync import SyncError, open_store

__all__ = [
    "MAX_ATTEMPTS",
    "QUEUE",
    "TransientSyncError",
    "enqueue",
    "ensure_schema",
    "make_app",
    "recover_stalled",
    "run_worker",
    "schedule_due",
]

logger = logging.getLogger("close_opps.workers")

#: The procrastinate queue the syncs go to.
QUEUE: Final = "close-opps"
#: Attempts of one sync job (the first included) when it keeps failing transiently.
MAX_ATTEMPTS: Final = 5
#: procrastinate's exponential wait base: attempt n waits about ``BACKOFF ** n`` seconds.
BACKOFF: Final = 4
#: The advisory lock taken while the procrastinate schema is installed ("c-o-proc").
_SCHEMA_LOCK: Final = 0x632D6F2D70726F63
_TRANSIENT: Final = (RateLimitError, ServerError, TransportError, APITimeoutError)


class TransientSyncError(Exception):
    """A connection's sync failed for a reason that may pass (retried with backoff)."""


def _lock(name: str) -> str:
    return f"close-opps:{name}"


def _postgres_url(url: str) -> str:
    store = open_store(url)
    if not isinstance(store, PostgresStore):
        raise ValueError(f"the workers need a postgresql:// database, got {url.split(':')[0]!r}")
    return store.url


def make_app(url: str, *, resolver: KeyResolver | None = None) -> procrastinate.App:
    """A procrastinate app on the PostgreSQL at ``url`` with close-opps' tasks.

    ``resolver`` gives the connections' keys (default: each one's environment variable).
    """
    url = _postgres_url(url)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    worker_name = f"{socket.gethostname()}:{os.getpid()}"

    @app.task(
        name="close_opps.sync_connection",
        queue=QUEUE,
        retry=procrastinate.RetryStrategy(
            max_attempts=MAX_ATTEMPTS,
            exponential_wait=BACKOFF,
            retry_exceptions={TransientSyncError},
        ),
    )
    async def sync_connection(connection: str) -> dict[str, int]:
        async with open_store(url) as store:
            await store.hold_connection(connection)
            run_id = await store.start_run(connection, worker_name)
            outcome = "error"
            try:
                reports = await sync_connections(store, [connection], resolver=resolver)
                outcome = "ok"
            except SyncError as exc:
                outcome = ",".join(sorted({type(e).__name__ for e in exc.errors.values()}))
                if all(isinstance(e, _TRANSIENT) for e in exc.errors.values()):
                    raise TransientSyncError(str(exc)) from exc
                raise
            finally:
                await store.finish_run(run_id, outcome)
        report = reports[connection]
        return {
            "inserted": report.inserted,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "deleted": report.deleted,
        }

    @app.periodic(cron="* * * * *", periodic_id="close-opps-schedule")
    @app.task(name="close_opps.schedule_due", queue=QUEUE, queueing_lock="close-opps-schedule")
    async def schedule(timestamp: int) -> int:
        return len(await schedule_due(app, url, now=datetime.fromtimestamp(timestamp, UTC)))

    return app


async def ensure_schema(url: str) -> None:
    """Create the store's tables and procrastinate's schema where missing (once, whatever
    the number of processes starting together)."""
    import psycopg

    url = _postgres_url(url)
    async with open_store(url):
        pass  # creates or migrates the store's schema
    schema = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url)
    ).schema_manager.get_schema()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"SELECT pg_advisory_lock({_SCHEMA_LOCK})")
        try:
            cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
            row = await cursor.fetchone()
            if row is None or row[0] is None:
                await conn.execute(schema.encode())
        finally:
            await conn.execute(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK})")


async def _defer(app: procrastinate.App, names: Iterable[str]) -> tuple[list[str], list[str]]:
    queued: list[str] = []
    skipped: list[str] = []
    task = app.tasks["close_opps.sync_connection"]
    for name in names:
        try:
            await task.configure(lock=_lock(name), queueing_lock=_lock(name)).defer_async(
                connection=name
            )
        except AlreadyEnqueued:
            skipped.append(name)
        else:
            queued.append(name)
    return queued, skipped


async def enqueue(url: str, names: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """Queue one sync of each connection (``names``, or all registered ones).

    Returns ``(queued, skipped)``: skipped ones already had a sync waiting.

    Raises:
        ValueError: an unknown connection, or not a PostgreSQL URL.
    """
    await ensure_schema(url)
    async with open_store(url) as store:
        known = [c.name for c in await store.connections()]
    chosen = known if names is None else list(dict.fromkeys(names))
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown connections: {', '.join(unknown)}")
    app = make_app(url)
    async with app.open_async():
        return await _defer(app, chosen)


async def schedule_due(
    app: procrastinate.App, url: str, *, now: datetime | None = None
) -> list[str]:
    """Queue the connections whose interval has passed since their last complete sync (or
    that never synced); returns those queued."""
    moment = now or datetime.now(UTC)
    async with open_store(url) as store:
        connections = await store.connections()
        last = await store.last_synced()
    due = [
        c.name
        for c in connections
        if c.every_minutes is not None
        and (
            c.name not in last
            # a minute's grace: the tick that falls on the interval counts
            or moment - last[c.name] >= timedelta(minutes=c.every_minutes, seconds=-5)
        )
    ]
    queued, _ = await _defer(app, due)
    if queued:
        logger.info("scheduled %d sync(s): %s", len(queued), ", ".join(queued))
    return queued


async def recover_stalled(app: procrastinate.App, *, stalled_after: float = 30.0) -> int:
    """Hand the jobs of workers whose heartbeat stopped ``stalled_after`` seconds ago back
    to the queue; returns how many."""
    stalled = await app.job_manager.get_stalled_jobs(
        queue=QUEUE, seconds_since_heartbeat=stalled_after
    )
    count = 0
    for job in stalled:
        logger.warning("job %s (%s) of a stalled worker goes back to the queue", job.id, job.lock)
        await app.job_manager.retry_job(job)
        count += 1
    return count


async def run_worker(
    url: str,
    *,
    concurrency: int = 4,
    resolver: KeyResolver | None = None,
    heartbeat: float = 10.0,
    stalled_after: float = 30.0,
    recover_every: float = 15.0,
    install_signal_handlers: bool = True,
    **worker_options: Any,
) -> None:
    """Run a worker until it is stopped (SIGTERM, Ctrl-C: the running syncs finish).

    ``heartbeat``: seconds between the worker's heartbeats; ``stalled_after``: a worker
    silent that long is taken for dead and its jobs run again; ``recover_every``: how often
    this worker looks for such jobs. ``worker_options`` go to procrastinate's worker.
    """
    await ensure_schema(url)
    app = make_app(url, resolver=resolver)

    async def recover() -> None:
        while True:
            try:
                await recover_stalled(app, stalled_after=stalled_after)
            except Exception:  # a database hiccup: try again next time
                logger.exception("recovering stalled jobs failed")
            await asyncio.sleep(recover_every)

    async with app.open_async():
        recovering = asyncio.create_task(recover(), name="close-opps-recover-stalled")
        try:
            await app.run_worker_async(
                queues=[QUEUE],
                concurrency=concurrency,
                update_heartbeat_interval=heartbeat,
                stalled_worker_timeout=stalled_after,
                install_signal_handlers=install_signal_handlers,
                **worker_options,
            )
        finally:
            recovering.cancel()
            await asyncio.gather(recovering, return_exceptions=True)
