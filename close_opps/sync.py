"""Sync of every provider's opportunities into an embedded SQLite database, deletions included.

::

    async with OpportunityHub([close, getraze]) as hub, SyncStore("opps.db") as store:
        reports = await sync(hub, store)

Each run reads, per provider, the provider's change feed (``adapter.changes()``) from the
cursor stored for it, and applies the changes in batches, one transaction each: an upsert
writes the record (reviving a deleted one), a delete keeps the row as a tombstone
(``deleted_at`` set). The feed's new cursor is stored in the transaction of the last batch,
so a run that dies midway loses nothing: the next one reads the changes again from the old
cursor (a first run from its last committed batch), and applying a change twice costs
nothing. See ``docs/sync.md`` and ``docs/changes.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import attrs

from close_opps import telemetry
from close_opps._redact import get_logger, safe_cause
from close_opps.adapters.base import BaseAdapter
from close_opps.changes import Change, ChangeKind
from close_opps.connections import Connection
from close_opps.errors import CloseOppsError, DecodeError
from close_opps.feed import (
    DEFAULT_MAX_DELETION_SHARE,
    Clock,
    FeedState,
    check_mass_deletion,
    decode_cursor,
    encode_cursor,
)
from close_opps.hub import OpportunityHub
from close_opps.model import Opportunity
from close_opps.serialize import (
    _plain_type,
    _record_json,
    canonical_json,
    flat_columns,
    jsonable,
)

__all__ = [
    "SCHEMA_VERSION",
    "TASK_PREFIX",
    "SyncError",
    "SyncReport",
    "SyncStore",
    "UpsertCounts",
    "open_store",
    "sync",
]

logger = get_logger("close_opps.sync")

T = TypeVar("T")

#: The store's schema version (``PRAGMA user_version``).
SCHEMA_VERSION: Final = 4
#: Name prefix of the per-provider sync tasks.
TASK_PREFIX: Final = "close-opps-sync:"
#: Most ``?`` parameters put in one ``IN (...)``.
_IN_CHUNK: Final = 500

#: The columns of ``opportunities`` in schema version 1, after the key (history: never edit).
_V1_FIELD_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("name", "TEXT"),
    ("status", "TEXT NOT NULL"),
    ("status_label", "TEXT"),
    ("stage_id", "TEXT"),
    ("stage_name", "TEXT"),
    ("pipeline_id", "TEXT"),
    ("pipeline_name", "TEXT"),
    ("amount", "TEXT"),  # the exact decimal, as text ("1120.99")
    ("currency", "TEXT"),
    ("value_period", "TEXT"),
    ("confidence", "INTEGER"),
    ("owner_id", "TEXT"),
    ("owner_name", "TEXT"),
    ("company_id", "TEXT"),
    ("company_name", "TEXT"),
    ("contact_id", "TEXT"),
    ("contact_name", "TEXT"),
    ("contact_email", "TEXT"),
    ("source", "TEXT"),
    ("note", "TEXT"),
    ("created_at", "TEXT NOT NULL"),
    ("updated_at", "TEXT NOT NULL"),
    ("won_at", "TEXT"),
    ("lost_at", "TEXT"),
    ("closed_at", "TEXT"),
    ("expected_close_at", "TEXT"),
    ("record", "TEXT NOT NULL"),  # opportunity_to_dict(opp, raw=False) as JSON
    ("raw", "TEXT NOT NULL"),  # the vendor's record as JSON
    ("content_hash", "TEXT NOT NULL"),
    ("first_synced_at", "TEXT NOT NULL"),
    ("synced_at", "TEXT NOT NULL"),
)
#: The flat columns version 2 added (``custom_fields`` as JSON text), and where each is
#: in the stored ``record`` JSON, to fill them in for rows written by version 1.
_V2_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("contact_phone", "$.contact.phone"),
    ("contact_title", "$.contact.title"),
    ("contact_url", "$.contact.url"),
    ("custom_fields", "$.custom_fields"),
)
#: The record's flat columns (``close_opps.serialize.flat_columns``, as CSV has them),
#: after the key: one flattening for both.
_FLAT: Final = tuple(c.name for c in flat_columns() if c.name not in ("provider", "id"))
_BOOKKEEPING: Final = (
    "record",
    "raw",
    "content_hash",
    "first_synced_at",
    "synced_at",
    "deleted_at",  # version 3: NULL for a live record, else when it was deleted
)
#: Version 4 renamed the key's ``provider`` column to ``connection`` (the name the records
#: were synced under) and added ``provider``: the CRM the record came from.
_COLUMNS: Final = ("connection", "id", "provider", *_FLAT, *_BOOKKEEPING)
_JSON_COLUMNS: Final = frozenset({"record", "raw"})

#: Statements taking the schema from version ``n - 1`` to ``n``, for each ``n``.
_MIGRATIONS: Final[Mapping[int, Sequence[str]]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS opportunities (\n"
        "    provider TEXT NOT NULL,\n"
        "    id TEXT NOT NULL,\n"
        + "".join(f"    {name} {kind},\n" for name, kind in _V1_FIELD_COLUMNS)
        + "    PRIMARY KEY (provider, id)\n"
        ")",
        "CREATE INDEX IF NOT EXISTS opportunities_updated_at "
        "ON opportunities (provider, updated_at)",
        "CREATE TABLE IF NOT EXISTS watermarks (\n"
        "    provider TEXT PRIMARY KEY,\n"
        "    updated_at TEXT NOT NULL,\n"
        "    synced_at TEXT NOT NULL\n"
        ")",
    ),
    2: (
        *(f"ALTER TABLE opportunities ADD COLUMN {name} TEXT" for name, _ in _V2_COLUMNS),
        "UPDATE opportunities SET "  # noqa: S608 - constant names and paths only
        + ", ".join(f"{name} = json_extract(record, '{path}')" for name, path in _V2_COLUMNS[:3])
        + f", custom_fields = json(json_extract(record, '{_V2_COLUMNS[3][1]}'))",
    ),
    3: (
        "ALTER TABLE opportunities ADD COLUMN deleted_at TEXT",
        "CREATE INDEX IF NOT EXISTS opportunities_deleted_at "
        "ON opportunities (provider, deleted_at)",
        "CREATE TABLE IF NOT EXISTS feed_cursors (\n"
        "    provider TEXT PRIMARY KEY,\n"
        "    cursor TEXT NOT NULL,\n"
        "    complete INTEGER NOT NULL,\n"
        "    synced_at TEXT NOT NULL\n"
        ")",
    ),
    4: (
        "ALTER TABLE opportunities RENAME COLUMN provider TO connection",
        "ALTER TABLE opportunities ADD COLUMN provider TEXT",
        "UPDATE opportunities SET provider = "
        "COALESCE(json_extract(record, '$.provider'), connection)",
        "ALTER TABLE watermarks RENAME COLUMN provider TO connection",
        "ALTER TABLE feed_cursors RENAME COLUMN provider TO connection",
        "CREATE TABLE IF NOT EXISTS connections (\n"
        "    name TEXT PRIMARY KEY,\n"
        "    provider TEXT NOT NULL,\n"
        "    base_url TEXT,\n"
        "    key_env TEXT,\n"
        "    every_minutes INTEGER,\n"
        "    options TEXT NOT NULL,\n"
        "    created_at TEXT NOT NULL\n"
        ")",
        # one row per sync of a connection by a worker: started, finished (NULL while it
        # runs, or if its worker died), outcome ("ok" or the error's type)
        "CREATE TABLE IF NOT EXISTS sync_runs (\n"
        "    run_id TEXT PRIMARY KEY,\n"
        "    connection TEXT NOT NULL,\n"
        "    worker TEXT NOT NULL,\n"
        "    started_at TEXT NOT NULL,\n"
        "    finished_at TEXT,\n"
        "    outcome TEXT\n"
        ")",
        "CREATE INDEX IF NOT EXISTS sync_runs_connection ON sync_runs (connection, started_at)",
    ),
}
#: PostgreSQL's form of the statements that use SQLite's JSON functions (the rest is the same
#: SQL in both): ``{sqlite statement: postgresql statement}``.
_PG_FORMS: Final[Mapping[str, str]] = {
    _MIGRATIONS[2][-1]: "UPDATE opportunities SET "  # noqa: S608 - constant names and paths
    + ", ".join(
        f"{name} = record::jsonb #>> '{{{path[2:].replace('.', ',')}}}'"
        for name, path in _V2_COLUMNS[:3]
    )
    + ", custom_fields = (record::jsonb -> 'custom_fields')::text",
    _MIGRATIONS[4][2]: "UPDATE opportunities SET "
    "provider = COALESCE(record::jsonb ->> 'provider', connection)",
}

# The statements below are assembled from the constant column names above and ``?``
# placeholders only: no value is ever formatted into SQL (hence the S608 exemptions).
_UPSERT: Final = (
    f"INSERT INTO opportunities ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (connection, id) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}"
        for name in _COLUMNS
        if name not in ("connection", "id", "first_synced_at")
    )
)
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM opportunities"  # noqa: S608
_ORDER: Final = " ORDER BY connection, updated_at, id"


def _select_hashes(count: int) -> str:
    marks = ", ".join("?" for _ in range(count))
    where = f"WHERE connection = ? AND id IN ({marks})"
    return "SELECT id, content_hash, deleted_at FROM opportunities " + where  # noqa: S608


def _stamp(value: datetime) -> str:
    """A datetime as the store writes it: UTC, microseconds always, so text order is time
    order (``2025-01-01T00:00:00.000000+00:00``)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _stamp_or_none(value: datetime | None) -> str | None:
    return None if value is None else _stamp(value)


