"""The knobs of each vendor emulator (small frozen attrs classes)."""

from __future__ import annotations

from datetime import date
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
    """

    records: int | None = attrs.field(default=None, validator=_records)
    api_key: str = "sandbox-close-key"
    max_limit: int = attrs.field(default=100, validator=_positive)
    max_skip: int = 250_000
    rate_limit: RateLimitPolicy | None = RateLimitPolicy(limit=1000, window=1.0)
    rate_limit_headers: Literal["ratelimit", "legacy", "both"] = "ratelimit"
    schema_extras: bool = False
    latency: Latency | None = None
    faults: FaultConfig | None = None
    seed: int | None = None
    today: date | None = None


@attrs.frozen(kw_only=True)
class GetrazeOptions:
    """Knobs of the Getraze emulator.

    ``list_form``: ``"live"`` (what the server sends today: ``data`` is the list, with a
    top-level ``pagination``) or ``"documented"`` (``data.opportunities`` and
    ``data.pagination``). ``record_form``: ``"live"`` (``title``/``value``/``owner_user_*``)
    or ``"documented"`` (``name``/``deal_value``/``responsible_user``). A ``limit`` over
    ``max_limit`` is a 400 ``VALIDATION_ERROR`` (``over_max_limit="error"``) or is lowered
    to it (``"clamp"``). ``rate_limit`` is per key, in windows aligned on the Unix clock
    (3600 s: full hours, as the vendor); ``permissions`` without ``opportunities:read`` get
    403 ``INSUFFICIENT_PERMISSIONS``.
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
    today: date | None = None
