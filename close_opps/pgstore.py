"""The sync store on PostgreSQL: the SQLite store's schema, migrations and semantics.

``PostgresStore("postgresql://user@host/db")`` (or ``open_store(url)``) behaves as
:class:`~close_opps.sync.SyncStore`: the same tables and columns, the same migration
statements (only the two that use SQLite's JSON functions have a PostgreSQL form), the same
upserts, tombstones, watermarks, cursors and checkpoints, because it is the same code over
another DB-API connection. It needs ``psycopg`` (the ``postgres`` extra):
psycopg 3 is the driver procrastinate uses too, so the workers' extra brings one driver.

Many processes may use one database at once:

- the schema is created or migrated under a transaction-level advisory lock, so processes
  starting together migrate once;
- every write transaction of a connection first takes an advisory lock on the connection's
  name, so two writers of one connection apply their batches one after the other (the
  counts they report stay exact); writers of different connections never wait for each
  other;
- upserts are ``INSERT ... ON CONFLICT DO UPDATE``, safe under concurrency anyway.

The store's calls run, one at a time and in order, in its own worker thread (one
connection per store), as SQLite's do: nothing blocks the event loop.
"""

from __future__ import annotations

import re
from typing import Any, Final

from close_opps.sync import _PG_FORMS, SyncStore

__all__ = ["PostgresStore"]

#: The advisory lock key taken while the schema is created or migrated ("close-opps").
_SCHEMA_LOCK: Final = 0x636C6F7365
_PLACEHOLDER: Final = re.compile(r"\?")


def _pg_sql(sql: str) -> str:
    """A statement written with SQLite's ``?`` placeholders in psycopg's ``%s`` form (the
    store's statements contain no ``?`` or ``%`` of their own)."""
    return _PLACEHOLDER.sub("%s", sql)


class _Connection:
    """A psycopg connection with sqlite3's ``execute``/``executemany`` and ``?`` markers."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(_pg_sql(sql), tuple(params) if params else None)
        return cursor

    def executemany(self, sql: str, rows: Any) -> Any:
        cursor = self._conn.cursor()
        rows = list(rows)
        if rows:
            cursor.executemany(_pg_sql(sql), rows)
        return cursor

    def close(self) -> None:
        self._conn.close()


class PostgresStore(SyncStore):
    """A :class:`~close_opps.sync.SyncStore` in a PostgreSQL database (see the module).

    ``url``: a libpq connection URL (``postgresql://user:password@host:5432/db``, or with
    ``?host=/run/postgresql`` for a Unix socket). The schema version is kept in the table
    ``close_opps_schema``.
    """

    _BEGIN = "BEGIN"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url

    def _open_db(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "a PostgreSQL store needs psycopg: install close-opps with its postgres extra"
            ) from exc
        return _Connection(psycopg.connect(self.url, autocommit=True))

    def _prepare_migration(self, conn: Any) -> None:
        conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        conn.execute("CREATE TABLE IF NOT EXISTS close_opps_schema (version INTEGER NOT NULL)")

    def _read_version(self, conn: Any) -> int:
        row = conn.execute("SELECT version FROM close_opps_schema").fetchone()
        return 0 if row is None else int(row[0])

    def _write_version(self, conn: Any, version: int) -> None:
        conn.execute("DELETE FROM close_opps_schema")
        conn.execute("INSERT INTO close_opps_schema (version) VALUES (?)", (version,))

    def _statement(self, sql: str) -> str:
        return _PG_FORMS.get(sql, sql)

    def _lock_connection(self, conn: Any, connection: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (connection,))

    def _hold(self, connection: str) -> None:
        self._db().execute("SELECT pg_advisory_lock(hashtextextended(?, 0))", (connection,))

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"PostgresStore({_redacted(self.url)!r}, {state})"


def _redacted(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
