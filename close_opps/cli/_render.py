"""What the command line prints: JSONL, CSV and rich tables of opportunities, and summaries.

Data goes to ``sys.stdout`` (looked up at each write, so a progress display or a test runner
that swaps the stream sees every line); nothing here writes to stderr.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import os
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import attrs
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from close_opps.changes import Change
from close_opps.model import Money, Opportunity, OpportunityStatus, Ref
from close_opps.serialize import (
    FlatColumn,
    flat_columns,
    jsonable,
    opportunity_to_dict,
    opportunity_to_json,
)
from close_opps.serialize import flatten as serialize_flatten

__all__ = [
    "Column",
    "OutputFormat",
    "RecordFormat",
    "Writer",
    "change_to_dict",
    "csv_columns",
    "flatten",
    "make_writer",
    "print_opportunities",
    "print_record",
    "print_summary",
    "stdout_console",
]


def change_to_dict(change: Change, *, raw: bool = True) -> dict[str, Any]:
    """One change as JSON-ready data: ``kind``, ``provider``, ``id``, ``occurred_at`` and
    ``opportunity`` (the record as :func:`close_opps.serialize.opportunity_to_dict` gives it,
    ``null`` for a delete)."""
    return {
        "kind": change.kind.value,
        "provider": change.provider,
        "id": change.id,
        "occurred_at": change.occurred_at.isoformat() if change.occurred_at else None,
        "opportunity": (
            opportunity_to_dict(change.opportunity, raw=raw) if change.opportunity else None
        ),
    }


class OutputFormat(enum.StrEnum):
    """The formats of ``close-opps list``."""

    JSONL = "jsonl"
    CSV = "csv"
    TABLE = "table"


class RecordFormat(enum.StrEnum):
    """The formats of ``close-opps get``."""

    JSONL = "jsonl"
    TABLE = "table"


def emit(text: str) -> None:
    """Write ``text`` to the current ``sys.stdout``."""
    sys.stdout.write(text)


#: Table width when stdout is not a terminal and ``COLUMNS`` is unset (rich would use 80).
PIPED_WIDTH = 120


def stdout_console() -> Console:
    """A rich console on the current stdout (colours only on a terminal, never highlighting).

    Tables written to a file or a pipe are :data:`PIPED_WIDTH` wide unless ``COLUMNS`` says.
    """
    console = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPED_WIDTH
    return console


def _escape_char(char: str) -> str:
    if unicodedata.category(char) in ("Cc", "Cf"):  # controls, and bidi overrides (Cf)
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def screen_text(value: str) -> Text:
    """``value`` for a table cell: taken literally (no rich markup: a record holding ``[/x]``
    must not break the table) and with control and format characters shown as escapes, so
    no record can move the cursor, clear the screen or reorder text on a terminal."""
    if not value.isprintable():
        value = "".join(_escape_char(c) for c in value)
    return Text(value)


# ------------------------------------------------------------------------- flattened columns

#: One CSV column (the record's flat columns, :func:`close_opps.serialize.flat_columns`).
Column = FlatColumn


def csv_columns() -> tuple[FlatColumn, ...]:
    """The CSV columns: :func:`close_opps.serialize.flat_columns`, the SQLite store's too."""
    return flat_columns()


def _cell(value: Any) -> str:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else ""
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flatten(opportunity: Opportunity) -> dict[str, str]:
    """The record as ``{column: text}``, in :func:`csv_columns` order (``""`` for none)."""
    return {name: _cell(value) for name, value in serialize_flatten(opportunity).items()}


# --------------------------------------------------------------------------- list's writers


class Writer(Protocol):
    """Receives records one by one; :meth:`finish` ends the output."""

    def write(self, opportunity: Opportunity) -> None: ...

    def finish(self) -> None: ...


def _unchanged(opportunity: Opportunity) -> Opportunity:
    return opportunity


def _clean(text: str) -> bool:
    return False


class _JsonlWriter:
    def __init__(
        self,
        *,
        raw: bool,
        scrub: Callable[[Opportunity], Opportunity],
        may_hold_key: Callable[[str], bool],
    ) -> None:
        self._raw = raw
        self._scrub = scrub
        self._may_hold_key = may_hold_key

    def write(self, opportunity: Opportunity) -> None:
        line = opportunity_to_json(opportunity, raw=self._raw)
        if self._may_hold_key(line):
            line = opportunity_to_json(self._scrub(opportunity), raw=self._raw)
        emit(line + "\n")

    def finish(self) -> None:
        sys.stdout.flush()


class _CsvWriter:
    def __init__(
        self,
        *,
        scrub: Callable[[Opportunity], Opportunity],
        may_hold_key: Callable[[str], bool],
    ) -> None:
        self._scrub = scrub
        self._may_hold_key = may_hold_key
        self._names = [c.name for c in csv_columns()]
        self._buffer = io.StringIO()
        self._csv = csv.DictWriter(self._buffer, fieldnames=self._names, lineterminator="\n")
        self._csv.writeheader()
        self._flush()

    def _flush(self) -> None:
        emit(self._buffer.getvalue())
        self._buffer.seek(0)
        self._buffer.truncate()

    def write(self, opportunity: Opportunity) -> None:
        self._csv.writerow(flatten(opportunity))
        if self._may_hold_key(self._buffer.getvalue()):
            self._buffer.seek(0)
            self._buffer.truncate()
            self._csv.writerow(flatten(self._scrub(opportunity)))
        self._flush()

    def finish(self) -> None:
        sys.stdout.flush()


