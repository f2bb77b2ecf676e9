"""Provider adapters: one module per CRM, all on the contract of :mod:`close_opps.adapters.base`."""

from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.adapters.close import CloseAdapter

__all__ = ["BaseAdapter", "CloseAdapter", "ListQuery", "Page"]
