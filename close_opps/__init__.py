"""close-opps: one async interface to read sales opportunities from many CRMs.

Quick start::

    import close_opps

    async with close_opps.connect("close", api_key=key) as close:
        async for opp in close.list(status="open"):
            print(opp.name, opp.amount)

The adapters (:class:`CloseAdapter`, :class:`GetrazeAdapter`, :class:`ReevoAdapter`) share
one interface, :class:`~close_opps.adapters.base.BaseAdapter`.
"""

from close_opps._constants import VERSION as __version__
from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.adapters.close import CloseAdapter
from close_opps.adapters.getraze import GetrazeAdapter
from close_opps.adapters.reevo import ReevoAdapter
from close_opps.errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    CloseOppsError,
    DecodeError,
    InvalidRequestError,
    NotFoundError,
    PaginationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from close_opps.http import RateLimit
from close_opps.model import Contact, Money, Opportunity, OpportunityStatus, Ref
from close_opps.registry import adapter_class, connect, providers

__all__ = [
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BaseAdapter",
    "CloseAdapter",
    "CloseOppsError",
    "Contact",
    "DecodeError",
    "GetrazeAdapter",
    "InvalidRequestError",
    "ListQuery",
    "Money",
    "NotFoundError",
    "Opportunity",
    "OpportunityStatus",
    "Page",
    "PaginationError",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "ReevoAdapter",
    "Ref",
    "ServerError",
    "TransportError",
    "__version__",
    "adapter_class",
    "connect",
    "providers",
]