def _sql_value(value: Any) -> Any:
    """A flat column's value as SQLite stores it: datetimes stamped (UTC, microseconds),
    decimals as exact text, mappings as canonical JSON text, enums as their value."""
    # The common kinds of the declared column types are converted inline by _flat_values.
    if isinstance(value, Enum):  # before str: OpportunityStatus is a StrEnum
        return value.value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, datetime):
        return _stamp(value)
    if isinstance(value, Mapping):
        return canonical_json(value).decode()
    return str(jsonable(value))


def _dumps(value: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)


#: SQLite's INTEGER range.
_SQLITE_INT: Final = range(-(2**63), 2**63)
#: Where each flat column's value is: ``(field, part of it or None)``, in ``_FLAT`` order.
_FLAT_PATHS: Final = tuple(
    (c.field, c.part) for c in flat_columns() if c.name not in ("provider", "id")
)


def _column_type(field: str, part: str | None) -> Any:
    """The declared type of a flat column (``X | None`` as ``X``)."""
    kind = _plain_type(typing.get_type_hints(Opportunity)[field])
    if part is not None:
        kind = _plain_type(typing.get_type_hints(kind)[part])
    return kind


def _compile_flat_values() -> Callable[[Opportunity, Callable[[Any], Any], str], tuple[Any, ...]]:
    """A function ``(opp, convert, custom) -> values`` giving the flat columns of a record,
    in ``_FLAT`` order, as :func:`_sql_value` (passed as ``convert``) gives them; ``custom``
    is the canonical JSON of the record's custom fields, made already.

    It is generated from :data:`_FLAT_PATHS` (so from the model, as attrs generates its
    methods): one expression reading the 30-odd attributes, converting a value of its
    column's declared type inline (a datetime stamped, a decimal as text, an enum as its
    value) and anything else through ``convert``, costs a third of a loop over them, and
    this runs for every record stored.
    """
    namespace: dict[str, Any] = {"stamp": _stamp, "Mapping": Mapping}
    items = []
    for number, (field, part) in enumerate(_FLAT_PATHS):
        if not field.isidentifier() or not (part or "x").isidentifier():  # pragma: no cover
            raise RuntimeError(f"not an attribute name: {field}.{part}")
        read = f"o.{field}" if part is None else f"(None if (p := o.{field}) is None else p.{part})"
        if (field, part) == ("custom_fields", None):  # its JSON, made with the record's
            items.append(
                f"(v if (v := o.{field}) is None or type(v) is str "
                "else custom if isinstance(v, Mapping) else convert(v))"
            )
            continue
        kind = _column_type(field, part)
        inline = {
            datetime: "stamp(v)",
            Decimal: "str(v)",
            int: "v",
        }.get(kind)
        if inline is None and isinstance(kind, type) and issubclass(kind, Enum):
            inline = "v.value"
        fast = ""
        if inline is not None:
            namespace[f"T{number}"] = kind
            fast = f"{inline} if type(v) is T{number} else "
        items.append(f"(v if (v := {read}) is None or type(v) is str else {fast}convert(v))")
    source = f"def flat_values(o, convert, custom):\n    return ({', '.join(items)},)\n"
    exec(compile(source, "<close_opps.sync flat columns>", "exec"), namespace)  # noqa: S102
    function: Callable[[Opportunity, Callable[[Any], Any], str], tuple[Any, ...]]
    function = namespace["flat_values"]
    return function


