"""The ``close-opps`` commands (typer). Each command runs its work with ``asyncio.run``."""

# No ``from __future__ import annotations``: typer reads these signatures at run time.

import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from close_opps._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, VERSION
from close_opps.http import path_segment
from close_opps.model import Opportunity, OpportunityStatus
from close_opps.registry import providers as registered_providers

from . import _render as render
from ._runtime import (
    PROG,
    SANDBOX_PROVIDERS,
    ConnectOptions,
    ExitCodeGroup,
    HelpCommand,
    SandboxSpec,
    Target,
    api_key_env,
    base_url_env,
    database_errors,
    fail,
    logging_for,
    may_hold_key,
    open_adapters,
    open_db,
    progress,
    redact_url,
    resolve_targets,
    run,
    scrub,
    serve_until_stopped,
    usage_error,
)
from ._webhooks import webhooks_app

if TYPE_CHECKING:
    from close_opps.sandbox import Sandbox
    from close_opps.sync import SyncReport

__all__ = ["app"]

app = typer.Typer(
    name=PROG,
    cls=ExitCodeGroup,
    help=(
        "Read sales opportunities from Close, Getraze and Reevo as one normalized record.\n\n"
        "Try it with no account: close-opps demo"
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: paragraphs re-wrapped, no type placeholders
    context_settings={"help_option_names": ["-h", "--help"]},
)
sandbox_app = typer.Typer(
    help="The local emulators of the three CRM APIs.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(webhooks_app, name="webhooks")


# ---------------------------------------------------------------------------- options


def parse_datetime(value: str) -> datetime:
    """An ISO 8601 date or date-time; a naive one is UTC, a bare date midnight UTC."""
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or date-time "
            "(e.g. 2025-01-31, 2025-01-31T09:30:00Z, 2025-01-31T09:30:00+01:00)"
        ) from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


Provider = Annotated[
    str,
    typer.Argument(
        metavar="PROVIDER",
        help="close, getraze or reevo (or an installed plugin's name).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="The provider's API key. Default: $<PROVIDER>_API_KEY (e.g. CLOSE_API_KEY).",
        show_default=False,
    ),
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        metavar="URL",
        help="Another API root (a proxy, a sandbox). Default: $<PROVIDER>_BASE_URL, "
        "else the vendor's production API.",
        show_default=False,
    ),
]
UseSandbox = Annotated[
    bool,
    typer.Option(
        "--sandbox",
        help="Start the embedded CRM emulators in-process and read from them (no key needed).",
    ),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", metavar="SECONDS", min=0.001, help="Limit of each HTTP request."),
]
Retries = Annotated[
    int,
    typer.Option(
        "--retries",
        metavar="N",
        min=0,
        help="Retries of a failed read (429, 5xx, connection errors); 0 turns them off.",
    ),
]
ProxyUrl = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        metavar="URL",
        help="An http(s) proxy for every request. Default: $HTTPS_PROXY/$HTTP_PROXY "
        "(minus $NO_PROXY).",
        show_default=False,
    ),
]
Raw = Annotated[
    bool,
    typer.Option("--raw/--no-raw", help="JSONL: include the vendor's record as received (raw)."),
]


# ---------------------------------------------------------------------------- the root


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"{PROG} {VERSION}\n")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            show_default=False,
            help="Log to stderr: -v retries and sync steps, -vv every request too.",
        ),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    ctx.with_resource(logging_for(verbose))
    if ctx.invoked_subcommand is None:
        sys.stdout.write(ctx.get_help() + "\n")
        raise typer.Exit(0)


def _connection(
    *, timeout: float, retries: int, proxy: str | None, sandbox: bool
) -> ConnectOptions:
    """The connection options, once they go together."""
    if proxy is not None and sandbox:
        raise usage_error("--sandbox and --proxy cannot be used together")
    return ConnectOptions(timeout=timeout, retries=retries, proxy=proxy)


def _default_format(fmt: render.OutputFormat | None) -> render.OutputFormat:
    if fmt is not None:
        return fmt
    return render.OutputFormat.TABLE if sys.stdout.isatty() else render.OutputFormat.JSONL


# ------------------------------------------------------------------------------- demo


