"""Provider adapters: one module per CRM, all on the contract of :mod:`close_opps.adapters.base`.

The adapters are imported on first use (``from close_opps.adapters import CloseAdapter``
imports only Close's module).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from close_opps.adapters.base import BaseAdapter, ListQuery, Page
    from close_opps.adapters.close import CloseAdapter
    from close_opps.adapters.getraze import GetrazeAdapter
    from close_opps.adapters.reevo import ReevoAdapter

__all__ = ["BaseAdapter", "CloseAdapter", "GetrazeAdapter", "ListQuery", "Page", "ReevoAdapter"]

_LAZY: dict[str, str] = {
    "BaseAdapter": "close_opps.adapters.base",
    "ListQuery": "close_opps.adapters.base",
    "Page": "close_opps.adapters.base",
    "CloseAdapter": "close_opps.adapters.close",
    "GetrazeAdapter": "close_opps.adapters.getraze",
    "ReevoAdapter": "close_opps.adapters.reevo",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'close_opps.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
