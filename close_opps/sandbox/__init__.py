"""Local emulators of the Close, Getraze and Reevo opportunity APIs, for tests and demos.

::

    async with Sandbox(seed=7, records=120) as sb:
        adapter = CloseAdapter(api_key=sb.close.api_key, base_url=sb.close.base_url)
        sb.close.script(Fault.rate_limit(0.01), Fault.drop())   # the next two reads fail
        ...
        assert sb.close.request_count == ...

Each emulator serves vendor-shaped JSON (not the SDK's model) from seeded, deterministic
data, with the vendor's auth, error bodies, rate-limit headers and pagination. See
``docs/sandbox.md``.
"""

from __future__ import annotations

from ._common import STATE, VendorState
from ._data import Deal, generate_deals
from ._events import ALLOWED_FILTERS, EventListener, EventLog, ManualClock
from ._faults import FAULTS, Fault, FaultConfig, FaultInjector, Latency, RecordedRequest
from ._options import CloseOptions, GetrazeOptions, RateLimitPolicy, ReevoOptions
from ._server import HOST, VENDORS, Sandbox, VendorName, VendorServer, serve_forever
from .close import make_app as make_close_app
from .getraze import make_app as make_getraze_app
from .reevo import make_app as make_reevo_app

__all__ = [
    "ALLOWED_FILTERS",
    "FAULTS",
    "HOST",
    "STATE",
    "VENDORS",
    "CloseOptions",
    "Deal",
    "EventListener",
    "EventLog",
    "Fault",
    "FaultConfig",
    "FaultInjector",
    "GetrazeOptions",
    "Latency",
    "ManualClock",
    "RateLimitPolicy",
    "RecordedRequest",
    "ReevoOptions",
    "Sandbox",
    "VendorName",
    "VendorServer",
    "VendorState",
    "generate_deals",
    "make_close_app",
    "make_getraze_app",
    "make_reevo_app",
    "serve_forever",
]
