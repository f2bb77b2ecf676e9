"""How commands run: exit codes and one-line errors, logging, progress, keys and adapters."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar, cast

import attrs
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from typer.core import TyperCommand, TyperGroup

from close_opps._constants import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from close_opps._redact import forms_of, live_forms, redact, redact_data
from close_opps.adapters.base import BaseAdapter
from close_opps.adapters.base import api_key_env as _adapter_key_env
from close_opps.errors import CloseOppsError
from close_opps.registry import connect, providers

if TYPE_CHECKING:
    from close_opps.sync import SyncStore

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "PROG",
    "SANDBOX_PROVIDERS",
    "CliError",
    "ConnectOptions",
    "ExitCodeGroup",
    "HelpCommand",
    "SandboxSpec",
    "Target",
    "api_key_env",
    "base_url_env",
    "fail",
    "logging_for",
    "may_hold_key",
    "open_adapters",
    "progress",
    "resolve_targets",
    "run",
    "scrub",
    "usage_error",
]

T = TypeVar("T")

#: The program name in messages, whatever the script is called.
PROG: Final = "close-opps"
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: The providers ``--sandbox`` emulates (``close_opps.sandbox.VENDORS``, without importing it).
SANDBOX_PROVIDERS: Final = ("close", "getraze", "reevo")

#: Keys in use by this invocation, scrubbed from anything printed.
_secrets: set[str] = set()


class CliError(Exception):
    """An expected failure: one line on stderr and ``exit_code`` (2: usage, 1: runtime)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def usage_error(message: str) -> CliError:
    """A :class:`CliError` for a wrong or incomplete invocation (exit code 2)."""
    return CliError(message, exit_code=EXIT_USAGE)


def _forms() -> tuple[str, ...]:
    """Every form of the keys of this invocation (they outlive their adapters here)."""
    return _forms_of_keys(frozenset(_secrets))


@functools.lru_cache(maxsize=16)
def _forms_of_keys(keys: frozenset[str]) -> tuple[str, ...]:
    forms = {form for secret in keys for form in forms_of(secret)}
    return tuple(sorted(forms, key=len, reverse=True))


#: What JSON or CSV text writes otherwise than as itself (escaped, or a quote doubled).
_REWRITTEN: Final = re.compile(r'["\\\x00-\x1f]')


def may_hold_key(text: str) -> bool:
    """Whether ``text``, a record as printed (a JSON line, a CSV row), may show a key in
    use: a form of one (of this invocation's keys or any live one) occurs in it, or a form
    holds a character such text writes escaped, so that the text cannot tell.

    ``False`` means printing ``text`` is what printing the :func:`scrub`-bed record gives:
    a form in any string of the record would be in the text as it is. The writers check the
    text they made and scrub the record only when this says so (scrubbing walks every value
    of the record: it cost more than listing it)."""
    probes = _probes(_forms() + live_forms())
    return probes is None or any(probe in text for probe in probes)


@functools.lru_cache(maxsize=16)
def _probes(forms: tuple[str, ...]) -> tuple[str, ...] | None:
    """The forms to look for in a text: those holding no other form (where a longer one is,
    the shorter one it holds is too), or ``None`` when a form has a character JSON or CSV
    writes escaped (no text can tell then)."""
    if any(_REWRITTEN.search(form) for form in forms):
        return None
    return tuple(f for f in set(forms) if not any(o != f and o in f for o in forms))


def _redact(text: str) -> str:
    """``text`` without any form (raw, base64, ``Basic``/``Bearer``) of a key in use."""
    return redact(redact(text, _forms()))


def scrub(value: T) -> T:
    """A record (or any data) about to be printed, with every form of every key in use
    replaced by ``***``: a server echoing a key into a record never puts it on screen."""
    return cast("T", redact_data(redact_data(value, _forms())))


def print_error(message: str) -> None:
    """``close-opps: error: MESSAGE`` on one line of stderr, keys scrubbed."""
    line = " ".join(_redact(message).split())
    sys.stderr.write(f"{PROG}: error: {line}\n")
    sys.stderr.flush()


def fail(message: str, *, exit_code: int = EXIT_FAILURE) -> NoReturn:
    """Stop the command with a one-line error."""
    raise CliError(message, exit_code=exit_code)


# ------------------------------------------------------------------ exit codes and errors


