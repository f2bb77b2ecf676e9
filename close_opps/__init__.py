"""close-opps: one async interface to read sales opportunities from many CRMs.

Quick start::

    from close_opps import CloseAdapter

    async with CloseAdapter(api_key) as close:
        async for opp in close.list(status="open"):
            print(opp.name, opp.amount)
"""

from close_opps._constants import VERSION as __version__
from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.adapters.close import CloseAdapter
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

__all__ = [
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BaseAdapter",
    "CloseAdapter",
    "CloseOppsError",
    "Contact",
    "DecodeError",
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
    "Ref",
    "ServerError",
    "TransportError",
    "__version__",
]
