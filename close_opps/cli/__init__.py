"""The ``close-opps`` command line: ``list``, ``get``, ``sync``, ``demo``, ``sandbox serve``.

It needs the ``cli`` extra (``python -m pip install ".[cli]"`` from a checkout: typer and
rich). ``main`` is the console script; ``app`` is the typer application (for
``typer.testing.CliRunner``).
Importing this package runs nothing and imports neither typer nor rich; ``app`` loads them
on first access. See ``docs/cli.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from close_opps.cli._app import app as app

__all__ = ["app", "main"]

#: The modules of the ``cli`` extra (and typer's own dependencies).
_EXTRA_MODULES = frozenset({"typer", "rich", "click", "pydantic", "shellingham"})


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``close-opps`` with ``argv`` (default: ``sys.argv[1:]``); exits the process.

    Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted.
    """
    try:
        from close_opps.cli._app import app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _EXTRA_MODULES:
            raise
        sys.stderr.write(
            f"close-opps: error: the command line needs the cli extra ({exc.name} is "
            "missing): from a checkout of close-opps, python -m pip install '.[cli]'\n"
        )
        raise SystemExit(1) from None
    app(args=list(argv) if argv is not None else None, prog_name="close-opps")


def __getattr__(name: str) -> Any:
    if name == "app":
        from close_opps.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
