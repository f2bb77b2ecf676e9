"""``close-opps changes PROVIDER``: the change feed as JSON lines.

stdout carries data only: one change per line. The new cursor goes to ``--cursor-file``
(written when the feed has ended) or, without it, to stderr as the last line
(``cursor: <cursor>``), after a one-line summary.
"""

# No ``from __future__ import annotations``: typer reads these signatures at run time.

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from close_opps._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from close_opps.changes import ChangeKind
from close_opps.errors import InvalidCursorError, MassDeletionError
from close_opps.feed import DEFAULT_MAX_DELETION_SHARE

from ._app import (
    ApiKey,
    BaseUrl,
    Provider,
    ProxyUrl,
    Raw,
    Retries,
    Timeout,
    UseSandbox,
    _connection,
    app,
)
from ._render import change_to_dict, emit
from ._runtime import (
    ConnectOptions,
    HelpCommand,
    SandboxSpec,
    Target,
    fail,
    open_adapters,
    resolve_targets,
    run,
    usage_error,
)

__all__ = ["changes"]


def _read_cursor_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        fail(f"cannot read the cursor file {str(path)!r}: {exc.strerror or exc}")
    return text or None


def _write_cursor_file(path: Path, cursor: str) -> None:
    """Replace ``path`` with the cursor atomically (a crash leaves the old cursor)."""
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(cursor + "\n")
        os.replace(temp, path)
    except OSError as exc:
        fail(f"cannot write the cursor file {str(path)!r}: {exc.strerror or exc}")


@app.command("changes", cls=HelpCommand)
def changes(
    provider: Provider,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="CURSOR",
            help="The cursor an earlier run printed. Default: the --cursor-file's, else "
            "none (every current record, as upserts).",
            show_default=False,
        ),
    ] = None,
    cursor_file: Annotated[
        Path | None,
        typer.Option(
            "--cursor-file",
            metavar="PATH",
            help="Read the cursor from PATH (if it exists and --since is not given) and "
            "replace it with the new one when the feed has ended. Without it, the new "
            "cursor is the last line of stderr ('cursor: ...').",
            show_default=False,
        ),
    ] = None,
    allow_mass_deletion: Annotated[
        bool,
        typer.Option(
            "--allow-mass-deletion",
            help="Let a reconciliation delete more than --max-deletion-share of the records.",
        ),
    ] = False,
    max_deletion_share: Annotated[
        float,
        typer.Option(
            "--max-deletion-share",
            metavar="SHARE",
            min=0.0,
            max=1.0,
            help="A reconciliation deleting more than this share of the known records fails.",
        ),
    ] = DEFAULT_MAX_DELETION_SHARE,
    raw: Raw = True,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    sandbox: UseSandbox = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    retries: Retries = DEFAULT_MAX_RETRIES,
    proxy: ProxyUrl = None,
) -> None:
    """Print what changed since a cursor: one change per JSON line on stdout.

    Each line is {"kind": "upsert"|"delete", "provider", "id", "occurred_at", "opportunity"}
    (the normalized record for an upsert, null for a delete). Apply them in order. The new
    cursor goes to --cursor-file, else to stderr's last line; a run that fails prints none
    (keep the old cursor: its changes come again).
    """
    (target,) = resolve_targets([provider], api_key=api_key, base_url=base_url, sandbox=sandbox)
    cursor = since if since is not None else None
    if cursor is None and cursor_file is not None:
        cursor = _read_cursor_file(cursor_file)
    new_cursor, counts, full = run(
        _changes(
            target,
            since=cursor,
            raw=raw,
            allow_mass_deletion=allow_mass_deletion,
            max_deletion_share=max_deletion_share,
            sandbox=SandboxSpec() if sandbox else None,
            connection=_connection(timeout=timeout, retries=retries, proxy=proxy, sandbox=sandbox),
        )
    )
    summary = (
        f"{target.provider}: {counts[ChangeKind.UPSERT]} upserts, "
        f"{counts[ChangeKind.DELETE]} deletes"
        + (" (full reconciliation: every current record delivered)" if full else "")
    )
    sys.stderr.write(summary + "\n")
    if cursor_file is not None:
        _write_cursor_file(cursor_file, new_cursor)
    else:
        sys.stderr.write(f"cursor: {new_cursor}\n")
    sys.stderr.flush()


async def _changes(
    target: Target,
    *,
    since: str | None,
    raw: bool,
    allow_mass_deletion: bool,
    max_deletion_share: float,
    sandbox: SandboxSpec | None,
    connection: ConnectOptions,
) -> tuple[str, dict[ChangeKind, int], bool]:
    counts = dict.fromkeys(ChangeKind, 0)
    async with open_adapters([target], sandbox=sandbox, connection=connection) as found:
        adapter = found[target.provider]
        try:
            feed = adapter.changes(
                since,
                allow_mass_deletion=allow_mass_deletion,
                max_deletion_share=max_deletion_share,
            )
        except InvalidCursorError as exc:
            raise usage_error(f"--since: {exc}") from None
        try:
            async with feed:
                async for change in feed:
                    line = json.dumps(change_to_dict(change, raw=raw), ensure_ascii=False)
                    emit(line + "\n")
                    counts[change.kind] += 1
        except MassDeletionError as exc:
            sys.stdout.flush()
            fail(
                f"{exc.provider}: reconciliation would delete {exc.would_delete} of the "
                f"{exc.known} known records: nothing was deleted and no cursor written. If "
                "the deletions are real, run again with --allow-mass-deletion"
            )
        sys.stdout.flush()
    assert feed.cursor is not None  # the feed ran to its end
    return feed.cursor, counts, feed.full_resync
