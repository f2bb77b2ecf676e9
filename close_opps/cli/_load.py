"""``close-opps load``: run the dlt pipeline (``close_opps.dlt``) from the command line.

dlt is imported when the command runs, never when the command line starts. dlt's
``pipeline.run`` is synchronous (it runs the async resource on an event loop of its own);
``--sandbox`` serves the emulators from a background thread meanwhile.
"""

# No ``from __future__ import annotations``: typer reads these signatures at run time.

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from close_opps._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from close_opps.adapters.base import BaseAdapter
from close_opps.errors import CloseOppsError, MassDeletionError
from close_opps.registry import connect
from close_opps.registry import providers as registered_providers

from ._app import BaseUrl, ProxyUrl, Retries, Timeout, UseSandbox, _connection, app
from ._runtime import (
    PROG,
    SANDBOX_PROVIDERS,
    ConnectOptions,
    HelpCommand,
    SandboxSpec,
    Target,
    api_key_env,
    fail,
    resolve_targets,
    usage_error,
)

if TYPE_CHECKING:
    from close_opps.sandbox import Sandbox

__all__ = ["load"]


@contextmanager
def _served(spec: SandboxSpec, vendors: Sequence[str]) -> Iterator["Sandbox"]:
    """The emulators, served by an event loop in a background thread."""
    from close_opps.sandbox import Sandbox

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="close-opps-sandbox", daemon=True)
    sandbox = Sandbox(seed=spec.seed, records=spec.records, vendors=vendors)  # type: ignore[arg-type]
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(sandbox.start(), loop).result(30)
        yield sandbox
    finally:
        if sandbox.servers:
            asyncio.run_coroutine_threadsafe(sandbox.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _factory(target: Target, connection: ConnectOptions) -> Callable[[], BaseAdapter]:
    options: dict[str, Any] = {"timeout": connection.timeout, "max_retries": connection.retries}
    if connection.proxy is not None:
        options["proxy"] = connection.proxy
    try:  # checked now (a bad URL is a usage error), opened in each run
        connect(target.provider, api_key=target.api_key or "", base_url=target.base_url)
    except (ValueError, TypeError) as exc:
        raise usage_error(f"{target.provider}: {exc}") from None
    return lambda: connect(
        target.provider, api_key=target.api_key or "", base_url=target.base_url, **options
    )


@app.command("load", cls=HelpCommand)
def load(
    provider_names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PROVIDER",
            help="The providers to load. Default: every one with a key (with --sandbox: "
            "close, getraze, reevo).",
            show_default=False,
        ),
    ] = None,
    destination: Annotated[
        str,
        typer.Option(
            "--destination",
            metavar="NAME",
            help="A dlt destination (duckdb, postgres, bigquery, snowflake, filesystem, ...), "
            "configured as dlt configures it (.dlt/secrets.toml, environment variables).",
        ),
    ] = "duckdb",
    dataset: Annotated[
        str, typer.Option("--dataset", metavar="NAME", help="The dataset (schema) to load into.")
    ] = "crm",
    pipeline_name: Annotated[
        str,
        typer.Option(
            "--pipeline",
            metavar="NAME",
            help="The dlt pipeline's name: its state (the change cursors) and, for duckdb, "
            "the database file NAME.duckdb in the current directory.",
        ),
    ] = "close_opps",
    pipelines_dir: Annotated[
        Path | None,
        typer.Option(
            "--pipelines-dir",
            metavar="PATH",
            help="Where dlt keeps its pipelines' working state. Default: dlt's (~/.dlt/pipelines).",
            show_default=False,
        ),
    ] = None,
    flag_deletions: Annotated[
        bool,
        typer.Option(
            "--flag-deletions",
            help="Keep a deleted record's row as a tombstone (deleted = true) instead of "
            "deleting it.",
        ),
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw/--no-raw", help="Load the vendor's record (raw JSON column).")
    ] = True,
    allow_mass_deletion: Annotated[
        bool,
        typer.Option(
            "--allow-mass-deletion",
            help="Let a run delete more than half of a provider's loaded records.",
        ),
    ] = False,
    base_url: BaseUrl = None,
    sandbox: UseSandbox = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: Retries = DEFAULT_MAX_RETRIES,
    proxy: ProxyUrl = None,
) -> None:
    """Load opportunities into a warehouse with dlt: only what changed since the last run.

    Each provider's change feed is read from the cursor kept in the pipeline's state;
    creations and edits are merged on (connection, id), deletions removed (or flagged). Keys
    come from <PROVIDER>_API_KEY. Needs the dlt extra.
    """
    try:
        import dlt
        from dlt.pipeline.exceptions import PipelineStepFailed

        from close_opps.dlt import opportunities_source
    except ModuleNotFoundError as exc:
        fail(
            f"load needs the dlt extra ({exc.name} is missing): from a checkout of "
            "close-opps, python -m pip install '.[dlt]'"
        )
    names = provider_names or (list(SANDBOX_PROVIDERS) if sandbox else registered_providers())
    without_key: list[str] | None = [] if not provider_names else None
    targets = resolve_targets(names, base_url=base_url, sandbox=sandbox, without_key=without_key)
    if without_key:
        sys.stderr.write(
            f"{PROG}: left out (no API key): "
            + ", ".join(f"{name} (set {api_key_env(name)})" for name in without_key)
            + "\n"
        )
    connection = _connection(timeout=timeout, retries=retries, proxy=proxy, sandbox=sandbox)
    with _maybe_served(sandbox, [t.provider for t in targets]) as running:
        if running is not None:
            targets = [
                Target(t.provider, running[t.provider].api_key, running[t.provider].base_url)
                for t in targets
            ]
        source = opportunities_source(
            {t.provider: _factory(t, connection) for t in targets},
            deletions="flag" if flag_deletions else "delete",
            raw=raw,
            allow_mass_deletion=allow_mass_deletion,
        )
        try:
            pipeline = dlt.pipeline(
                pipeline_name=pipeline_name,
                # None: dlt's default place
                pipelines_dir=str(pipelines_dir) if pipelines_dir else None,  # type: ignore[arg-type]
                destination=destination,
                dataset_name=dataset,
            )
            pipeline.run(source)
        except PipelineStepFailed as exc:
            if exc.step == "load":  # extracted and normalized: dlt keeps the package
                fail(
                    f"the destination failed; the load package (changes and cursors) is "
                    f"pending and the next run loads it: {_cause(exc.exception)}"
                )
            _fail_with(exc.exception)
        except CloseOppsError as exc:
            _fail_with(exc)
        except Exception as exc:  # dlt's configuration and destination errors
            if type(exc).__module__.partition(".")[0] != "dlt":
                raise
            fail(f"dlt: {exc}")
    trace = pipeline.last_trace
    normalized = trace.last_normalize_info if trace is not None else None
    loaded = normalized.row_counts.get("opportunities", 0) if normalized is not None else 0
    sys.stdout.write(
        f"{', '.join(t.provider for t in targets)}: {loaded} rows loaded into "
        f"{destination} dataset {dataset!r} (pipeline {pipeline_name!r})\n"
    )


@contextmanager
def _maybe_served(sandbox: bool, vendors: Sequence[str]) -> Iterator["Sandbox | None"]:
    if not sandbox:
        yield None
        return
    with _served(SandboxSpec(), vendors) as running:
        yield running


def _cause(exc: BaseException) -> BaseException:
    """The SDK's error behind dlt's wrappers (a step failure, a resource extraction error),
    else ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CloseOppsError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc


def _fail_with(failure: BaseException) -> NoReturn:
    exc = _cause(failure)
    if isinstance(exc, MassDeletionError):
        fail(
            f"{exc.provider}: the change feed would delete {exc.would_delete} of the "
            f"{exc.known} known records: nothing was loaded. If the deletions are real, run "
            "again with --allow-mass-deletion"
        )
    if isinstance(exc, CloseOppsError):
        fail(f"load failed, nothing committed: {exc}")
    fail(f"load failed, nothing committed: {type(exc).__name__}: {exc}")