def _click_exception_class() -> type[Exception]:
    """Click's ``ClickException``, found through typer's public ``BadParameter``.

    typer < 0.26 uses the ``click`` package and later versions a vendored copy; the class is
    the same in spirit (``exit_code``, ``format_message()``) in both.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    return typer.BadParameter  # pragma: no cover - click renamed its base class


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at devnull so the interpreter's last flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test runner's stream)
        pass


def _exit_code(call: Callable[[], Any]) -> int:
    """Run the command line and turn each expected outcome into an exit code."""
    _secrets.clear()
    click_exception = _click_exception_class()
    try:
        result = call()
    except CliError as exc:
        print_error(exc.message)
        return exc.exit_code
    except CloseOppsError as exc:
        print_error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILURE
    except typer.Abort as exc:
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        print_error("aborted")
        return EXIT_FAILURE
    except click_exception as exc:
        message: str = exc.format_message()  # type: ignore[attr-defined]
        # typer >= 0.26 validates enums through pydantic, whose wording leaks into messages
        message = message.replace(": Value error, ", ": ")
        context = getattr(exc, "ctx", None)
        if context is not None:
            message = f"{message} (see '{context.command_path} --help')"
        print_error(message)
        code = getattr(exc, "exit_code", EXIT_USAGE)
        return code if isinstance(code, int) else EXIT_USAGE
    finally:
        _secrets.clear()
    return result if isinstance(result, int) else 0


class ExitCodeGroup(TyperGroup):
    """The root command: every expected failure is one stderr line and an exit code.

    Runs typer in non-standalone mode and maps the outcome itself: usage errors (typer's
    and :class:`CliError` with code 2) exit 2, :class:`~close_opps.CloseOppsError` and other
    :class:`CliError` exit 1, ``KeyboardInterrupt`` exits 130 without a word.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        def call() -> Any:
            return super(ExitCodeGroup, self).main(
                args=args,
                prog_name=prog_name or PROG,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )

        if not standalone_mode:
            return call()
        sys.exit(_exit_code(call))


class HelpCommand(TyperCommand):
    """A command whose help reads like click's: ``list [OPTIONS] PROVIDER``, and arguments
    listed by name (typer would add ``{PROVIDER}`` and a ``<str>`` type placeholder)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((record[0].split(" <", 1)[0], record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine in a fresh event loop."""
    return asyncio.run(main)


async def serve_until_stopped(server: Coroutine[Any, Any, None], *, cannot_start: str) -> None:
    """Run ``server`` until SIGTERM (a clean return) or Ctrl-C (``KeyboardInterrupt`` from
    :func:`asyncio.run`); a server that cannot bind fails the command with
    ``cannot_start`` and the reason."""
    serving = asyncio.ensure_future(server)
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt
    except OSError as exc:
        fail(f"{cannot_start}: {exc.strerror or exc}")
    finally:
        with suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


# ------------------------------------------------------------------------------- logging


@contextmanager
def logging_for(verbosity: int) -> Iterator[None]:
    """Log records on stderr at ``-v`` (info) or ``-vv`` (debug); by default none at all.

    Without this, Python's last-resort handler would print the SDK's and stamina's retry
    warnings, breaking the one-line contract of errors.
    """
    root = logging.getLogger()
    handler: logging.Handler
    if verbosity <= 0:
        handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_RedactFilter())
    level = root.level
    root.addHandler(handler)
    if verbosity > 0:
        root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = _redact(record.getMessage())
            record.args = None
        return True


# ------------------------------------------------------------------------------ progress


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (rich's view: honours ``TTY_INTERACTIVE``)."""
    return Console(stderr=True).is_terminal


def progress() -> Progress:
    """A transient progress display on stderr, disabled unless stderr is a terminal.

    When stdout is a terminal too, lines written to it while the display runs are printed
    above it; otherwise stdout is left alone (data never passes through the display).
    """
    enabled = stderr_is_terminal()
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
        redirect_stdout=enabled and sys.stdout.isatty(),
        redirect_stderr=False,
    )


# ------------------------------------------------------------------- providers and keys


