"""Connections: one customer's account at one provider, synced under its own name.

::

    acme = Connection("acme-close", "close", key_env="ACME_CLOSE_KEY")
    beta = Connection("beta-close", "close", key_env="BETA_CLOSE_KEY")
    async with open_store("postgresql://sync@db/opps") as store:
        await store.add_connection(acme)
        await store.add_connection(beta)
        reports = await sync_connections(store)

A connection says how to reach the account (provider, base URL, adapter options) and where
its API key comes from: an environment variable it names, or an async resolver
``name -> key`` the caller passes (a secret manager). Keys are never written to a store.
The copy and the sync state (cursor, watermark) are keyed by the connection's name, so two
accounts of one provider sync side by side. See ``docs/fleet.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from close_opps.errors import CloseOppsError

if TYPE_CHECKING:
    from close_opps.adapters.base import BaseAdapter
    from close_opps.feed import Clock
    from close_opps.sync import SyncReport, SyncStore

__all__ = [
    "Connection",
    "ConnectionKeyError",
    "KeyResolver",
    "sync_connections",
]

#: An async function giving a connection's API key from its name (a secret manager's).
KeyResolver = Callable[[str], Awaitable[str]]

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}")
#: Adapter options a connection may carry (JSON values; the key is never one of them).
OPTION_NAMES: Final = frozenset(
    {"timeout", "max_retries", "max_retry_wait", "page_size", "concurrency", "proxy", "user_agent"}
)


class ConnectionKeyError(CloseOppsError):
    """A connection's API key could not be found (its variable unset, no resolver, or the
    resolver failed). The message names the connection and the variable, never a key."""

    def __init__(self, message: str, *, provider: str, connection: str) -> None:
        super().__init__(message, provider=provider)
        self.connection = connection


def _check_name(_: Any, __: Any, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"a connection name is 1-200 letters, digits and _.:@- (starting with a letter "
            f"or digit), got {value!r}"
        )


def _check_every(_: Any, __: Any, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"every_minutes must be a positive integer, got {value!r}")


def _check_options(_: Any, __: Any, value: Mapping[str, Any]) -> None:
    unknown = sorted(set(value) - OPTION_NAMES)
    if unknown:
        raise ValueError(
            f"unknown connection options {unknown}: choose from {sorted(OPTION_NAMES)} "
            "(the API key is given by key_env or a resolver, never as an option)"
        )


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


@attrs.frozen
class Connection:
    """One account at one provider, synced under ``name``.

    Attributes:
        name: the connection's name, its key in a store (``acme-close``).
        provider: the adapter's provider name (``"close"``, ``"getraze"``, ``"reevo"``, or
            a plugin's).
        base_url: the API's base URL (default: the adapter's).
        key_env: the environment variable holding the API key (default:
            ``<PROVIDER>_API_KEY``, unless a resolver is given).
        every_minutes: how often the workers sync it (``None``: only when asked).
        options: adapter options (``timeout``, ``page_size``, ``concurrency``, ...).
    """

    name: str = attrs.field(validator=_check_name)
    provider: str
    base_url: str | None = None
    key_env: str | None = None
    every_minutes: int | None = attrs.field(default=None, validator=_check_every)
    options: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_as_dict, validator=_check_options
    )

    async def api_key(self, resolver: KeyResolver | None = None) -> str:
        """The connection's API key: from its variable when it names one (``key_env``), else
        from ``resolver(name)`` when given, else from ``<PROVIDER>_API_KEY``.

        Raises:
            ConnectionKeyError: the variable is unset or empty, or the resolver failed or
                gave no key.
        """
        if resolver is not None and self.key_env is None:
            try:
                key = await resolver(self.name)
            except CloseOppsError:
                raise
            except Exception as exc:
                raise ConnectionKeyError(
                    f"the key resolver failed for connection {self.name!r}: {type(exc).__name__}",
                    provider=self.provider,
                    connection=self.name,
                ) from exc
            if not isinstance(key, str) or not key:
                raise ConnectionKeyError(
                    f"the key resolver gave no key for connection {self.name!r}",
                    provider=self.provider,
                    connection=self.name,
                )
            return key
        variable = self.key_variable
        key = os.environ.get(variable, "")
        if not key:
            raise ConnectionKeyError(
                f"connection {self.name!r}: the environment variable {variable} is not set",
                provider=self.provider,
                connection=self.name,
            )
        return key

    @property
    def key_variable(self) -> str:
        """The environment variable the key is read from without a resolver."""
        return self.key_env or f"{self.provider.upper().replace('-', '_')}_API_KEY"

    def connect(self, api_key: str, **overrides: Any) -> BaseAdapter:
        """An adapter for this connection (not yet entered) with ``api_key``; ``overrides``
        go to the adapter's constructor after the connection's options."""
        from close_opps.registry import connect

        options: dict[str, Any] = {**self.options, **overrides}
        if self.base_url is not None:
            options.setdefault("base_url", self.base_url)
        return connect(self.provider, api_key=api_key, **options)


async def sync_connections(
    store: SyncStore,
    names: Iterable[str] | None = None,
    *,
    resolver: KeyResolver | None = None,
    adapter_options: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
    **sync_options: Any,
) -> dict[str, SyncReport]:
    """Sync the store's connections (``names``, or all of them) once, concurrently, in this
    process; each one's copy and state under its name.

    ``adapter_options`` go to every adapter; ``sync_options`` to :func:`close_opps.sync.sync`
    (``batch_size``, ``max_deletion_share``, ...).

    Raises:
        SyncError: one or more connections failed (a missing key among the causes); the
            others completed.
        ValueError: an unknown connection name.
    """
    from contextlib import AsyncExitStack

    from close_opps.sync import SyncError, sync

    known = {c.name: c for c in await store.connections()}
    chosen = list(known) if names is None else list(dict.fromkeys(names))
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown connections: {', '.join(unknown)}")
    failures: dict[str, CloseOppsError] = {}
    async with AsyncExitStack() as stack:
        adapters: dict[str, BaseAdapter] = {}
        for name in chosen:
            connection = known[name]
            try:
                key = await connection.api_key(resolver)
            except ConnectionKeyError as exc:
                failures[name] = exc
                continue
            adapter = connection.connect(key, **dict(adapter_options or {}))
            adapters[name] = await stack.enter_async_context(adapter)
        reports: dict[str, SyncReport] = {}
        if adapters:
            try:
                reports = await sync(adapters, store, clock=clock, **sync_options)
            except SyncError as exc:
                failures.update(exc.errors)
                reports = exc.reports
    if failures:
        error = SyncError(failures, reports)
        raise error from next(iter(failures.values()))
    return reports
