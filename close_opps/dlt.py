"""A dlt source of normalized opportunities, incremental by the change feed, deletions included.

Install the extra (``pip install -e ".[dlt]"`` from the repository), then::

    import dlt
    from close_opps.dlt import opportunities_source

    pipeline = dlt.pipeline("crm", destination="duckdb", dataset_name="crm")
    pipeline.run(opportunities_source({"close": close_adapter, "reevo": reevo_adapter}))

The source has one resource, ``opportunities``: one row per record, merged on
``(connection, id)``. Each run reads every connection's change feed
(``adapter.changes(since=cursor)``) concurrently, from the cursors kept in dlt's own resource
state, so the cursors are committed with the load package that holds the changes: a run that
fails commits neither, and the next run delivers the same changes again. A deletion is a row
with ``deleted = true``, which dlt's ``hard_delete`` hint turns into a ``DELETE`` (or, with
``deletions="flag"``, a tombstone row kept in the table). See ``docs/dlt.md``.

This module imports dlt; ``import close_opps`` does not import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal

import attrs
import dlt
from dlt.common.schema.typing import TColumnSchema, TTableSchemaColumns
from dlt.extract.source import DltSource

from close_opps.adapters.base import BaseAdapter
from close_opps.changes import Change, ChangeKind
from close_opps.errors import CloseOppsError
from close_opps.feed import DEFAULT_MAX_DELETION_SHARE, Clock
from close_opps.model import Money, Opportunity
from close_opps.serialize import flat_columns, jsonable

__all__ = [
    "AMOUNT_PRECISION",
    "AMOUNT_SCALE",
    "RESOURCE_NAME",
    "AmountPrecisionError",
    "Connection",
    "Deletions",
    "opportunities_source",
    "table_columns",
]

logger = logging.getLogger("close_opps.dlt")

#: The resource's (and by default the table's) name; its state holds the cursors.
RESOURCE_NAME: Final = "opportunities"
#: ``amount`` is ``DECIMAL(AMOUNT_PRECISION, AMOUNT_SCALE)``: 29 digits before the point, 9
#: after (38 is the widest decimal DuckDB, BigQuery's BIGNUMERIC aside, and most warehouses
#: take).
AMOUNT_PRECISION: Final = 38
AMOUNT_SCALE: Final = 9
#: Changes per list handed to dlt.
BATCH_SIZE: Final = 500

#: ``"delete"``: a deleted record's row is removed (dlt's ``hard_delete`` hint);
#: ``"flag"``: it is replaced by a tombstone (``deleted = true``, ``deleted_at``, keys).
Deletions = Literal["delete", "flag"]
#: Something that opens a connection: an adapter, or a callable returning one.
AdapterFactory = Callable[[], BaseAdapter]


class AmountPrecisionError(CloseOppsError, ValueError):
    """An amount the ``amount`` column cannot hold exactly (more than ``AMOUNT_SCALE``
    decimal places, or too many digits): refused rather than rounded."""

    def __init__(self, message: str, *, provider: str, opportunity_id: str) -> None:
        super().__init__(message, provider=provider)
        self.opportunity_id = opportunity_id


@attrs.frozen
class Connection:
    """One account to read: its name (the ``connection`` column, the key of its cursor) and
    how to open its adapter.

    ``open`` is called at the start of every run, inside dlt's extraction event loop; the
    adapter it returns is closed (``aclose()``) at the end of the run.
    """

    name: str
    open: AdapterFactory


def _connections(
    connections_or_adapters: (
        BaseAdapter
        | AdapterFactory
        | Iterable[BaseAdapter | Connection]
        | Mapping[str, BaseAdapter | AdapterFactory]
    ),
) -> list[Connection]:
    """The connections named: ``{name: adapter or factory}``, or adapters (named by their
    provider) and :class:`Connection` values."""
    found: list[Connection] = []
    if isinstance(connections_or_adapters, BaseAdapter):
        connections_or_adapters = [connections_or_adapters]
    if isinstance(connections_or_adapters, Mapping):
        for name, value in connections_or_adapters.items():
            found.append(_connection(str(name), value))
    elif callable(connections_or_adapters):
        raise TypeError("a factory needs a name: pass {name: factory} or Connection(name, ...)")
    else:
        for value in connections_or_adapters:
            if isinstance(value, Connection):
                found.append(value)
            elif isinstance(value, BaseAdapter):
                found.append(_connection(value.provider, value))
            else:
                raise TypeError(f"expected an adapter or a Connection, not {type(value).__name__}")
    if not found:
        raise ValueError("opportunities_source needs at least one connection")
    names = [c.name for c in found]
    if len(set(names)) != len(names):
        raise ValueError(
            f"connection names must be unique (got {names}): name them with "
            "{name: adapter} to read two accounts of one provider"
        )
    return found


def _connection(name: str, value: BaseAdapter | AdapterFactory) -> Connection:
    if not name.strip():
        raise ValueError("a connection name must not be empty")
    if isinstance(value, BaseAdapter):
        adapter = value
        # a caller's adapter stays the caller's; its own session is released after each run
        # (it opens another on next use), so the adapter works again in the next run's loop
        return Connection(name, lambda: adapter)
    if callable(value):
        return Connection(name, value)
    raise TypeError(f"{name}: expected an adapter or a callable returning one")


# ------------------------------------------------------------------------------- columns


def _plain(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and typing.get_origin(hint) is not None else hint


def table_columns(*, deletions: Deletions = "delete", raw: bool = True) -> TTableSchemaColumns:
    """The ``opportunities`` table's columns as dlt column hints, in order.

    ``connection`` and ``id`` (the primary key), ``provider``, the record's flat columns
    (``close_opps.serialize.flat_columns``: ``amount`` and ``currency``, ``owner_id`` and
    ``owner_name``, ...), ``custom_fields`` and ``raw`` as JSON, ``deleted`` (with the
    ``hard_delete`` hint unless ``deletions="flag"``), ``deleted_at``, and ``change_seq`` (the
    change's position in its run: the last change of an id delivered twice wins).
    """
    hints = typing.get_type_hints(Opportunity)
    parts: dict[str, Any] = {}
    for cls in {Money, *(_plain(h) for h in hints.values())}:
        if isinstance(cls, type) and attrs.has(cls):
            parts.update({f.name: typing.get_type_hints(cls)[f.name] for f in attrs.fields(cls)})
    columns: dict[str, TColumnSchema] = {
        "connection": {"data_type": "text", "nullable": False, "primary_key": True},
        "id": {"data_type": "text", "nullable": False, "primary_key": True},
    }
    for column in flat_columns():
        if column.name in columns:
            continue
        hint = _plain(hints[column.field] if column.part is None else parts.get(column.part, str))
        if column.name == "amount":
            columns["amount"] = {
                "data_type": "decimal",
                "precision": AMOUNT_PRECISION,
                "scale": AMOUNT_SCALE,
                "nullable": True,
            }
        elif hint is datetime:
            columns[column.name] = {"data_type": "timestamp", "timezone": True, "nullable": True}
        elif hint is int:
            columns[column.name] = {"data_type": "bigint", "nullable": True}
        elif hint is bool:
            columns[column.name] = {"data_type": "bool", "nullable": True}
        elif column.name == "custom_fields":
            columns[column.name] = {"data_type": "json", "nullable": True}
        else:
            columns[column.name] = {"data_type": "text", "nullable": True}
    if raw:
        columns["raw"] = {"data_type": "json", "nullable": True}
    deleted: TColumnSchema = {"data_type": "bool", "nullable": True}
    if deletions == "delete":
        deleted["hard_delete"] = True
    columns["deleted"] = deleted
    columns["deleted_at"] = {"data_type": "timestamp", "timezone": True, "nullable": True}
    columns["change_seq"] = {"data_type": "bigint", "nullable": True, "dedup_sort": "desc"}
    for key, hints_of in columns.items():
        hints_of["name"] = key
    return columns


_LIMIT = Decimal(10) ** (AMOUNT_PRECISION - AMOUNT_SCALE)
_QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)


def _amount(opportunity: Opportunity) -> Decimal | None:
    if opportunity.amount is None:
        return None
    value = opportunity.amount.amount
    if not value.is_finite() or abs(value) >= _LIMIT or value != value.quantize(_QUANTUM):
        raise AmountPrecisionError(
            f"{opportunity.provider}: opportunity {opportunity.id}: amount {value} does not "
            f"fit DECIMAL({AMOUNT_PRECISION},{AMOUNT_SCALE}) exactly",
            provider=opportunity.provider,
            opportunity_id=opportunity.id,
        )
    return value


def _row(change: Change, connection: str, seq: int, *, raw: bool, now: datetime) -> dict[str, Any]:
    """One change as a row of the table."""
    row: dict[str, Any] = {"connection": connection, "id": change.id, "change_seq": seq}
    if change.kind is ChangeKind.DELETE or change.opportunity is None:
        row.update(provider=change.provider, deleted=True, deleted_at=change.occurred_at or now)
        return row
    opportunity = change.opportunity
    for column in flat_columns():
        if column.name in row:
            continue
        value = getattr(opportunity, column.field)
        if column.part is not None:
            value = None if value is None else getattr(value, column.part)
        if column.name == "amount":
            value = _amount(opportunity)
        elif column.name == "custom_fields" or not isinstance(
            value, str | int | bool | datetime | Decimal | type(None)
        ):
            value = jsonable(value)
        elif isinstance(value, str):
            value = str(value)  # an enum's plain value (OpportunityStatus is a StrEnum)
        row[column.name] = value
    if raw:
        row["raw"] = jsonable(opportunity.raw)
    row.update(deleted=False, deleted_at=None)
    return row


# ------------------------------------------------------------------------------- reading


@attrs.define
class _Done:
    """A connection's feed ended (``cursor``) or failed (``error``)."""

    connection: str
    cursor: str | None = None
    error: BaseException | None = None


async def _changes(
    connections: Sequence[Connection],
    state: dict[str, Any],
    *,
    raw: bool,
    max_deletion_share: float,
    allow_mass_deletion: bool,
    clock: Clock | None,
    batch_size: int,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every connection's changes since its stored cursor, read concurrently, as batches of
    rows; the new cursors go into ``state`` once every feed has ended."""
    cursors: dict[str, str] = dict(state.get("cursors") or {})
    queue: asyncio.Queue[list[dict[str, Any]] | _Done] = asyncio.Queue(maxsize=4)
    now = (clock or (lambda: datetime.now(UTC)))()
    seq = 0

    async def read(connection: Connection) -> None:
        nonlocal seq
        done = _Done(connection.name)
        try:
            adapter = connection.open()
            try:
                # reading a cursor is linear in the records it knows (about 4 ms per 1,000):
                # off the loop, which the other connections' feeds share
                feed = await asyncio.to_thread(
                    adapter.changes,
                    cursors.get(connection.name),
                    max_deletion_share=max_deletion_share,
                    allow_mass_deletion=allow_mass_deletion,
                    clock=clock,
                )
                async with feed:
                    batch: list[dict[str, Any]] = []
                    async for change in feed:
                        seq += 1
                        batch.append(_row(change, connection.name, seq, raw=raw, now=now))
                        if len(batch) >= batch_size:
                            await queue.put(batch)
                            batch = []
                    if batch:
                        await queue.put(batch)
                done.cursor = feed.cursor
            finally:
                # releases the session the adapter made in this loop (a caller's adapter
                # opens another on its next use); a caller's ``session=`` is left open
                await adapter.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the consumer, which raises it
            done.error = exc
        await queue.put(done)

    tasks = [asyncio.create_task(read(c), name=f"close_opps.dlt:{c.name}") for c in connections]
    try:
        pending = len(tasks)
        ended: dict[str, str] = {}
        while pending:
            item = await queue.get()
            if isinstance(item, _Done):
                pending -= 1
                if item.error is not None:
                    raise item.error
                assert item.cursor is not None  # a feed that ended has its cursor
                ended[item.connection] = item.cursor
                logger.info("%s: change feed read to its end", item.connection)
                continue
            yield item
        # only now, with every change handed over: committed with them, or not at all
        state["cursors"] = {**cursors, **ended}
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def opportunities_source(
    connections_or_adapters: (
        BaseAdapter
        | Iterable[BaseAdapter | Connection]
        | Mapping[str, BaseAdapter | AdapterFactory]
    ),
    *,
    deletions: Deletions = "delete",
    raw: bool = True,
    table_name: str = RESOURCE_NAME,
    max_deletion_share: float = DEFAULT_MAX_DELETION_SHARE,
    allow_mass_deletion: bool = False,
    clock: Clock | None = None,
    batch_size: int = BATCH_SIZE,
    name: str = "close_opps",
) -> DltSource:
    """A dlt source with one resource, ``opportunities``, of every connection's changes.

    Args:
        connections_or_adapters: ``{name: adapter}`` or ``{name: factory}`` (a callable
            returning an adapter, opened in each run), adapters (each named by its
            provider), or :class:`Connection` values. The name is the ``connection`` column
            and keys the connection's cursor: keep it stable.
        deletions: ``"delete"`` removes a deleted record's row (dlt's ``hard_delete``);
            ``"flag"`` keeps a tombstone (``deleted = true``, ``deleted_at``; the record's
            other columns are null).
        raw: include the record as the provider sent it (the ``raw`` JSON column).
        table_name: the destination table.
        max_deletion_share, allow_mass_deletion: the change feed's mass-deletion guard
            (``docs/changes.md``): a run that trips it fails and commits nothing.
        clock: the feeds' "now" (tests pass the sandbox's ``ManualClock``).
        batch_size: changes per list handed to dlt.
        name: the source's name (and its state's key in the pipeline).

    Adapters given directly are used in dlt's extraction event loop (a thread of its own):
    build them without a ``session=`` of yours, which belongs to another loop. Their own
    session is released at the end of each run.
    """
    if deletions not in ("delete", "flag"):
        raise ValueError(f"deletions must be 'delete' or 'flag', not {deletions!r}")
    if not 0 <= max_deletion_share <= 1:
        raise ValueError("max_deletion_share must be between 0 and 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    connections = _connections(connections_or_adapters)
    columns = table_columns(deletions=deletions, raw=raw)

    async def opportunities() -> AsyncIterator[list[dict[str, Any]]]:
        # dlt runs an async resource on its own event loop in another thread: name the
        # resource, which dlt cannot find from there
        state = dlt.current.resource_state(RESOURCE_NAME)
        async for batch in _changes(
            connections,
            state,
            raw=raw,
            max_deletion_share=max_deletion_share,
            allow_mass_deletion=allow_mass_deletion,
            clock=clock,
            batch_size=batch_size,
        ):
            yield batch

    resource = dlt.resource(
        opportunities,
        name=RESOURCE_NAME,
        table_name=table_name,
        primary_key=("connection", "id"),
        write_disposition="merge",
        columns=columns,
        max_table_nesting=0,
    )

    @dlt.source(name=name, max_table_nesting=0)
    def close_opps() -> Any:
        return resource

    source: DltSource = close_opps()
    return source