@app.command(cls=HelpCommand)
def demo(
    records: Annotated[
        int, typer.Option("--records", metavar="N", min=0, help="Records per CRM emulator.")
    ] = 60,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the data.")] = 0,
    top: Annotated[
        int, typer.Option("--top", metavar="N", min=0, help="Rows of the table of the latest.")
    ] = 10,
) -> None:
    """Read all three CRM emulators at once and summarize: no key, no network.

    Starts the embedded sandbox, lists Close, Getraze and Reevo concurrently through the
    OpportunityHub, prints the most recently updated opportunities, counts by provider and
    status, and the open pipeline per currency (exact decimals).
    """
    found, elapsed = run(_demo(seed=seed, records=records))
    console = render.stdout_console()
    names = ", ".join(SANDBOX_PROVIDERS)
    console.print(
        f"Read {len(found)} opportunities from {len(SANDBOX_PROVIDERS)} CRM emulators "
        f"({names}) on 127.0.0.1 in {elapsed:.2f} s, through one OpportunityHub.\n"
    )
    latest = sorted(found, key=lambda o: (o.updated_at, o.provider, o.id), reverse=True)[:top]
    if latest:
        console.print(
            render.opportunities_table(
                latest,
                columns=render.DEMO_COLUMNS,
                title=f"The {len(latest)} most recently updated",
                width=console.width,
            )
        )
        console.print()
    render.print_summary(render.summarize(found))
    console.print(
        "\nTry next:\n"
        f"  {PROG} list close --sandbox --format table --limit 5\n"
        f"  {PROG} sandbox serve      (the emulators, for any command or program)"
    )


async def _demo(*, seed: int, records: int) -> tuple[list[Opportunity], float]:
    from close_opps.hub import OpportunityHub

    started = time.perf_counter()
    targets = [Target(name) for name in SANDBOX_PROVIDERS]
    found: list[Opportunity] = []
    spec = SandboxSpec(seed=seed, records=records)
    async with (
        open_adapters(targets, sandbox=spec) as adapters,
        OpportunityHub(adapters) as hub,
        aclosing(hub.list()) as listing,
    ):
        with progress() as bar:
            task = bar.add_task("reading the sandbox CRMs", total=records * len(adapters))
            async for opp in listing:
                found.append(opp)
                bar.advance(task)
    return found, time.perf_counter() - started


# ------------------------------------------------------------------------------- list


@app.command("list", cls=HelpCommand)
def list_(
    provider: Provider,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            metavar="DATETIME",
            parser=parse_datetime,
            help="Only records updated at or after this moment: ISO 8601; a naive value is "
            "UTC, a bare date midnight UTC.",
            show_default=False,
        ),
    ] = None,
    status: Annotated[
        list[OpportunityStatus] | None,
        typer.Option(
            "--status",
            metavar="open|won|lost",
            case_sensitive=False,
            help="Only this status (repeat for several).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", min=0, help="At most N records.", show_default=False),
    ] = None,
    fmt: Annotated[
        render.OutputFormat | None,
        typer.Option(
            "--format",
            "-f",
            case_sensitive=False,
            help="Output format. Default: table on a terminal, else jsonl.",
            metavar="jsonl|csv|table",
            show_default=False,
        ),
    ] = None,
    raw: Raw = True,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    sandbox: UseSandbox = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: Retries = DEFAULT_MAX_RETRIES,
    proxy: ProxyUrl = None,
) -> None:
    """List a provider's opportunities (in the provider's own order).

    JSONL: one normalized record per line (decimals and datetimes as strings). CSV: a header
    and flat columns (amount, currency, owner_name, ...). Table: for reading.
    """
    (target,) = resolve_targets([provider], api_key=api_key, base_url=base_url, sandbox=sandbox)
    run(
        _list(
            target,
            sandbox=SandboxSpec() if sandbox else None,
            since=since,
            statuses=list(dict.fromkeys(status)) if status else None,
            limit=limit,
            fmt=_default_format(fmt),
            raw=raw,
            connection=_connection(timeout=timeout, retries=retries, proxy=proxy, sandbox=sandbox),
        )
    )


async def _list(
    target: Target,
    *,
    sandbox: SandboxSpec | None,
    since: datetime | None,
    statuses: list[OpportunityStatus] | None,
    limit: int | None,
    fmt: render.OutputFormat,
    raw: bool,
    connection: ConnectOptions,
) -> None:
    async with open_adapters([target], sandbox=sandbox, connection=connection) as found:
        adapter = found[target.provider]
        writer = render.make_writer(fmt, raw=raw, scrub=scrub, may_hold_key=may_hold_key)
        fetch = limit
        if fmt is render.OutputFormat.TABLE and (limit is None or limit > render.TABLE_MAX_ROWS):
            fetch = render.TABLE_MAX_ROWS + 1  # one more tells the table there are more
        with progress() as bar:
            task = bar.add_task(f"{target.provider}: listing", total=fetch)
            pages = adapter.pages(updated_since=since, status=statuses, limit=fetch)
            async with aclosing(pages):
                async for page in pages:
                    if page.total is not None:
                        total = page.total if fetch is None else min(page.total, fetch)
                        bar.update(task, total=total)
                    for opp in page.items:
                        writer.write(opp)  # scrubbed by the writer where keys may show
                    bar.advance(task, len(page.items))
    writer.finish()


# -------------------------------------------------------------------------------- get


