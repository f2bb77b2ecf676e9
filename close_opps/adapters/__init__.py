"""Provider adapters: one module per CRM, all on the contract of :mod:`close_opps.adapters.base`."""

from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.adapters.close import CloseAdapter
from close_opps.adapters.getraze import GetrazeAdapter
from close_opps.adapters.reevo import ReevoAdapter

__all__ = ["BaseAdapter", "CloseAdapter", "GetrazeAdapter", "ListQuery", "Page", "ReevoAdapter"]
