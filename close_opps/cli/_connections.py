"""``close-opps connections add|list|remove``, ``sync --all``, ``enqueue`` and ``worker``.

A connection is registered in the store (``--db URL``) with where its key comes from (an
environment variable, never the key itself). ``sync --db URL --all`` syncs every connection
once in this process; ``enqueue`` and ``worker`` hand the syncs to procrastinate workers on
the same PostgreSQL (the ``workers`` extra). See ``docs/fleet.md``.
"""

# No ``from __future__ import annotations``: typer reads these signatures at run time.

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from close_opps.connections import Connection

from ._app import _print_sync, _synced, app
from ._runtime import (
    ConnectOptions,
    HelpCommand,
    database_errors,
    fail,
    open_db,
    redact_url,
    run,
    usage_error,
)

__all__ = ["connections_app", "sync_all"]

connections_app = typer.Typer(
    help="The accounts synced into a store: each one's provider, URL and key variable.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
)
app.add_typer(connections_app, name="connections")

Db = Annotated[
    str,
    typer.Option(
        "--db",
        metavar="URL",
        help="The store: a SQLite path or sqlite:///PATH, or postgresql://...",
        show_default=False,
    ),
]


@connections_app.command("add", cls=HelpCommand)
def add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The connection's name.")],
    db: Db,
    provider: Annotated[
        str,
        typer.Option("--provider", metavar="PROVIDER", help="close, getraze, reevo, ..."),
    ],
    key_env: Annotated[
        str,
        typer.Option(
            "--key-env",
            metavar="VAR",
            help="The environment variable holding the API key (the key is never stored).",
        ),
    ],
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", metavar="URL", help="The API's base URL.", show_default=False),
    ] = None,
    every: Annotated[
        int | None,
        typer.Option(
            "--every",
            metavar="MINUTES",
            min=1,
            help="Sync it every MINUTES minutes (workers).",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a connection of that name.")
    ] = False,
) -> None:
    """Register a connection in the store."""
    from close_opps.registry import providers

    if provider not in providers():
        raise usage_error(f"unknown provider {provider!r}: choose from {', '.join(providers())}")
    try:
        connection = Connection(
            name, provider, base_url=base_url, key_env=key_env, every_minutes=every
        )
    except ValueError as exc:
        raise usage_error(str(exc)) from None

    async def main() -> None:
        store = await open_db(db)
        try:
            await store.add_connection(connection, replace=replace)
        except ValueError as exc:
            fail(f"{exc} (--replace to replace it)")
        finally:
            await store.aclose()

    run(main())
    sys.stderr.write(f"added {name} ({provider}, key from ${key_env})\n")


@connections_app.command("list", cls=HelpCommand)
def list_(db: Db) -> None:
    """List the connections: name, provider, key variable, interval, base URL (tab-separated)."""

    async def main() -> list[Connection]:
        store = await open_db(db)
        try:
            return await store.connections()
        finally:
            await store.aclose()

    for c in run(main()):
        every = f"{c.every_minutes}m" if c.every_minutes else "-"
        fields = [c.name, c.provider, c.key_variable, every, c.base_url or "-"]
        sys.stdout.write("\t".join(fields) + "\n")


@connections_app.command("remove", cls=HelpCommand)
def remove(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    db: Db,
    purge: Annotated[
        bool, typer.Option("--purge", help="Delete its copy and sync state too.")
    ] = False,
) -> None:
    """Unregister a connection (its copy stays unless --purge)."""

    async def main() -> bool:
        store = await open_db(db)
        try:
            return await store.remove_connection(name, purge=purge)
        finally:
            await store.aclose()

    if not run(main()):
        fail(f"no connection named {name!r} in {redact_url(db)}")
    sys.stderr.write(f"removed {name}\n")


def sync_all(
    db: str,
    *,
    named: Sequence[str] | None,
    connection: ConnectOptions,
    allow_mass_deletion: bool,
    sandbox: bool,
) -> None:
    """``sync --db URL --all``: every registered connection, once, in this process."""
    from close_opps.connections import sync_connections
    from close_opps.sync import SyncReport

    if named:
        raise usage_error("--all syncs every connection: name no PROVIDER with it")
    if sandbox:
        raise usage_error("--all syncs the registered connections: --sandbox does not apply")
    options: dict[str, object] = {
        "timeout": connection.timeout,
        "max_retries": connection.retries,
    }
    if connection.proxy is not None:
        options["proxy"] = connection.proxy

    async def main() -> tuple[list[SyncReport], int]:
        store = await open_db(db)
        try:
            if not await store.connections():
                fail(f"no connections in {redact_url(db)}: add one with `connections add`")
            reports = await _synced(
                sync_connections(
                    store, adapter_options=options, allow_mass_deletion=allow_mass_deletion
                ),
                db,
            )
            return reports, await store.count()
        finally:
            await store.aclose()

    reports, stored = run(main())
    _print_sync(reports, db, stored)


@app.command("enqueue", cls=HelpCommand)
def enqueue(
    db: Db,
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME", help="The connections to sync.", show_default=False),
    ] = None,
    all_connections: Annotated[
        bool, typer.Option("--all", help="Every registered connection.")
    ] = False,
) -> None:
    """Queue a sync of each connection for the workers (one waiting sync per connection)."""
    if bool(names) == all_connections:
        raise usage_error("name the connections or give --all (not both)")
    from close_opps import workers

    try:
        queued, skipped = run(workers.enqueue(db, None if all_connections else names))
    except ValueError as exc:
        fail(str(exc))
    except database_errors() as exc:
        fail(f"cannot use the database {redact_url(db)!r}: {redact_url(str(exc))}")
    sys.stderr.write(
        f"queued {len(queued)} sync(s)"
        + (f"; already waiting: {', '.join(skipped)}" if skipped else "")
        + "\n"
    )


@app.command("worker", cls=HelpCommand)
def worker(
    db: Db,
    concurrency: Annotated[
        int, typer.Option("--concurrency", metavar="N", min=1, help="Syncs at once.")
    ] = 4,
) -> None:
    """Run a worker until stopped (SIGTERM or Ctrl-C: the current syncs finish first)."""
    from close_opps import workers

    try:
        run(workers.run_worker(db, concurrency=concurrency))
    except ValueError as exc:
        fail(str(exc))
    except database_errors() as exc:
        fail(f"cannot use the database {redact_url(db)!r}: {redact_url(str(exc))}")
