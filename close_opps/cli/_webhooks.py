"""``close-opps webhooks listen``: receive Close webhooks and print each change as JSON."""

# No ``from __future__ import annotations``: typer reads these signatures at run time.

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, TextIO

import typer

from close_opps.changes import Change

from . import _runtime
from ._render import change_to_dict
from ._runtime import PROG, run, serve_until_stopped, usage_error

__all__ = ["KEY_ENV", "webhooks_app"]

#: Where ``listen`` reads the subscription's signing key.
KEY_ENV = "CLOSE_WEBHOOK_KEY"

webhooks_app = typer.Typer(
    help="Receive Close webhooks (signed deliveries) as change records.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)


@webhooks_app.command("listen")
def listen(
    port: Annotated[
        int,
        typer.Option(
            "--port", metavar="PORT", min=0, max=65535, help="Port to listen on (0: a free one)."
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    path: Annotated[
        str, typer.Option("--path", metavar="PATH", help="URL path Close posts to.")
    ] = "/",
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            metavar="SECONDS",
            min=0,
            help="Refuse deliveries signed further than this from now.",
        ),
    ] = 300.0,
) -> None:
    """Receive Close webhooks and print each verified change as one JSON line.

    The subscription's signing key (from create_webhook) is read from CLOSE_WEBHOOK_KEY.
    Deliveries with a bad signature are refused (401) and printed nowhere. Ctrl-C stops.
    """
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise usage_error(f"set {KEY_ENV} to the subscription's signing key")
    _runtime._secrets.add(key)
    try:
        bytes.fromhex(key)
    except ValueError:
        raise usage_error(f"{KEY_ENV} is not a hex signing key") from None
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(key, host=host, port=port, path=path, tolerance=tolerance))
    sys.stderr.write(f"{PROG}: webhook listener stopped\n")


async def _serve(key: str, *, host: str, port: int, path: str, tolerance: float) -> None:
    serving = listen_until_cancelled(
        key, host=host, port=port, path=path, tolerance=tolerance, out=sys.stdout
    )
    await serve_until_stopped(serving, cannot_start=f"cannot listen on {host}:{port}")


async def listen_until_cancelled(
    key: str,
    *,
    host: str,
    port: int,
    path: str,
    tolerance: float,
    out: TextIO,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the receiver until cancelled, writing one JSON line per applied change."""
    from aiohttp import web

    from close_opps.webhooks import close_webhook_app

    def emit(change: Change) -> None:
        out.write(json.dumps(change_to_dict(change), ensure_ascii=False) + "\n")
        out.flush()

    app = close_webhook_app(key, emit, path=path, tolerance=tolerance)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        url = f"http://{bound[0]}:{bound[1]}{path}"
        sys.stderr.write(f"{PROG}: listening for Close webhooks on {url} (Ctrl-C stops)\n")
        sys.stderr.flush()
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()  # applies (prints) what was accepted before stopping