def _env_name(provider: str, suffix: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", provider.upper()) + suffix


def api_key_env(provider: str) -> str:
    """``CLOSE_API_KEY`` for ``close`` (the variable the adapters read too)."""
    return _adapter_key_env(provider)


def base_url_env(provider: str) -> str:
    """``CLOSE_BASE_URL`` for ``close``."""
    return _env_name(provider, "_BASE_URL")


@attrs.frozen
class Target:
    """One provider to read, with its key and API root (both ``None`` for the sandbox)."""

    provider: str
    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str | None = None


@attrs.frozen
class ConnectOptions:
    """``--timeout``, ``--retries`` and ``--proxy``: the adapters' ``timeout``,
    ``max_retries`` and ``proxy``."""

    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_MAX_RETRIES
    proxy: str | None = None


@attrs.frozen
class SandboxSpec:
    """The embedded emulators to start for ``--sandbox``."""

    seed: int = 0
    records: int | None = None


def check_provider(provider: str, *, sandbox: bool) -> str:
    """``provider`` if known (and emulated, with ``--sandbox``); else a usage error."""
    known = providers()
    if provider not in known:
        raise usage_error(f"unknown provider {provider!r}; known providers: {', '.join(known)}")
    if sandbox and provider not in SANDBOX_PROVIDERS:
        raise usage_error(
            f"--sandbox emulates {', '.join(SANDBOX_PROVIDERS)} only, not {provider!r}"
        )
    return provider


def resolve_targets(
    names: Sequence[str],
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    sandbox: bool = False,
    without_key: list[str] | None = None,
) -> list[Target]:
    """The providers to read with their keys: ``--api-key``/``--base-url``, else the
    ``<PROVIDER>_API_KEY``/``<PROVIDER>_BASE_URL`` variables; nothing with ``--sandbox``.

    Raises a usage error (exit 2) for an unknown provider, a missing key or conflicting
    options. With ``without_key``, a provider that has no key is appended to it and left
    out instead; only when every provider lacks one is that an error.
    """
    chosen = [check_provider(name, sandbox=sandbox) for name in dict.fromkeys(names)]
    if sandbox:
        for flag, value in (("--api-key", api_key), ("--base-url", base_url)):
            if value is not None:
                raise usage_error(f"--sandbox and {flag} cannot be used together")
        return [Target(name) for name in chosen]
    if len(chosen) > 1:
        for flag, value in (("--api-key", api_key), ("--base-url", base_url)):
            if value is not None:
                raise usage_error(
                    f"{flag} applies to one provider; for several, set "
                    + ", ".join(
                        (api_key_env if flag == "--api-key" else base_url_env)(n) for n in chosen
                    )
                )
    targets = []
    for name in chosen:
        key = api_key if api_key is not None else os.environ.get(api_key_env(name), "")
        if not key.strip() and without_key is not None:
            without_key.append(name)
            continue
        if not key.strip():
            raise usage_error(
                f"{name}: no API key: set {api_key_env(name)} or pass --api-key "
                "(or use --sandbox to try the local emulators)"
            )
        url = base_url if base_url is not None else os.environ.get(base_url_env(name)) or None
        _secrets.add(key)
        targets.append(Target(name, api_key=key, base_url=url))
    if not targets and without_key:
        raise usage_error(
            "no API key for any provider: set "
            + ", ".join(api_key_env(name) for name in without_key)
            + " (or use --sandbox to try the local emulators)"
        )
    return targets


@asynccontextmanager
async def open_adapters(
    targets: Sequence[Target],
    *,
    sandbox: SandboxSpec | None = None,
    connection: ConnectOptions = ConnectOptions(),
) -> AsyncIterator[dict[str, BaseAdapter]]:
    """Connected adapters by provider, against the embedded sandbox when ``sandbox`` is set.

    Everything (the adapters' sessions, the emulators) is closed on exit.
    """
    options: dict[str, Any] = {"timeout": connection.timeout, "max_retries": connection.retries}
    if connection.proxy is not None and sandbox is None:
        options["proxy"] = connection.proxy
    async with AsyncExitStack() as stack:
        endpoints: dict[str, tuple[str | None, str | None]]
        if sandbox is not None:
            from close_opps.sandbox import Sandbox

            running = await stack.enter_async_context(
                Sandbox(
                    seed=sandbox.seed,
                    records=sandbox.records,
                    vendors=[t.provider for t in targets],  # type: ignore[misc]
                )
            )
            endpoints = {
                t.provider: (running[t.provider].api_key, running[t.provider].base_url)
                for t in targets
            }
        else:
            endpoints = {t.provider: (t.api_key, t.base_url) for t in targets}
        adapters: dict[str, BaseAdapter] = {}
        for provider, (key, url) in endpoints.items():
            try:
                adapter = connect(provider, api_key=key or "", base_url=url, **options)
            except (ValueError, TypeError) as exc:
                raise usage_error(f"{provider}: {exc}") from None
            adapters[provider] = await stack.enter_async_context(adapter)
        yield adapters


def database_errors() -> tuple[type[Exception], ...]:
    """The errors a store raises for a database it cannot open or write (SQLite's, and
    psycopg's when it is installed), besides a newer schema (RuntimeError)."""
    import sqlite3

    errors: list[type[Exception]] = [sqlite3.Error, RuntimeError, OSError, ValueError]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the installed extras
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


async def open_db(url: str) -> SyncStore:
    """The store at ``url``, open; a CLI failure naming it (without a password) otherwise."""
    from close_opps.sync import open_store

    try:
        store = open_store(url)
        await store.open()
    except database_errors() as exc:
        fail(f"cannot use the database {redact_url(url)!r}: {redact_url(str(exc))}")
    return store
