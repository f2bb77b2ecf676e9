"""Adapters by provider name: the built-in ones, and third parties' through entry points.

A package adds a CRM without forking close-opps by declaring its adapter class (a
:class:`~close_opps.adapters.base.BaseAdapter` subclass) in the ``close_opps.adapters``
entry-point group::

    [project.entry-points."close_opps.adapters"]
    acme = "acme_close_opps:AcmeAdapter"

after which ``close_opps.connect("acme", api_key=...)`` works. See ``docs/adapters.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from close_opps._redact import get_logger
from close_opps.adapters.base import BaseAdapter

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["ENTRY_POINT_GROUP", "adapter_class", "connect", "providers"]

logger = get_logger("close_opps.registry")

#: The entry-point group third-party adapters register in.
ENTRY_POINT_GROUP: Final = "close_opps.adapters"

#: The adapters shipped with close-opps, imported on first use.
_BUILTIN: Final = {
    "close": "close_opps.adapters.close:CloseAdapter",
    "getraze": "close_opps.adapters.getraze:GetrazeAdapter",
    "reevo": "close_opps.adapters.reevo:ReevoAdapter",
}


def entry_points(*, group: str) -> Iterable[EntryPoint]:
    """The installed entry points of ``group`` (importlib.metadata costs ~70 ms to import:
    it is imported when a plugin is first looked for, not with close_opps)."""
    from importlib import metadata

    return metadata.entry_points(group=group)


@cache
def _plugins() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _BUILTIN:
            logger.warning(
                "ignoring the %s adapter from %s: the built-in one has that name",
                entry.name,
                entry.value,
            )
            continue
        found[entry.name] = entry
    return found


def providers() -> list[str]:
    """The provider names :func:`connect` knows, built-in and registered, sorted."""
    return sorted({*_BUILTIN, *_plugins()})


def adapter_class(provider: str) -> type[BaseAdapter]:
    """The adapter class for ``provider``.

    Raises:
        ValueError: no adapter has that name.
        TypeError: the registered object is not a ``BaseAdapter`` subclass.
    """
    if provider in _BUILTIN:
        module, _, name = _BUILTIN[provider].partition(":")
        loaded: Any = getattr(importlib.import_module(module), name)
    elif provider in _plugins():
        loaded = _plugins()[provider].load()
    else:
        known = ", ".join(providers())
        raise ValueError(f"no adapter for provider {provider!r}; known providers: {known}")
    if not (isinstance(loaded, type) and issubclass(loaded, BaseAdapter)):
        raise TypeError(
            f"the {provider!r} adapter ({loaded!r}) is not a close_opps BaseAdapter subclass"
        )
    return loaded


def connect(provider: str, /, **options: Any) -> BaseAdapter:
    """An adapter for ``provider`` (``"close"``, ``"getraze"``, ``"reevo"``, or a plugin's).

    ``options`` go to the adapter's constructor: ``api_key`` (default: the
    ``<PROVIDER>_API_KEY`` variable) and any of ``base_url``, ``session``, ``timeout``,
    ``max_retries``, ``max_retry_wait``, ``page_size``, ``concurrency``, ``proxy``,
    ``user_agent``::

        async with close_opps.connect("close", api_key=key) as close:
            ...
    """
    return adapter_class(provider)(**options)
