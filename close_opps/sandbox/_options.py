"""The knobs of each vendor emulator (small frozen attrs classes)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Literal

import attrs

from ._faults import FaultConfig, Latency

__all__ = ["CloseOptions", "GetrazeOptions", "RateLimitPolicy", "ReevoOptions"]

#: Records served per vendor when neither the vendor's options nor the Sandbox say.
DEFAULT_RECORDS = 60


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1")


def _records(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


@attrs.frozen(kw_only=True)
class RateLimitPolicy:
    """How an emulator limits requests: at most ``limit`` per API key per fixed ``window``
    of seconds. (The figures the SDK *reads* from responses are :class:`close_opps.RateLimit`.)
    """

    limit: int = attrs.field(validator=_positive)
    window: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError("window must be > 0")


@attrs.frozen(kw_only=True)
class CloseOptions:
    """Knobs of the Close emulator.

    ``records``/``latency``/``faults``/``seed`` left at ``None`` take the Sandbox's values.
    ``max_limit``/``max_skip`` are the per-resource maxima of ``_limit``/``_skip`` (over them
    is a 400 naming the number). ``rate_limit`` drives the ``RateLimit`` header (and 429s
    when exceeded); ``None`` turns the limiter off (the header still says "plenty").
    ``rate_limit_headers``: ``"ratelimit"`` (``RateLimit: limit=…, remaining=…, reset=…``),
    ``"legacy"`` (the older ``X-Rate-Limit-Limit/-Remaining/-Reset``) or ``"both"``.
    ``schema_extras`` adds the optional keys of the OpenAPI schema to each record.

    The event log (``GET /event/``): events are kept ``event_retention`` (30 days), and an
    ``updated`` change of an object within ``consolidation`` of its last ``updated``
    event's creation merges into that event. ``deleted_data``: a delete's ``data`` is
    ``null`` (the docs) or ``{}`` (``"empty"``, as RudderStack's 2024 fixture).
    ``admin=False`` serves the log as to a non-admin key: ``data`` and ``previous_data``
    (``non_admin_hidden``) are null on events older than ``non_admin_window`` (an hour).
    ``merge_form``: how a lead merge shows a moved opportunity (undocumented):
    ``"update"`` (``updated`` with ``lead_id`` changed) or ``"recreate"`` (``deleted``, then
    ``created`` under a new id on the destination lead). A status change also logs a
    status-change activity ``created`` event of object type ``status_change_type`` (the
    docs name it ``status_change.opportunity`` and ``activity.opportunity_status_change``;
    ``None``: no such event). ``clock`` (default: the wall
    clock) dates edits and events; a :class:`~close_opps.sandbox.ManualClock` ages the log.
    """

    records: int | None = attrs.field(default=None, validator=_records)
    api_key: str = "sandbox-close-key"
    max_limit: int = attrs.field(default=100, validator=_positive)
    max_skip: int = 250_000
    rate_limit: RateLimitPolicy | None = RateLimitPolicy(limit=1000, window=1.0)
    rate_limit_headers: Literal["ratelimit", "legacy", "both"] = "ratelimit"
    schema_extras: bool = False
    event_limit: int = attrs.field(default=50, validator=_positive)
    event_retention: timedelta = timedelta(days=30)
    consolidation: timedelta = timedelta(seconds=3)
    deleted_data: Literal["null", "empty"] = "null"
    admin: bool = True
    non_admin_window: timedelta = timedelta(hours=1)
    non_admin_hidden: tuple[str, ...] = ("data", "previous_data")
    merge_form: Literal["update", "recreate"] = "update"
    status_change_type: (
        Literal["status_change.opportunity", "activity.opportunity_status_change"] | None
    ) = "status_change.opportunity"
    latency: Latency | None = None
    faults: FaultConfig | None = None
    seed: int | None = None
    clock: Callable[[], datetime] | None = None
    today: date | None = None


@attrs.frozen(kw_only=True)
class GetrazeOptions:
    """Knobs of the Getraze emulator.

    ``list_form``: ``"live"`` (what the server sends today: ``data`` is the list, with a
    top-level ``pagination``) or ``"documented"`` (``data.opportunities`` and
    ``data.pagination``). ``record_form``: ``"live"`` (``title``/``value``/``owner_user_*``)
    or ``"documented"`` (``name``/``deal_value``/``responsible_user``). A ``limit`` over
    ``max_limit`` is lowered to it silently, as the real server does
    (``over_max_limit="clamp"``), or is a 400 ``VALIDATION_ERROR`` (``"error"``).
    ``rate_limit`` is per key, in windows aligned on the Unix clock (3600 s: full hours, as
    the vendor); ``permissions`` without ``opportunities:read`` get 403
    ``INSUFFICIENT_PERMISSIONS``.

    ``tie_order``: the real server sorts by the sort key alone and pages with
    ``LIMIT``/``OFFSET``, so records sharing the sort key come back in a fresh order on
    every request (``"shuffled"``, the default: offset pages overlap and miss records);
    ``"stable"`` breaks ties by id instead. ``tie_seed`` seeds the shuffling (``None``: the
    emulator's data seed), so a sequence of requests is reproducible.
    """

    records: int | None = attrs.field(default=None, validator=_records)
    api_key: str = "sandbox-getraze-key"
    list_form: Literal["live", "documented"] = "live"
    record_form: Literal["live", "documented"] = "live"
    default_limit: int = attrs.field(default=50, validator=_positive)
    max_limit: int = attrs.field(default=100, validator=_positive)
    over_max_limit: Literal["error", "clamp"] = "clamp"
    rate_limit: RateLimitPolicy | None = RateLimitPolicy(limit=10_000, window=3600.0)
    permissions: tuple[str, ...] = ("opportunities:read",)
    tie_order: Literal["shuffled", "stable"] = "shuffled"
    tie_seed: int | None = None
    latency: Latency | None = None
    faults: FaultConfig | None = None
    seed: int | None = None
    #: Dates edits made through the sandbox handle (default: the wall clock).
    clock: Callable[[], datetime] | None = None
    today: date | None = None


@attrs.frozen(kw_only=True)
class ReevoOptions:
    """Knobs of the Reevo emulator.

    ``default_limit``/``max_limit`` bound the ``limit`` of ``_query`` (over the maximum:
    422, as a FastAPI body validation). ``rate_limit`` (off by default) answers 429 with
    ``Retry-After`` when exceeded.
    """

    records: int | None = attrs.field(default=None, validator=_records)
    api_key: str = "sandbox-reevo-key"
    default_limit: int = attrs.field(default=50, validator=_positive)
    max_limit: int = attrs.field(default=200, validator=_positive)
    rate_limit: RateLimitPolicy | None = None
    latency: Latency | None = None
    faults: FaultConfig | None = None
    seed: int | None = None
    #: Dates edits made through the sandbox handle (default: the wall clock).
    clock: Callable[[], datetime] | None = None
    today: date | None = None