@app.command(cls=HelpCommand)
def get(
    provider: Provider,
    opportunity_id: Annotated[
        str, typer.Argument(metavar="ID", help="The provider's opportunity id.")
    ],
    fmt: Annotated[
        render.RecordFormat | None,
        typer.Option(
            "--format",
            "-f",
            case_sensitive=False,
            help="Output format. Default: table on a terminal, else jsonl.",
            metavar="jsonl|table",
            show_default=False,
        ),
    ] = None,
    raw: Raw = True,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    sandbox: UseSandbox = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: Retries = DEFAULT_MAX_RETRIES,
    proxy: ProxyUrl = None,
) -> None:
    """Show one opportunity by its id."""
    if not opportunity_id.strip():
        raise usage_error("ID must not be empty")
    try:
        path_segment(opportunity_id)
    except ValueError as exc:
        raise usage_error(f"ID: {exc}") from None
    (target,) = resolve_targets([provider], api_key=api_key, base_url=base_url, sandbox=sandbox)
    opp = run(
        _get(
            target,
            opportunity_id,
            sandbox=SandboxSpec() if sandbox else None,
            connection=_connection(timeout=timeout, retries=retries, proxy=proxy, sandbox=sandbox),
        )
    )
    chosen = fmt or (render.RecordFormat.TABLE if sys.stdout.isatty() else None)
    if chosen is render.RecordFormat.TABLE:
        render.print_record(scrub(opp))
    else:
        writer = render.make_writer(
            render.OutputFormat.JSONL, raw=raw, scrub=scrub, may_hold_key=may_hold_key
        )
        writer.write(opp)
        writer.finish()


async def _get(
    target: Target,
    opportunity_id: str,
    *,
    sandbox: SandboxSpec | None,
    connection: ConnectOptions,
) -> Opportunity:
    async with open_adapters([target], sandbox=sandbox, connection=connection) as found:
        return await found[target.provider].get(opportunity_id)


# ------------------------------------------------------------------------------- sync


@app.command(cls=HelpCommand)
def sync(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            metavar="URL",
            help=(
                "The store: a SQLite file (a path or sqlite:///PATH, created if missing) or "
                "postgresql://..."
            ),
            show_default=False,
        ),
    ],
    provider_names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PROVIDER",
            help="The providers to sync. Default: all (with --sandbox: close, getraze, reevo).",
            show_default=False,
        ),
    ] = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    sandbox: UseSandbox = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: Retries = DEFAULT_MAX_RETRIES,
    proxy: ProxyUrl = None,
    allow_mass_deletion: Annotated[
        bool,
        typer.Option(
            "--allow-mass-deletion",
            help="Let a run delete more than half of a provider's stored records.",
        ),
    ] = False,
    all_connections: Annotated[
        bool,
        typer.Option("--all", help="Sync every connection registered in the store, once."),
    ] = False,
) -> None:
    """Bring a SQLite database up to date: only what changed since the last run.

    Prints, per provider, the records inserted, updated, unchanged and deleted (kept as
    tombstones), and the watermark (the newest updated_at stored). --api-key and --base-url
    apply to one provider; for several, set <PROVIDER>_API_KEY and <PROVIDER>_BASE_URL.
    """
    if all_connections:
        from ._connections import sync_all

        sync_all(
            db,
            named=provider_names,
            connection=_connection(timeout=timeout, retries=retries, proxy=proxy, sandbox=False),
            allow_mass_deletion=allow_mass_deletion,
            sandbox=sandbox,
        )
        return
    names = provider_names or (list(SANDBOX_PROVIDERS) if sandbox else registered_providers())
    # Every provider by default: those with a key are synced, the others named and left out.
    without_key: list[str] | None = [] if not provider_names and api_key is None else None
    targets = resolve_targets(
        names, api_key=api_key, base_url=base_url, sandbox=sandbox, without_key=without_key
    )
    if without_key:
        sys.stderr.write(
            f"{PROG}: left out (no API key): "
            + ", ".join(f"{name} (set {api_key_env(name)})" for name in without_key)
            + "\n"
        )
    reports, stored = run(
        _sync(
            targets,
            db,
            sandbox=SandboxSpec() if sandbox else None,
            connection=_connection(timeout=timeout, retries=retries, proxy=proxy, sandbox=sandbox),
            allow_mass_deletion=allow_mass_deletion,
        )
    )
    _print_sync(reports, db, stored)


def _print_sync(reports: Sequence["SyncReport"], db: str, stored: int | None) -> None:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("provider")
    for name in ("inserted", "updated", "unchanged", "deleted", "total"):
        table.add_column(name, justify="right")
    table.add_column("watermark (newest updated_at)")
    for report in reports:
        watermark = report.watermark.astimezone(UTC).isoformat() if report.watermark else ""
        table.add_row(
            report.provider,
            str(report.inserted),
            str(report.updated),
            str(report.unchanged),
            str(report.deleted),
            str(report.total),
            watermark,
        )
    console = render.stdout_console()
    console.print(table)
    if stored is not None:
        console.print(f"{redact_url(db)}: {stored} opportunities stored")