class _TableWriter:
    """Keeps up to :data:`TABLE_MAX_ROWS` records (a table is laid out once it has them all);
    one more means "there are more", said under the table."""

    def __init__(self, *, show_provider: bool, scrub: Callable[[Opportunity], Opportunity]) -> None:
        self._show_provider = show_provider
        self._scrub = scrub
        self._records: list[Opportunity] = []
        self._more = False

    def write(self, opportunity: Opportunity) -> None:
        if len(self._records) < TABLE_MAX_ROWS:
            self._records.append(self._scrub(opportunity))
        else:
            self._more = True

    def finish(self) -> None:
        print_opportunities(self._records, show_provider=self._show_provider, more=self._more)


def make_writer(
    fmt: OutputFormat,
    *,
    raw: bool = True,
    show_provider: bool = False,
    scrub: Callable[[Opportunity], Opportunity] = _unchanged,
    may_hold_key: Callable[[str], bool] = _clean,
) -> Writer:
    """The writer for ``fmt`` (the CSV header is written at once).

    ``scrub`` turns a record into the one to print (``cli._runtime.scrub``: keys redacted).
    JSONL and CSV write each record's text and scrub the record only when
    ``may_hold_key(text)`` says the text may show a key (``cli._runtime.may_hold_key``);
    a table scrubs each record it keeps. By default nothing is scrubbed.
    """
    if fmt is OutputFormat.JSONL:
        return _JsonlWriter(raw=raw, scrub=scrub, may_hold_key=may_hold_key)
    if fmt is OutputFormat.CSV:
        return _CsvWriter(scrub=scrub, may_hold_key=may_hold_key)
    return _TableWriter(show_provider=show_provider, scrub=scrub)


# -------------------------------------------------------------------------------- tables


def money_text(money: Money | None) -> str:
    """``"175,000.00 USD"``: every digit the provider sent, with thousands separators."""
    if money is None:
        return ""
    amount = f"{money.amount:,}"
    return f"{amount} {money.currency}" if money.currency else amount


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


#: The columns of the table of ``close-opps list``.
LIST_COLUMNS: tuple[str, ...] = ("id", "name", "status", "amount", "updated", "stage", "owner")
#: The columns of the demo's table (several providers; ids left out for room).
DEMO_COLUMNS: tuple[str, ...] = ("provider", "name", "status", "amount", "updated", "stage")
#: On a screen too narrow for every column, these are left out (whole) first to last; the
#: id is never left out. Columns shown are never cut, but free text.
DROP_ORDER: tuple[str, ...] = ("owner", "stage", "updated", "name", "amount", "status", "provider")
#: Free-text columns: the widest each gets (longer text ends with "…").
_FREE_TEXT_WIDTH: Mapping[str, int] = {"name": 40, "stage": 20, "owner": 24}
#: The narrowest a free-text column is shown; below that it is left out instead.
_FREE_TEXT_MIN = 10
#: Rows a table shows at most; for more, ``list`` says to use ``--limit`` or JSONL/CSV.
TABLE_MAX_ROWS = 1000


def _ref_text(ref: Ref | None) -> str:
    if ref is None:
        return ""
    return ref.name or ref.id or ""


def _table_cell(opp: Opportunity, column: str) -> str:
    if column == "provider":
        return opp.provider
    if column == "id":
        return opp.id
    if column == "name":
        return opp.name or ""
    if column == "status":
        return opp.status.value
    if column == "amount":
        return money_text(opp.amount)
    if column == "stage":
        return _ref_text(opp.stage)
    if column == "owner":
        return _ref_text(opp.owner)
    if column == "updated":
        return _when(opp.updated_at)
    raise ValueError(f"unknown table column {column!r}")  # pragma: no cover


def _table(
    columns: Sequence[str],
    headers: Mapping[str, str],
    cells: Mapping[str, Sequence[str]],
    rows: int,
    title: str | None,
) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for column in columns:
        header = headers[column]
        if column in _FREE_TEXT_WIDTH:  # shrinks (to "…") down to its min_width
            table.add_column(
                header,
                no_wrap=True,
                overflow="ellipsis",
                min_width=max(cell_len(header), _FREE_TEXT_MIN),
                max_width=_FREE_TEXT_WIDTH[column],
                ratio=1,
            )
        else:  # never cut: its min_width is its widest cell
            widest = max([cell_len(header), *(cell_len(c) for c in cells[column])])
            table.add_column(
                header,
                no_wrap=True,
                min_width=widest,
                justify="right" if column == "amount" else "left",
            )
    for index in range(rows):
        table.add_row(*(screen_text(cells[column][index]) for column in columns))
    return table