_flat_values: Final = _compile_flat_values()


def _row(connection: str, opp: Opportunity, now: str) -> tuple[Any, ...]:
    """The ``opportunities`` row of ``opp`` (``first_synced_at`` and ``synced_at`` = now).

    Raises:
        DecodeError: the record holds what SQLite cannot store (text that is not UTF-8, an
            integer beyond 64 bits). The adapters refuse such records when they decode them;
            this is the last line for records built elsewhere.
    """
    try:
        return _build_row(connection, opp, now)
    except (UnicodeError, OverflowError, ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(
            f"the record cannot be stored: {type(exc).__name__}: {exc}",
            provider=connection,
            record_id=opp.id if isinstance(opp.id, str) else None,
        ) from safe_cause(exc)


def _build_row(connection: str, opp: Opportunity, now: str) -> tuple[Any, ...]:
    """Each part of the record is serialized once: the ``record`` and ``raw`` columns are
    canonical JSON (keys sorted), and the digest is computed from those very bytes."""
    if opp.confidence is not None and opp.confidence not in _SQLITE_INT:
        raise OverflowError(f"confidence {opp.confidence} is beyond SQLite's 64-bit integers")
    record, custom = _record_json(opp)
    raw = canonical_json(opp.raw)
    return (
        connection,
        opp.id,
        opp.provider,
        *_flat_values(opp, _sql_value, custom.decode()),
        record.decode(),
        raw.decode(),
        _digest(record, raw),
        now,
        now,
        None,  # deleted_at: an upsert revives a tombstone
    )


def _digest(record: bytes, raw: bytes) -> str:
    """The content digest: SHA-256 of the canonical JSON of the record (without ``raw``), a
    newline, and the canonical JSON of ``raw``. Equal content gives an equal digest; any
    change to a field or to the raw record gives another."""
    return hashlib.sha256(record + b"\n" + raw).hexdigest()


_ID: Final = _COLUMNS.index("id")
_HASH: Final = _COLUMNS.index("content_hash")


@attrs.frozen
class UpsertCounts:
    """What :meth:`SyncStore.upsert` or :meth:`SyncStore.apply` did with a batch.

    ``revived`` counts tombstones brought back by an upsert (also counted in ``updated``);
    ``deleted`` the live records turned into tombstones.
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    revived: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(
            *(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )


class SyncStore:
    """An embedded SQLite store of normalized opportunities and per-provider watermarks.

    ``SyncStore(path)`` (``":memory:"`` for a private in-memory database), then
    ``async with store:`` or ``await store.open()`` / ``await store.aclose()``. Every
    SQLite call runs, one at a time and in order, in the store's own worker thread, so the
    event loop never blocks on the disk. The database is in WAL mode; the schema is created
    when missing and its version kept in ``PRAGMA user_version``.

    Tables: ``opportunities`` (key ``(provider, id)``; the normalized fields as columns,
    ``record``: the normalized record as JSON, ``raw``: the vendor's record as JSON) and
    ``watermarks`` (``provider``, ``updated_at``: the newest ``updated_at`` committed by a
    complete run). See ``docs/sync.md``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: Any = None

    # ---------------------------------------------------------------------- lifecycle

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has run and :meth:`aclose` has not."""
        return self._executor is not None

    async def open(self) -> Self:
        """Connect, switch to WAL and create or migrate the schema.

        Raises:
            RuntimeError: the store is already open, or the database was written by a
                newer close-opps (a higher schema version).
            sqlite3.Error: the file cannot be opened or is not a database.
        """
        if self._executor is not None:
            raise RuntimeError("the store is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="close-opps-sync")
        try:
            await self._run(self._connect)
        except BaseException:
            await self.aclose()
            raise
        return self

    #: What starts a write transaction (SQLite: take the write lock at once).
    _BEGIN: str = "BEGIN IMMEDIATE"

    def _connect(self) -> None:
        conn = self._open_db()
        try:
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _open_db(self) -> Any:
        """A new connection (in the store's thread), in autocommit mode: transactions are
        begun explicitly."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
        except BaseException:
            conn.close()
            raise
        return conn

    def _read_version(self, conn: Any) -> int:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        return int(version)

    def _write_version(self, conn: Any, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version)}")

    def _statement(self, sql: str) -> str:
        """A migration statement in this database's dialect."""
        return sql

    def _lock_connection(self, conn: Any, connection: str) -> None:
        """Serialize the writes of ``connection`` across processes (SQLite's ``BEGIN
        IMMEDIATE`` already serializes every writer)."""

    def _migrate(self, conn: Any) -> None:
        conn.execute(self._BEGIN)
        try:
            self._prepare_migration(conn)
            version = self._read_version(conn)
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the store's schema version is {version}; this close-opps knows up to "
                    f"{SCHEMA_VERSION}: upgrade close-opps to use this database"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(self._statement(statement))
                self._write_version(conn, target)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _prepare_migration(self, conn: Any) -> None:
        """Run first in the migration's transaction (PostgreSQL: its lock and version table)."""

    async def aclose(self) -> None:
        """Close the database (waits for the statement in progress, if any)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=False)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"SyncStore({self.path!r}, {state})"

    # ----------------------------------------------------------------------- plumbing

    async def _run(self, call: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("the store is not open: use `async with SyncStore(path) as store`")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _db(self) -> Any:
        if self._conn is None:  # pragma: no cover - _run checks that the store is open
            raise RuntimeError("the store is not open")
        return self._conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db().execute(sql, params).fetchall())

    # -------------------------------------------------------------------------- reads

    async def schema_version(self) -> int:
        """The database's schema version (SQLite: ``PRAGMA user_version``)."""
        return await self._run(lambda: self._read_version(self._db()))

    async def watermark(self, provider: str) -> datetime | None:
        """The newest ``updated_at`` a complete run of ``provider`` committed (UTC), or
        ``None`` before the first complete run."""
        rows = await self._run(
            lambda: self._query(
                "SELECT updated_at FROM watermarks WHERE connection = ?", (provider,)
            )
        )
        return datetime.fromisoformat(rows[0][0]) if rows else None

    async def watermarks(self) -> dict[str, datetime]:
        """Every provider's watermark."""
        rows = await self._run(
            lambda: self._query("SELECT connection, updated_at FROM watermarks ORDER BY connection")
        )
        return {provider: datetime.fromisoformat(text) for provider, text in rows}

    async def count(self, provider: str | None = None, *, include_deleted: bool = False) -> int:
        """How many live records are stored (for ``provider``, or in all); tombstones too
        with ``include_deleted``."""
        sql, params = _where("SELECT COUNT(*) FROM opportunities", provider, include_deleted)
        rows = await self._run(lambda: self._query(sql, params))
        return int(rows[0][0])

    async def live_ids(self, provider: str) -> set[str]:
        """The ids of ``provider``'s live records (not tombstones)."""
        sql, params = _where("SELECT id FROM opportunities", provider, False)
        rows = await self._run(lambda: self._query(sql, params))
        return {str(row[0]) for row in rows}

    async def cursor(self, provider: str) -> str | None:
        """The change-feed cursor the last run of ``provider`` committed, or ``None``.

        After an interrupted first run it is that run's checkpoint (see :meth:`cursor_complete`).
        """
        rows = await self._run(
            lambda: self._query("SELECT cursor FROM feed_cursors WHERE connection = ?", (provider,))
        )
        return str(rows[0][0]) if rows else None

    async def cursor_complete(self, provider: str) -> bool | None:
        """Whether ``provider``'s stored cursor is that of a run that ended (``False``: the
        checkpoint of an interrupted first run), or ``None`` without a cursor."""
        rows = await self._run(
            lambda: self._query(
                "SELECT complete FROM feed_cursors WHERE connection = ?", (provider,)
            )
        )
        return bool(rows[0][0]) if rows else None

    async def get(self, provider: str, opportunity_id: str) -> dict[str, Any] | None:
        """One stored row as ``{column: value}`` (``record`` and ``raw`` decoded from JSON),
        or ``None``."""
        rows = await self._run(
            lambda: self._query(
                _SELECT + " WHERE connection = ? AND id = ?",
                (provider, opportunity_id),
            )
        )
        return _as_dict(rows[0]) if rows else None

    async def rows(
        self, provider: str | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Every live row (of ``provider``, or all), by provider, ``updated_at`` and id;
        tombstones too with ``include_deleted`` (their ``deleted_at`` is set)."""
        sql, params = _where(_SELECT, provider, include_deleted)
        rows = await self._run(lambda: self._query(sql + _ORDER, params))
        return [_as_dict(row) for row in rows]

    # ------------------------------------------------------------------------- writes

    async def upsert(self, provider: str, opportunities: Iterable[Opportunity]) -> UpsertCounts:
        """Insert or update records under ``provider``, in one transaction.

        A record already stored with the same normalized fields and raw payload is left
        untouched (``unchanged``); otherwise its row is replaced (``updated``) or added
        (``inserted``). Serialization and hashing run in the store's thread too.
        """
        batch = list(opportunities)
        if not batch:
            return UpsertCounts()
        return await self._run(lambda: self._upsert(provider, batch))

    def _upsert(self, provider: str, batch: list[Opportunity]) -> UpsertCounts:
        now = _stamp(datetime.now(UTC))
        return self._transaction(
            lambda conn: self._write_upserts(conn, provider, batch, now), lock=provider
        )

    def _transaction(self, work: Callable[[Any], T], *, lock: str | None = None) -> T:
        conn = self._db()
        conn.execute(self._BEGIN)
        try:
            if lock is not None:
                self._lock_connection(conn, lock)
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _write_upserts(
        conn: Any, provider: str, batch: list[Opportunity], now: str
    ) -> UpsertCounts:
        rows = [_row(provider, opp, now) for opp in batch]
        ids = list(dict.fromkeys(str(row[_ID]) for row in rows))
        stored: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = conn.execute(_select_hashes(len(chunk)), (provider, *chunk))
            stored.update((key, (digest, deleted)) for key, digest, deleted in query.fetchall())
        writes: list[tuple[Any, ...]] = []
        inserted = updated = unchanged = revived = 0
        for row in rows:
            key, digest = str(row[_ID]), str(row[_HASH])
            previous = stored.get(key)
            if previous is None:
                inserted += 1
            elif previous[1] is not None:  # a tombstone comes back
                updated += 1
                revived += 1
            elif previous[0] != digest:
                updated += 1
            else:
                unchanged += 1
                continue
            stored[key] = (digest, None)
            writes.append(row)
        conn.executemany(_UPSERT, writes)
        return UpsertCounts(
            inserted=inserted, updated=updated, unchanged=unchanged, revived=revived
        )

    @staticmethod
    def _write_tombstones(
        conn: Any,
        provider: str,
        deletions: Iterable[tuple[str, datetime | None]],
        now: str,
    ) -> int:
        deleted = 0
        for record_id, occurred_at in deletions:
            cursor = conn.execute(
                "UPDATE opportunities SET deleted_at = ?, synced_at = ? "
                "WHERE connection = ? AND id = ? AND deleted_at IS NULL",
                (_stamp(occurred_at) if occurred_at else now, now, provider, record_id),
            )
            deleted += cursor.rowcount
        return deleted

    @staticmethod
    def _write_cursor(
        conn: Any, provider: str, cursor: str | None, complete: bool, now: str
    ) -> None:
        if cursor is None:
            conn.execute("DELETE FROM feed_cursors WHERE connection = ?", (provider,))
            return
        conn.execute(
            "INSERT INTO feed_cursors (connection, cursor, complete, synced_at) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT (connection) DO UPDATE SET cursor = excluded.cursor, "
            "complete = excluded.complete, synced_at = excluded.synced_at",
            (provider, cursor, int(complete), now),
        )

    async def apply(
        self,
        provider: str,
        changes: Iterable[Change],
        *,
        cursor: str | None = None,
        complete: bool = True,
    ) -> UpsertCounts:
        """Apply changes in order, in one transaction, and store ``cursor`` with them.

        An upsert writes the record as :meth:`upsert` does (reviving a tombstone); a delete
        keeps the row and its raw record, setting ``deleted_at`` (the change's
        ``occurred_at``, else now); deleting an unknown or already deleted id does nothing.
        ``cursor`` (when given) is stored as ``provider``'s feed cursor in the same
        transaction; ``complete=False`` marks it as the checkpoint of an unfinished first run.
        """
        batch = list(changes)
        if not batch and cursor is None:
            return UpsertCounts()

        def work(conn: Any) -> UpsertCounts:
            now = _stamp(datetime.now(UTC))
            total = UpsertCounts()
            start = 0
            while start < len(batch):  # consecutive runs of one kind, in order
                kind = batch[start].kind
                end = start
                while end < len(batch) and batch[end].kind is kind:
                    end += 1
                run = batch[start:end]
                if kind is ChangeKind.UPSERT:
                    opps = [c.opportunity for c in run if c.opportunity is not None]
                    total += self._write_upserts(conn, provider, opps, now)
                else:
                    gone = [(c.id, c.occurred_at) for c in run]
                    total += UpsertCounts(deleted=self._write_tombstones(conn, provider, gone, now))
                start = end
            if cursor is not None:
                self._write_cursor(conn, provider, cursor, complete, now)
            return total

        return await self._run(lambda: self._transaction(work, lock=provider))

    async def delete(self, provider: str, ids: Iterable[str], *, at: datetime | None = None) -> int:
        """Turn live records into tombstones (``deleted_at`` = ``at``, else now); returns
        how many were live."""
        when = _aware_or_none("at", at)
        chosen = [(record_id, when) for record_id in ids]
        now = _stamp(datetime.now(UTC))
        return await self._run(
            lambda: self._transaction(
                lambda conn: self._write_tombstones(conn, provider, chosen, now)
            )
        )

    async def set_cursor(self, provider: str, cursor: str | None, *, complete: bool = True) -> None:
        """Store ``provider``'s feed cursor (``None`` forgets it: the next sync reads every
        record again, and tombstones the stored ones no longer there)."""
        now = _stamp(datetime.now(UTC))
        await self._run(
            lambda: self._transaction(
                lambda conn: self._write_cursor(conn, provider, cursor, complete, now)
            )
        )

    async def set_watermark(self, provider: str, value: datetime | None) -> None:
        """Set ``provider``'s watermark (the newest ``updated_at`` stored, for information).

        ``None`` forgets it and the feed cursor too: the next sync reads everything again.
        """
        if value is None:
            await self._run(
                lambda: self._execute("DELETE FROM watermarks WHERE connection = ?", provider)
            )
            await self.set_cursor(provider, None)
            return
        if value.utcoffset() is None:
            raise ValueError(f"the watermark must be timezone-aware, got {value!r}")
        await self._run(
            lambda: self._execute(
                "INSERT INTO watermarks (connection, updated_at, synced_at) VALUES (?, ?, ?) "
                "ON CONFLICT (connection) DO UPDATE SET "
                "updated_at = excluded.updated_at, synced_at = excluded.synced_at",
                provider,
                _stamp(value),
                _stamp(datetime.now(UTC)),
            )
        )

    # -------------------------------------------------------------------- connections

    async def add_connection(self, connection: Connection, *, replace: bool = False) -> None:
        """Register ``connection`` (its key is not stored: only where it comes from).

        Raises:
            ValueError: a connection of that name exists (unless ``replace``).
        """
        row = (
            connection.name,
            connection.provider,
            connection.base_url,
            connection.key_env,
            connection.every_minutes,
            _dumps(dict(connection.options), sort_keys=True),
            _stamp(datetime.now(UTC)),
        )
        sql = (
            "INSERT INTO connections (name, provider, base_url, key_env, every_minutes, "
            "options, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        if replace:
            sql += (
                " ON CONFLICT (name) DO UPDATE SET provider = excluded.provider, "
                "base_url = excluded.base_url, key_env = excluded.key_env, "
                "every_minutes = excluded.every_minutes, options = excluded.options"
            )
        else:
            sql += " ON CONFLICT (name) DO NOTHING"

        def work(conn: Any) -> int:
            return int(conn.execute(sql, row).rowcount)

        if not await self._run(lambda: self._transaction(work)):
            raise ValueError(f"a connection named {connection.name!r} exists already")

    async def connections(self) -> list[Connection]:
        """The registered connections, by name."""
        rows = await self._run(lambda: self._query(_SELECT_CONNECTIONS + " ORDER BY name"))
        return [_connection(row) for row in rows]

    async def connection(self, name: str) -> Connection | None:
        """The connection named ``name``, or ``None``."""
        rows = await self._run(
            lambda: self._query(_SELECT_CONNECTIONS + " WHERE name = ?", (name,))
        )
        return _connection(rows[0]) if rows else None

    async def remove_connection(self, name: str, *, purge: bool = False) -> bool:
        """Unregister ``name`` (whether it was registered). Its copy and sync state stay
        unless ``purge``: then its records, cursor and watermark are deleted too."""

        def work(conn: Any) -> bool:
            found = conn.execute("DELETE FROM connections WHERE name = ?", (name,)).rowcount
            if purge:
                for table in ("opportunities", "feed_cursors", "watermarks"):
                    conn.execute(f"DELETE FROM {table} WHERE connection = ?", (name,))  # noqa: S608
            return bool(found)

        return await self._run(lambda: self._transaction(work, lock=name))

    async def hold_connection(self, connection: str) -> None:
        """Wait until no other process holds ``connection``, then hold it until the store
        is closed (PostgreSQL: a session advisory lock, released with the connection, so a
        killed process releases it too; SQLite: nothing, its writers are serialized)."""
        await self._run(lambda: self._hold(connection))

    def _hold(self, connection: str) -> None:
        """Nothing for SQLite."""

    # ----------------------------------------------------------------------- sync runs

    async def start_run(self, connection: str, worker: str) -> str:
        """Record that ``worker`` starts syncing ``connection``; returns the run's id."""
        run_id = uuid.uuid4().hex
        now = _stamp(datetime.now(UTC))
        await self._run(
            lambda: self._execute(
                "INSERT INTO sync_runs (run_id, connection, worker, started_at) "
                "VALUES (?, ?, ?, ?)",
                run_id,
                connection,
                worker,
                now,
            )
        )
        return run_id

    async def finish_run(self, run_id: str, outcome: str) -> None:
        """Record the end of a run (``outcome``: ``"ok"`` or the error's type)."""
        now = _stamp(datetime.now(UTC))
        await self._run(
            lambda: self._execute(
                "UPDATE sync_runs SET finished_at = ?, outcome = ? WHERE run_id = ?",
                now,
                outcome,
                run_id,
            )
        )

    async def runs(self, connection: str | None = None) -> list[dict[str, Any]]:
        """The recorded sync runs (of ``connection``, or all), by connection and start."""
        sql = "SELECT connection, worker, started_at, finished_at, outcome FROM sync_runs"
        params: tuple[Any, ...] = ()
        if connection is not None:
            sql += " WHERE connection = ?"
            params = (connection,)
        sql += " ORDER BY connection, started_at"
        rows = await self._run(lambda: self._query(sql, params))
        names = ("connection", "worker", "started_at", "finished_at", "outcome")
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def synced_at(self, connection: str) -> datetime | None:
        """When ``connection``'s last complete sync committed, or ``None``."""
        rows = await self._run(
            lambda: self._query(
                "SELECT synced_at FROM feed_cursors WHERE connection = ? AND complete = 1",
                (connection,),
            )
        )
        return datetime.fromisoformat(rows[0][0]) if rows else None

    async def last_synced(self) -> dict[str, datetime]:
        """When each connection's last complete sync committed (its cursor's time)."""
        rows = await self._run(
            lambda: self._query("SELECT connection, synced_at FROM feed_cursors WHERE complete = 1")
        )
        return {str(name): datetime.fromisoformat(stamp) for name, stamp in rows}

    def _execute(self, sql: str, *params: Any) -> None:
        self._db().execute(sql, params)  # autocommit: one statement, one transaction


_SELECT_CONNECTIONS: Final = (
    "SELECT name, provider, base_url, key_env, every_minutes, options FROM connections"
)


def _connection(row: Sequence[Any]) -> Connection:
    name, provider, base_url, key_env, every, options = row
    return Connection(
        name=name,
        provider=provider,
        base_url=base_url,
        key_env=key_env,
        every_minutes=None if every is None else int(every),
        options=json.loads(options),
    )


def open_store(url: str | os.PathLike[str]) -> SyncStore:
    """The store at ``url`` (not yet open: ``async with open_store(url) as store``).

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite://:memory:``
    or a plain path: a :class:`SyncStore`; ``postgresql://...`` (or ``postgres://``): a
    :class:`~close_opps.pgstore.PostgresStore` (needs the ``postgres`` extra).

    Raises:
        ValueError: another scheme.
    """
    text = os.fspath(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return SyncStore(text)
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ValueError(f"a sqlite URL names a file: sqlite:///opps.db, got {text!r}")
        return SyncStore(path)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from close_opps.pgstore import PostgresStore

        return PostgresStore("postgresql://" + rest)
    raise ValueError(
        f"unknown database URL scheme {scheme!r}: use sqlite:///PATH or postgresql://..."
    )


def _where(sql: str, provider: str | None, include_deleted: bool) -> tuple[str, tuple[Any, ...]]:
    conditions = [] if include_deleted else ["deleted_at IS NULL"]
    params: tuple[Any, ...] = ()
    if provider is not None:
        conditions.append("connection = ?")
        params = (provider,)
    return (sql + " WHERE " + " AND ".join(conditions) if conditions else sql), params


def _aware_or_none(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value


def _as_dict(row: Sequence[Any]) -> dict[str, Any]:
    return {
        name: json.loads(value) if name in _JSON_COLUMNS else value
        for name, value in zip(_COLUMNS, row, strict=True)
    }


# --------------------------------------------------------------------------------- sync


@attrs.frozen
class SyncReport:
    """What one provider's sync did.

    Attributes:
        provider: the provider (the hub's name for it).
        inserted: records stored for the first time.
        updated: stored records whose normalized fields or raw payload changed, and
            deleted records that came back (``revived``).
        unchanged: records delivered again but identical to what was stored (a first run
            over a store that has them, anything re-read after an interrupted run).
        watermark: the newest ``updated_at`` stored for the provider after the run.
        deleted: live records the run turned into tombstones.
        revived: tombstones an upsert brought back (counted in ``updated`` too).
        full_resync: whether the run received every current record (a first run, or Close's
            fallback to full reconciliation); stored records it did not receive were
            deleted then.
    """

    provider: str
    inserted: int
    updated: int
    unchanged: int
    watermark: datetime | None
    deleted: int = 0
    revived: int = 0
    full_resync: bool = False

    @property
    def total(self) -> int:
        """Records read in all."""
        return self.inserted + self.updated + self.unchanged


class SyncError(CloseOppsError):
    """One or more providers failed during :func:`sync`; the others completed.

    ``str(error)`` is one line per failed provider. The first provider error is also the
    ``__cause__``.

    Attributes:
        errors: the failed providers' errors, ``{provider: CloseOppsError}``.
        reports: the :class:`SyncReport` of every provider that completed.
        provider: the failed providers' names, comma-separated.
    """

    def __init__(
        self, errors: Mapping[str, CloseOppsError], reports: Mapping[str, SyncReport]
    ) -> None:
        self.errors: dict[str, CloseOppsError] = dict(errors)
        self.reports: dict[str, SyncReport] = dict(reports)
        total = len(self.errors) + len(self.reports)
        super().__init__(
            f"{len(self.errors)} of {total} providers failed to sync",
            provider=", ".join(self.errors),
        )

    def lines(self) -> list[str]:
        """One line per failed provider: ``"<provider>: <error>"``."""
        result = []
        for name, error in self.errors.items():
            text = str(error)
            if not text.startswith(f"{name}:"):
                text = f"{name}: {text}"
            result.append(text)
        return result

    def __str__(self) -> str:
        return "\n".join(self.lines())


async def _sync_provider(
    name: str,
    adapter: BaseAdapter,
    store: SyncStore,
    **options: Any,
) -> SyncReport:
    """One connection's run, in a ``close_opps.sync`` span, its requests tagged with it."""
    token = telemetry.current_connection.set(name)
    try:
        with telemetry.sync_span(name, adapter.provider) as span:
            before = await store.synced_at(name)
            report = await _sync_one(name, adapter, store, **options)
            telemetry.synced(
                span,
                name,
                adapter.provider,
                counts={
                    "inserted": report.inserted,
                    "updated": report.updated,
                    "unchanged": report.unchanged,
                    "deleted": report.deleted,
                },
                full_resync=report.full_resync,
                lag=None if before is None else (datetime.now(UTC) - before).total_seconds(),
            )
            return report
    finally:
        telemetry.current_connection.reset(token)


async def _sync_one(
    name: str,
    adapter: BaseAdapter,
    store: SyncStore,
    *,
    batch_size: int,
    on_progress: Callable[[str, int], None] | None,
    max_deletion_share: float,
    allow_mass_deletion: bool,
    clock: Clock | None,
) -> SyncReport:
    previous = await store.watermark(name)
    since = await store.cursor(name)
    feed = adapter.changes(
        since,
        max_deletion_share=max_deletion_share,
        allow_mass_deletion=allow_mass_deletion,
        clock=clock,
    )
    counts = UpsertCounts()
    newest: datetime | None = None
    batch: list[Change] = []
    #: The batch being written (in the store's thread) while the feed is read on: one at a
    #: time, so batches are applied in order; its failure is raised at the next flush.
    writing: asyncio.Task[None] | None = None

    #: A batch could not be written: no checkpoint may be stored after it (it would tell a
    #: resumed run that the refused records were stored).
    write_failed = False

    async def write(done: list[Change], cursor: str | FeedState | None, complete: bool) -> None:
        nonlocal newest, counts, write_failed
        try:
            if isinstance(cursor, FeedState):  # a checkpoint: encoded here, as the feed reads on
                cursor = await asyncio.to_thread(encode_cursor, cursor)
            counts += await store.apply(name, done, cursor=cursor, complete=complete)
        except BaseException:
            write_failed = True
            raise
        moments = [c.opportunity.updated_at for c in done if c.opportunity is not None]
        if moments and (newest is None or max(moments) > newest):
            newest = max(moments)
        if on_progress is not None and done:
            on_progress(name, counts.inserted + counts.updated + counts.unchanged + counts.deleted)

    async def settle() -> None:
        """Wait for the batch being written, if any."""
        nonlocal writing
        if writing is not None:
            task, writing = writing, None
            await task

    async def flush(
        *, cursor: str | FeedState | None = None, complete: bool = False, wait: bool = True
    ) -> None:
        """Write the batch (with ``cursor``) after the one being written; ``wait=False``
        returns while it is written, so the next batch is read meanwhile."""
        nonlocal batch, writing
        await settle()  # first: if that write failed, this batch is still in ``batch``
        done, batch = batch, []
        if not done and cursor is None:
            return
        writing = asyncio.create_task(write(done, cursor, complete))
        if wait:
            await settle()

    delivered = checkpointed = 0

    def checkpoint() -> FeedState | None:
        """A first run's checkpoint, to go in with the batch: a run killed later resumes
        after it (None for other runs: they restart from their cursor). Taken here, it is
        encoded with the batch's write, off the event loop while the feed reads on (that
        costs time in the number of records delivered), with every batch at first, then
        every tenth of the way: a killed run redoes at most a tenth of its work."""
        nonlocal checkpointed
        if delivered - checkpointed < max(batch_size, checkpointed // 10):
            return None
        checkpointed = delivered
        return feed.checkpoint_state()

    logger.debug("syncing %s from %s", name, "its cursor" if since else "the beginning")
    try:
        async for change in feed:
            batch.append(change)
            delivered += 1
            if len(batch) >= batch_size:
                await flush(cursor=checkpoint(), complete=False, wait=False)
        await settle()
    except CloseOppsError:
        if not write_failed:
            # the feed failed: keep what was read (with the checkpoint it reached); the
            # cursor stays
            checkpointed = -batch_size  # whatever the spacing: this is the last chance
            await flush(cursor=checkpoint(), complete=False)
        raise
    finally:
        if writing is not None:  # a bug, or cancelled: stop waiting for the batch
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
        await feed.aclose()
    assert feed.cursor is not None  # the feed ran to its end
    if feed.full_resync:
        # Every current record was delivered: stored ones it did not deliver are gone (a
        # store filled before the feed, or by a cursor forgotten). The same guard applies.
        await flush()
        state = await asyncio.to_thread(decode_cursor, feed.cursor, provider=adapter.provider)
        known = state.known
        live = await store.live_ids(name)
        stale = sorted(live - set(known))
        check_mass_deletion(
            adapter.provider,
            would_delete=len(stale),
            known=len(live),
            max_share=max_deletion_share,
            allowed=allow_mass_deletion,
        )
        batch.extend(Change.delete(adapter.provider, record_id) for record_id in stale)
    await flush(cursor=feed.cursor, complete=True)

    watermark = previous
    if newest is not None and (previous is None or newest > previous):
        await store.set_watermark(name, newest)
        watermark = newest
    report = SyncReport(
        provider=name,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        watermark=watermark,
        deleted=counts.deleted,
        revived=counts.revived,
        full_resync=feed.full_resync,
    )
    logger.info(
        "synced %s: %d inserted, %d updated, %d unchanged, %d deleted%s; watermark %s",
        name,
        report.inserted,
        report.updated,
        report.unchanged,
        report.deleted,
        " (full resync)" if report.full_resync else "",
        _stamp_or_none(watermark) or "none",
    )
    return report


async def sync(
    source: OpportunityHub | Iterable[BaseAdapter] | Mapping[str, BaseAdapter],
    store: SyncStore,
    *,
    providers: Iterable[str] | None = None,
    overlap: timedelta = timedelta(seconds=1),
    batch_size: int = 200,
    on_progress: Callable[[str, int], None] | None = None,
    max_deletion_share: float = DEFAULT_MAX_DELETION_SHARE,
    allow_mass_deletion: bool = False,
    clock: Clock | None = None,
) -> dict[str, SyncReport]:
    """Bring ``store`` up to date with every provider of ``source``, concurrently.

    For each provider: read its change feed from the cursor stored for it (every record on
    the first run), apply the changes ``batch_size`` at a time (one transaction per batch:
    upserts write or revive records, deletes keep tombstones), and store the feed's new
    cursor with the last batch. A first run stores its checkpoint with every batch, so a
    run killed midway resumes there. Adapters given directly are not closed.

    Args:
        source: a hub, or adapters (named by ``provider``) or ``{name: adapter}``.
        store: an open :class:`SyncStore`.
        providers: only these (default: all of ``source``).
        overlap: no longer used (the feeds re-read what they need); kept for compatibility
            and still checked.
        batch_size: changes per transaction.
        on_progress: called as ``on_progress(provider, changes_so_far)`` after each
            committed batch.
        max_deletion_share: a run that would delete more than this share of a provider's
            records fails for that provider instead (``MassDeletionError``), deleting
            nothing.
        allow_mass_deletion: turn that guard off.
        clock: the feeds' "now" (see ``BaseAdapter.changes``).

    Returns:
        ``{provider: SyncReport}``, in the order of the providers.

    Raises:
        SyncError: one or more providers failed (after the others completed); it holds the
            errors and the completed providers' reports.
        ValueError: an unknown provider, a negative ``overlap`` or a ``batch_size`` below 1.
    """
    hub = source if isinstance(source, OpportunityHub) else OpportunityHub(source)
    names = hub.select(providers)
    if overlap < timedelta(0):
        raise ValueError(f"overlap must not be negative, got {overlap!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not store.is_open:
        raise RuntimeError("the store is not open: use `async with SyncStore(path) as store`")

    async def guarded(name: str) -> SyncReport | CloseOppsError:
        try:
            return await _sync_provider(
                name,
                hub.adapter(name),
                store,
                batch_size=batch_size,
                on_progress=on_progress,
                max_deletion_share=max_deletion_share,
                allow_mass_deletion=allow_mass_deletion,
                clock=clock,
            )
        except CloseOppsError as exc:
            logger.warning(
                "sync of %s failed; its cursor is unchanged: %s: %s",
                name,
                type(exc).__name__,
                exc,
            )
            return exc

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {
                name: group.create_task(guarded(name), name=f"{TASK_PREFIX}{name}")
                for name in names
            }
    except BaseExceptionGroup as failed:  # a bug, not a provider failure: all were stopped
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise

    reports: dict[str, SyncReport] = {}
    errors: dict[str, CloseOppsError] = {}
    for name, task in tasks.items():
        outcome = task.result()
        if isinstance(outcome, SyncReport):
            reports[name] = outcome
        else:
            errors[name] = outcome
    if errors:
        raise SyncError(errors, reports) from next(iter(errors.values()))
    return reports