async def _sync(
    targets: Sequence[Target],
    db: str,
    *,
    sandbox: SandboxSpec | None,
    connection: ConnectOptions,
    allow_mass_deletion: bool = False,
) -> tuple[list["SyncReport"], int]:
    from close_opps import sync as syncing

    store = await open_db(db)
    try:
        async with open_adapters(targets, sandbox=sandbox, connection=connection) as adapters:
            with progress() as bar:
                tasks = {name: bar.add_task(f"{name}: syncing", total=None) for name in adapters}

                def on_progress(name: str, so_far: int) -> None:
                    bar.update(tasks[name], completed=so_far)

                reports = await _synced(
                    syncing.sync(
                        adapters,
                        store,
                        on_progress=on_progress,
                        allow_mass_deletion=allow_mass_deletion,
                    ),
                    db,
                    on_failure=bar.stop,
                )
        return reports, await store.count()
    finally:
        await store.aclose()


async def _synced(
    running: Awaitable[Mapping[str, "SyncReport"]],
    db: str,
    *,
    on_failure: Callable[[], None] | None = None,
) -> list["SyncReport"]:
    """The reports of a sync. A failed sync prints the reports of the providers that
    completed (after ``on_failure``) and fails the command, as does a database that cannot
    be written."""
    from close_opps.sync import SyncError

    try:
        reports = await running
    except SyncError as exc:
        if on_failure is not None:
            on_failure()
        if exc.reports:
            _print_sync(list(exc.reports.values()), db, None)
        fail("sync failed: " + "; ".join(exc.lines()))
    except database_errors() as exc:
        fail(f"cannot write the database {redact_url(db)!r}: {exc}")
    return list(reports.values())


# -------------------------------------------------------------------------- providers


@app.command("providers", cls=HelpCommand)
def providers_() -> None:
    """List the provider names (built-in and installed plugins)."""
    for name in registered_providers():
        sys.stdout.write(name + "\n")


# ---------------------------------------------------------------------- sandbox serve


@sandbox_app.callback()
def _sandbox_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        sys.stdout.write(ctx.get_help() + "\n")
        raise typer.Exit(0)


@sandbox_app.command("serve", cls=HelpCommand)
def serve(
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            metavar="PORT",
            min=1,
            max=65533,
            help="Close on PORT, Getraze on PORT+1, Reevo on PORT+2. Default: free ports.",
            show_default=False,
        ),
    ] = None,
    records: Annotated[
        int, typer.Option("--records", metavar="N", min=0, help="Records per CRM emulator.")
    ] = 60,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the data.")] = 0,
) -> None:
    """Run the CRM emulators on 127.0.0.1 until Ctrl-C, and print how to use them."""
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(port=port, records=records, seed=seed))
    sys.stderr.write(f"{PROG}: sandbox stopped\n")


async def _serve(*, port: int | None, records: int, seed: int) -> None:
    from close_opps.sandbox import Sandbox, serve_forever

    ports = (
        {name: port + offset for offset, name in enumerate(SANDBOX_PROVIDERS)}
        if port is not None
        else None
    )
    sandbox = Sandbox(seed=seed, records=records, ports=ports)
    where = f"ports {port}-{port + 2}" if port is not None else "free ports"
    await serve_until_stopped(
        serve_forever(sandbox, on_ready=_announce),
        cannot_start=f"cannot start the sandbox on 127.0.0.1 {where}",
    )


def _announce(sandbox: "Sandbox") -> None:
    servers = sandbox.servers
    width = max(len(name) for name in servers)
    close = servers.get("close")
    lines = [
        f"{PROG} sandbox: {len(servers)} CRM emulators on 127.0.0.1 "
        f"(seed {sandbox.seed}). Ctrl-C stops them.",
        "",
        *(
            f"  {name:<{width}}  {server.base_url}  key: {server.api_key}"
            for name, server in servers.items()
        ),
        "",
        "From another shell, either set the variables:",
        "",
        *(
            f"  export {api_key_env(name)}={server.api_key} {base_url_env(name)}={server.base_url}"
            for name, server in servers.items()
        ),
        "",
        f"  {PROG} list close --limit 5",
        f"  {PROG} sync --db opps.db",
    ]
    if close is not None:
        lines += [
            "",
            "or pass them to one command:",
            "",
            f"  {PROG} list close --base-url {close.base_url} --api-key {close.api_key} --limit 5",
        ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


# The ``changes``, ``load``, ``connections``, ``enqueue`` and ``worker`` commands live in
# their own modules; importing one registers it on ``app``.
from . import _changes, _connections, _load  # noqa: E402, F401