def opportunities_table(
    records: Sequence[Opportunity],
    *,
    columns: Sequence[str] = LIST_COLUMNS,
    title: str | None = None,
    width: int | None = None,
    console: Console | None = None,
) -> Table:
    """A rich table of ``records`` with ``columns`` (of :data:`LIST_COLUMNS` and
    ``"provider"``); datetimes in UTC to the minute, amounts exact.

    Ids, statuses, amounts and dates are never cut; names, stages and owners end with "…"
    when there is no room. When ``width`` cannot hold every column at its least width (as
    rich measures the table), columns are left out whole in :data:`DROP_ORDER`.
    """
    headers = {column: "updated (UTC)" if column == "updated" else column for column in columns}
    cells = {column: [_table_cell(opp, column) for opp in records] for column in columns}
    kept = list(columns)
    table = _table(kept, headers, cells, len(records), title)
    if width is None:
        return table
    measuring = console or Console(file=io.StringIO(), width=width)
    unbounded = measuring.options.update_width(10 * width + 1000)
    droppable = [column for column in DROP_ORDER if column in kept]
    while droppable and Measurement.get(measuring, unbounded, table).minimum > width:
        kept.remove(droppable.pop(0))
        table = _table(kept, headers, cells, len(records), title)
    return table


def print_opportunities(
    records: Sequence[Opportunity], *, show_provider: bool, more: bool = False
) -> None:
    """``records`` as a table on stdout, with a count underneath (``more``: the listing had
    more records than the table shows)."""
    console = stdout_console()
    columns = ("provider", *LIST_COLUMNS) if show_provider else LIST_COLUMNS
    console.print(
        opportunities_table(records, columns=columns, width=console.width, console=console)
    )
    count = len(records)
    if more:
        console.print(
            f"the first {count:,} opportunities; there are more: use --limit N, or "
            "--format jsonl or csv for all of them"
        )
    else:
        console.print(f"{count} opportunit{'y' if count == 1 else 'ies'}")


def print_record(opportunity: Opportunity) -> None:
    """One record as a two-column field/value table on stdout."""
    table = Table(box=box.SIMPLE_HEAD, show_header=True, pad_edge=False)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    for name, value in flatten(opportunity).items():
        table.add_row(name, screen_text(value))
    stdout_console().print(table)


# ------------------------------------------------------------------------------- summary


@attrs.frozen
class Summary:
    """Counts by provider and status, and the open pipeline per currency (exact decimals)."""

    counts: Mapping[str, Mapping[OpportunityStatus, int]]
    open_by_currency: Mapping[str, tuple[int, Decimal]]
    open_without_amount: int
    total: int


#: How a missing currency is shown.
NO_CURRENCY = "(none)"


def summarize(records: Iterable[Opportunity]) -> Summary:
    """Count ``records`` by provider and status, and total the open ones per currency."""
    counts: dict[str, Counter[OpportunityStatus]] = defaultdict(Counter)
    deals: Counter[str] = Counter()
    values: dict[str, Decimal] = defaultdict(Decimal)
    without_amount = 0
    total = 0
    for opp in records:
        total += 1
        counts[opp.provider][opp.status] += 1
        if opp.status is not OpportunityStatus.OPEN:
            continue
        if opp.amount is None:
            without_amount += 1
            continue
        currency = opp.amount.currency or NO_CURRENCY
        deals[currency] += 1
        values[currency] += opp.amount.amount
    return Summary(
        counts={p: dict(c) for p, c in sorted(counts.items())},
        open_by_currency={c: (deals[c], values[c]) for c in sorted(values)},
        open_without_amount=without_amount,
        total=total,
    )


def print_summary(summary: Summary) -> None:
    """The two summary tables on stdout."""
    console = stdout_console()
    by_status = Table(
        title="By provider and status", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False
    )
    by_status.add_column("provider")
    statuses = list(OpportunityStatus)
    for status in statuses:
        by_status.add_column(status.value, justify="right")
    by_status.add_column("total", justify="right")
    column_totals: Counter[OpportunityStatus] = Counter()
    for provider, counts in summary.counts.items():
        column_totals.update(counts)
        by_status.add_row(
            provider, *(str(counts.get(s, 0)) for s in statuses), str(sum(counts.values()))
        )
    by_status.add_section()
    by_status.add_row(
        "all", *(str(column_totals[s]) for s in statuses), str(summary.total), style="bold"
    )
    console.print(by_status)
    console.print()

    pipeline = Table(
        title="Open pipeline by currency", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False
    )
    pipeline.add_column("currency")
    pipeline.add_column("open deals", justify="right")
    pipeline.add_column("value", justify="right")
    for currency, (count, value) in summary.open_by_currency.items():
        pipeline.add_row(screen_text(currency), str(count), f"{value:,}")
    console.print(pipeline)
    if summary.open_without_amount:
        console.print(f"({summary.open_without_amount} open deals have no amount)")
