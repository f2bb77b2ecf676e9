"""close-opps: one async interface to read sales opportunities from many CRMs.

Quick start::

    import close_opps

    async with close_opps.connect("close", api_key=key) as close:
        async for opp in close.list(status="open"):
            print(opp.name, opp.amount)

The adapters (:class:`CloseAdapter`, :class:`GetrazeAdapter`, :class:`ReevoAdapter`) share
one interface, :class:`~close_opps.adapters.base.BaseAdapter`; :class:`OpportunityHub` reads
several at once, and :func:`close_opps.sync.sync` keeps a SQLite copy up to date
(``close_opps.sync`` stays the module: import the function from it).
"""

import importlib
from typing import TYPE_CHECKING, Any

from close_opps._version import __version__
from close_opps.changes import Change, ChangeKind
from close_opps.connections import Connection, ConnectionKeyError, sync_connections
from close_opps.errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    CloseOppsError,
    DecodeError,
    EndpointNotFoundError,
    IncompleteListingError,
    InvalidArgumentError,
    InvalidCursorError,
    InvalidRequestError,
    MassDeletionError,
    NotFoundError,
    PaginationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
    WebhookSignatureError,
)
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus, Ref

if TYPE_CHECKING:
    from close_opps.adapters.base import BaseAdapter, ListQuery, Page
    from close_opps.adapters.close import CloseAdapter
    from close_opps.adapters.getraze import GetrazeAdapter
    from close_opps.adapters.reevo import ReevoAdapter
    from close_opps.feed import ChangeFeed
    from close_opps.http import RateLimit
    from close_opps.hub import OpportunityHub
    from close_opps.registry import adapter_class, connect, providers
    from close_opps.sync import SyncError, SyncReport, SyncStore, open_store

#: Names whose modules import aiohttp, sqlite3 and the rest: imported on first use, so
#: ``import close_opps`` costs only what a program uses.
_LAZY: dict[str, str] = {
    "BaseAdapter": "close_opps.adapters.base",
    "ListQuery": "close_opps.adapters.base",
    "Page": "close_opps.adapters.base",
    "CloseAdapter": "close_opps.adapters.close",
    "GetrazeAdapter": "close_opps.adapters.getraze",
    "ReevoAdapter": "close_opps.adapters.reevo",
    "ChangeFeed": "close_opps.feed",
    "RateLimit": "close_opps.http",
    "OpportunityHub": "close_opps.hub",
    "adapter_class": "close_opps.registry",
    "connect": "close_opps.registry",
    "providers": "close_opps.registry",
    "SyncError": "close_opps.sync",
    "SyncReport": "close_opps.sync",
    "SyncStore": "close_opps.sync",
    "open_store": "close_opps.sync",
}

__all__ = [
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BaseAdapter",
    "Change",
    "ChangeFeed",
    "ChangeKind",
    "ClientClosedError",
    "CloseAdapter",
    "CloseOppsError",
    "Connection",
    "ConnectionKeyError",
    "Contact",
    "DecodeError",
    "EndpointNotFoundError",
    "GetrazeAdapter",
    "IncompleteListingError",
    "InvalidArgumentError",
    "InvalidCursorError",
    "InvalidRequestError",
    "ListQuery",
    "MassDeletionError",
    "Money",
    "NotFoundError",
    "Opportunity",
    "OpportunityHub",
    "OpportunityStatus",
    "Page",
    "PaginationError",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "ReevoAdapter",
    "Ref",
    "ServerError",
    "SyncError",
    "SyncReport",
    "SyncStore",
    "TransportError",
    "WebhookSignatureError",
    "__version__",
    "adapter_class",
    "connect",
    "open_store",
    "providers",
    "sync_connections",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'close_opps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
