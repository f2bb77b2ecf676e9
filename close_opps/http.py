"""The transport: one aiohttp session, auth, timeouts, retries, rate limits, typed errors.

Everything that *reads* a response (rate-limit headers, server-requested waits, error bodies)
is a pure function or a method of a sans-I/O :class:`Dialect`, testable without a network. The
:class:`Transport` is the small I/O part; it never knows what an opportunity is.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import ipaddress
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final
from urllib.parse import quote, urlencode

import aiohttp
import attrs
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from close_opps import telemetry
from close_opps._budget import RateBudget, budget_for
from close_opps._constants import (
    BACKOFF_INITIAL,
    BACKOFF_JITTER,
    BACKOFF_MAX,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_TIMEOUT,
    MAX_JSON_DEPTH,
    MAX_JSON_INT_DIGITS,
    MAX_REDIRECTS,
    MIN_SERVER_WAIT,
    OFFLOAD_BYTES,
    RETRYABLE_STATUSES,
    USER_AGENT,
)
from close_opps._redact import get_logger, redact, register, safe_cause
from close_opps.errors import (
    APIError,
    APITimeoutError,
    ClientClosedError,
    DecodeError,
    EndpointNotFoundError,
    InvalidRequestError,
    RateLimitError,
    ServerError,
    TransportError,
    error_class_for_status,
)
from close_opps.model import FrozenDict, FrozenList

__all__ = [
    "Dialect",
    "ErrorFields",
    "RateLimit",
    "Request",
    "Response",
    "Secret",
    "Transport",
    "decipher_response",
    "error_location",
    "opt_str",
    "parse_json",
    "parse_rate_limit",
    "parse_retry_after",
    "path_segment",
    "retry_wait",
    "validate_base_url",
    "validate_proxy_url",
]

logger = get_logger("close_opps.http")

#: Set while :meth:`Transport.send` runs its retry loop, so that stamina's own
#: ``stamina.retry_scheduled`` record for the same retry is dropped (ours says it once).
_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "close_opps_retrying", default=False
)


class _OurRetries(logging.Filter):
    """Drops stamina's retry records for retries this module already logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "stamina.retry_scheduled" and _retrying.get())


logging.getLogger("stamina").addFilter(_OurRetries())

_REQUEST_ID_HEADERS: Final = ("X-Request-Id", "Request-Id", "X-Amzn-RequestId")
#: Unix times are this large; smaller reset values are relative seconds.
_EPOCH_THRESHOLD: Final = 1_000_000_000
#: The largest figure a rate-limit or retry header may carry (about 300 years in seconds);
#: a larger one is ignored like any unreadable header.
_MAX_HEADER_NUMBER: Final = 1e10


class Secret:
    """An API key that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("__weakref__", "_forms", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("api_key must be a non-empty string")
        self._value = value
        # From now on, every error, log record and CLI line is redacted of this key.
        self._forms = register(self, value)

    def reveal(self) -> str:
        """The key itself, for building the auth header and nothing else."""
        return self._value

    def redact(self, text: str) -> str:
        """``text`` with every form of the key (raw, ``Bearer``, base64 of ``key:`` and of
        ``key``, ``Basic``) replaced by ``***``."""
        return redact(text, self._forms)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


# --------------------------------------------------------------------------- requests and URLs


def path_segment(value: str) -> str:
    """``value`` as exactly one percent-encoded URL path segment.

    ``"a/b"`` becomes ``"a%2Fb"``, ``"a?x=1"`` becomes ``"a%3Fx%3D1"``: no id can reach another
    endpoint or add a query. Empty ids and the dot segments ``.`` and ``..`` are refused.
    """
    if not isinstance(value, str):
        raise TypeError(f"an id must be a string, got {type(value).__name__}")
    if value.strip() in {"", ".", ".."}:
        raise ValueError(f"{value!r} is not a valid id")
    return quote(value, safe="")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_base_url(url: str) -> str:
    """``url`` without its trailing slash, once it is safe to send a key to.

    HTTPS is required; plain HTTP only for a loopback host (a local emulator or test server).
    Credentials, queries and fragments in the base URL are refused.
    """
    parsed = yarl.URL(url)
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {url!r}")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        raise ValueError(
            f"base_url {url!r} uses plain http: the API key would travel unencrypted. "
            "Use https (plain http is allowed only for a loopback host)."
        )
    if parsed.user or parsed.password:
        raise ValueError("base_url must not carry credentials: pass api_key instead")
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {url!r}")
    return str(parsed).rstrip("/")


def validate_proxy_url(url: str) -> str:
    """``url`` once it is an absolute ``http``/``https`` proxy URL (aiohttp's proxies)."""
    parsed = yarl.URL(url)
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise ValueError(
            f"proxy must be an absolute http(s) URL such as http://proxy.example:3128, "
            f"got {parsed.with_password('***') if parsed.password else url!r}"
        )
    return url


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_query_value(v) for v in value)
    if hasattr(value, "value") and isinstance(value.value, str):  # an Enum
        return str(value.value)
    return str(value)


def _default_idempotent(instance: Request) -> bool:
    return instance.method.upper() in {"GET", "HEAD", "OPTIONS"}


@attrs.frozen(kw_only=True)
class Request:
    """What an adapter asks the transport to do.

    ``path`` is relative to the base URL and already encoded (build id segments with
    :func:`path_segment`). ``idempotent`` requests are retried; by default only GET-like ones
    are, and an adapter marks a read-only POST (a search) idempotent explicitly.
    """

    method: str = "GET"
    path: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    json: Any = None
    idempotent: bool = attrs.field(default=attrs.Factory(_default_idempotent, takes_self=True))
    #: ``False``: send once, whatever the answer (a request that no retry can mend).
    retry: bool = True

    def url(self, base_url: str) -> yarl.URL:
        """The absolute URL of this request, its encoding preserved exactly."""
        query = urlencode(
            [(k, _query_value(v)) for k, v in self.params.items() if v is not None],
            quote_via=quote,
        )
        return yarl.URL(base_url + self.path + (f"?{query}" if query else ""), encoded=True)


@attrs.frozen(kw_only=True)
class Response:
    """A successful response: status, headers, and the body decoded from JSON."""

    status: int
    headers: Mapping[str, str]
    data: Any
    #: The body's length in bytes (a large page is decoded off the event loop).
    size: int = 0


# ----------------------------------------------------------------------- reading responses


@attrs.frozen(kw_only=True)
class RateLimit:
    """The latest rate-limit figures a provider sent.

    Attributes:
        limit: requests allowed in the current window.
        remaining: requests left in it.
        reset: seconds until the window resets, counted from ``observed_at``.
        observed_at: when the response carrying these figures arrived (UTC).
    """

    limit: int | None
    remaining: int | None
    reset: float | None
    observed_at: datetime

    @property
    def resets_at(self) -> datetime | None:
        """The moment the window resets, when the server said (at most ``datetime.max``)."""
        if self.reset is None:
            return None
        try:
            return datetime.fromtimestamp(self.observed_at.timestamp() + self.reset, UTC)
        except (OverflowError, ValueError, OSError):
            return datetime.max.replace(tzinfo=UTC)


def _number(text: str | None, name: str = "a rate-limit header") -> float | None:
    """A header's non-negative finite number, or ``None`` (logged) when it is not one.

    Figures above :data:`_MAX_HEADER_NUMBER` are refused too: no rate-limit figure is that
    large, and a reset that far away cannot be a date.
    """
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (0 <= value <= _MAX_HEADER_NUMBER):  # NaN, infinities, negatives, absurd sizes
        logger.debug("ignoring %s that is not a usable number: %r", name, _snippet(text, 40))
        return None
    return value


def _int(text: str | None) -> int | None:
    value = _number(text, "a rate-limit figure")
    return int(value) if value is not None else None


def _relative(reset: float | None, now: float) -> float | None:
    if reset is None:
        return None
    if reset >= _EPOCH_THRESHOLD:  # a Unix time (Getraze), not a number of seconds (Close)
        return max(0.0, reset - now)
    return reset


def _structured_rate_limit(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``RateLimit: limit=100, remaining=0, reset=1`` header as a dict."""
    value = headers.get("RateLimit")
    if not value:
        return {}
    fields = {}
    for part in re.split(r"[;,]", value):
        key, sep, val = part.partition("=")
        if sep:
            fields[key.strip().lower()] = val.strip().strip('"')
    return fields


def _ci(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with case-insensitive lookups (aiohttp's already are; a plain dict is not)."""
    if isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        return headers
    return CIMultiDict(headers)


def parse_rate_limit(headers: Mapping[str, str], *, now: float | None = None) -> RateLimit | None:
    """The rate-limit figures of a response, from whichever header form it uses.

    Understands ``RateLimit: limit=…, remaining=…, reset=…`` (Close), the older
    ``X-Rate-Limit-Limit/-Remaining/-Reset`` (Close, seconds) and ``X-RateLimit-*`` (Getraze,
    reset as a Unix time). ``None`` when the response carries none of them.
    """
    now = time.time() if now is None else now
    headers = _ci(headers)
    structured = _structured_rate_limit(headers)

    def figure(name: str) -> str | None:
        return structured.get(name) or _first(
            headers, f"X-RateLimit-{name}", f"X-Rate-Limit-{name}"
        )

    limit = _int(figure("limit"))
    remaining = _int(figure("remaining"))
    reset = _relative(_number(figure("reset"), "a rate-limit reset"), now)
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(
        limit=limit, remaining=remaining, reset=reset, observed_at=datetime.fromtimestamp(now, UTC)
    )


def _first(headers: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks to wait before the next call, from the headers.

    Close's documented rule comes first: wait the ``reset`` of its ``RateLimit`` header. Then
    ``Retry-After-Ms``, ``Retry-After`` (seconds or an HTTP date), and the older
    ``X-Rate-Limit-Reset``. ``None`` when the server named no wait.
    """
    now = time.time() if now is None else now
    headers = _ci(headers)
    reset = _number(_structured_rate_limit(headers).get("reset"))
    if reset is not None:
        return _relative(reset, now)
    millis = _number(headers.get("Retry-After-Ms"))
    if millis is not None:
        return millis / 1000
    retry_after = headers.get("Retry-After")
    if retry_after:
        seconds = _number(retry_after)
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            logger.debug("ignoring an unreadable Retry-After: %r", _snippet(retry_after, 40))
    return _relative(_number(_first(headers, "X-Rate-Limit-Reset")), now)


def retry_wait(
    exc: BaseException, *, max_wait: float, jitter: Callable[[], float] = random.random
) -> bool | float:
    """The retry policy for a failed read, as a stamina backoff hook.

    ``False``: do not retry. ``True``: retry after exponential backoff with jitter. A number:
    retry after that many seconds, as the server asked. A server wait above ``max_wait`` is
    not slept: the error is raised at once. A server wait below one second is raised to one
    second plus up to half a second of jitter (``jitter()`` gives a number in [0, 1)): a
    wait that ends just before the server's window turns would meet another 429, and
    clients told "0" must not come back all at once.
    """
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, (RateLimitError, ServerError)) and exc.status in RETRYABLE_STATUSES:
        if exc.retry_after is None:
            return True
        if exc.retry_after > max_wait:
            return False
        if exc.retry_after < MIN_SERVER_WAIT:
            return MIN_SERVER_WAIT + jitter() * MIN_SERVER_WAIT / 2
        return exc.retry_after
    return False


@attrs.frozen(kw_only=True)
class ErrorFields:
    """What a vendor's error body says, in vendor-neutral form.

    Besides the code and message, a dialect reads the limits a server names when it refuses
    a request, so that the pager acts on them without reading messages itself:

    Attributes:
        max_page_size: the largest page the server serves, when it named it.
        offset_too_large: the request's offset (Close's ``_skip``) is past what the server
            serves, whether or not it named the maximum.
        max_offset: the largest offset the server serves, when it named it.
        cursor_invalid: the request's cursor is invalid or expired; start again.
        record_missing: the error says that the requested record does not exist (not that the
            route is unknown).
    """

    code: str | None = None
    message: str | None = None
    field_errors: Mapping[str, str] = attrs.field(factory=dict)
    retry_after: float | None = None
    max_page_size: int | None = None
    offset_too_large: bool = False
    max_offset: int | None = None
    cursor_invalid: bool = False
    record_missing: bool = False


class Dialect:
    """How one provider speaks HTTP: auth header, error bodies, envelopes.

    Sans-I/O: every method is a pure function of a response's parts. Each provider subclasses
    it with the error body forms its API sends (:meth:`error_fields`); the base class knows
    none, and reads a text body as the message.

    A 404 is a :class:`~close_opps.NotFoundError` only when the dialect recognizes the
    vendor's "no such record" answer (:attr:`ErrorFields.record_missing`); any other 404 is an
    :class:`~close_opps.EndpointNotFoundError`, so that a wrong base URL is never taken to mean
    that a record was deleted.
    """

    #: The provider's name, as in :attr:`close_opps.Opportunity.provider`.
    provider: ClassVar[str] = "unknown"
    #: Vendor error codes whose class does not follow from the HTTP status.
    error_classes_by_code: ClassVar[Mapping[str, type[APIError]]] = {}

    def auth_headers(self, api_key: Secret) -> dict[str, str]:
        """The headers that authenticate a request (default: a bearer token)."""
        return {"Authorization": f"Bearer {api_key.reveal()}"}

    def error_fields(self, data: Any) -> ErrorFields:
        """Read an error body (decoded JSON, or text when it was not JSON)."""
        if isinstance(data, str):
            text = data.strip()
            return ErrorFields(message=_snippet(text) if text else None)
        return ErrorFields()

    def retry_after(
        self, status: int, headers: Mapping[str, str], fields: ErrorFields
    ) -> float | None:
        """Seconds the server asks to wait: the body's figure first, then the headers'."""
        if fields.retry_after is not None:
            return fields.retry_after
        return parse_retry_after(headers)

    def error_class(self, status: int, fields: ErrorFields) -> type[APIError]:
        """The error class for a response: by vendor code first, then by HTTP status."""
        by_code = fields.code and self.error_classes_by_code.get(fields.code)
        if by_code:
            return by_code
        if status == 404 and not fields.record_missing:
            return EndpointNotFoundError
        return error_class_for_status(status)

    def error(
        self, status: int, headers: Mapping[str, str], data: Any, *, api_key: Secret | None = None
    ) -> APIError:
        """The typed error for an error response (or an error envelope in a 2xx body)."""
        headers = _ci(headers)
        fields = self.error_fields(data)
        cls = self.error_class(status, fields)
        message = fields.message or f"the server answered HTTP {status}"
        if cls is EndpointNotFoundError:
            message = (
                f"{message} (HTTP {status} without the provider's 'no such record' answer: "
                "the route does not exist; is the base URL right?)"
            )
        if api_key is not None:
            message = api_key.redact(message)
        kwargs: dict[str, Any] = {
            "provider": self.provider,
            "status": status,
            "code": fields.code,
            "headers": headers,
            "body": data,
            "request_id": _first(headers, *_REQUEST_ID_HEADERS),
        }
        if issubclass(cls, (RateLimitError, ServerError)):
            kwargs["retry_after"] = self.retry_after(status, headers, fields)
        if issubclass(cls, InvalidRequestError):
            kwargs.update(
                field_errors=fields.field_errors,
                max_page_size=fields.max_page_size,
                offset_too_large=fields.offset_too_large,
                max_offset=fields.max_offset,
                cursor_invalid=fields.cursor_invalid,
            )
        return cls(message, **kwargs)

    def check(
        self, status: int, headers: Mapping[str, str], data: Any, *, api_key: Secret | None = None
    ) -> APIError | None:
        """An error hidden in a successful response (an envelope saying ``success: false``).

        Build it with :meth:`error`, passing ``api_key`` on so the message is redacted.
        """
        return None


def error_location(loc: Any) -> str:
    """A validation error's ``loc`` (``["body", "filters", 0]``) as ``filters.0``."""
    if isinstance(loc, list):
        return ".".join(str(p) for p in loc if p != "body") or "body"
    return str(loc) if loc is not None else "?"


def opt_str(value: Any) -> str | None:
    """``value`` when it is a string, else ``None`` (for reading loosely typed error bodies)."""
    return value if isinstance(value, str) else None


def _snippet(text: str, size: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[:size] + "…"


class _Unacceptable(ValueError):
    """Valid JSON the SDK refuses (too deep, a lone surrogate, a non-standard constant)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _Unacceptable(f"an integer of {len(text)} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise _Unacceptable(f"{name} is not a JSON number")


#: A ``\\u`` escape of a UTF-16 surrogate (D800-DFFF): the only way JSON text can hold
#: one, since UTF-8 bytes cannot. Bodies without it skip the string check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_strings(data: Any) -> None:
    """Refuse strings (values or keys) holding a lone surrogate: legal as a JSON escape, but
    no UTF-8 text, file or database holds it. Iterative, linear in the size of ``data``."""
    stack: list[Any] = [data]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is str:
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Unacceptable(
                        "a string holds a lone surrogate (\\ud800-\\udfff)"
                    ) from None
        elif kind is dict:
            stack.extend(value.values())
            stack.extend(value)
        elif kind is list:
            stack.extend(value)


def _frozen_tree(value: Any, depth: int) -> Any:
    """``value`` as :class:`FrozenDict` / :class:`FrozenList` all the way down, refusing
    nesting deeper than :data:`MAX_JSON_DEPTH` (one walk does both)."""
    if depth >= MAX_JSON_DEPTH:
        raise _Unacceptable(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if type(value) is dict:
        # A C-speed copy, then only the (few) nested containers replaced.
        frozen = FrozenDict(value)
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                dict.__setitem__(frozen, key, _frozen_tree(item, depth + 1))
        return frozen
    return FrozenList([_frozen_tree(v, depth + 1) if type(v) in _CONTAINERS else v for v in value])


_CONTAINERS = frozenset({dict, list})
#: Every digit read as "0": a run of more digits than allowed is then one substring search
#: (a regex over a page costs as much as parsing it).
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_TOO_MANY_DIGITS = b"0" * (MAX_JSON_INT_DIGITS + 1)


def _has_long_digit_run(body: bytes) -> bool:
    return _TOO_MANY_DIGITS in body.translate(_DIGITS_AS_ZERO)


def _has_surrogate_escape(body: bytes) -> bool:
    return (b"\\ud" in body or b"\\uD" in body) and _SURROGATE_ESCAPE.search(body) is not None


@functools.cache
def _fast_decoder() -> Callable[[bytes], Any]:
    # Imported on first use: ``import close_opps`` stays light.
    import msgspec.json

    return msgspec.json.Decoder(float_hook=Decimal).decode


def load_json(body: bytes) -> Any:
    """``body`` parsed as JSON, read-only all the way down (:class:`FrozenDict`,
    :class:`FrozenList`); ``ValueError`` for what is not JSON or is refused.

    msgspec's C parser reads nearly every body. A body it refuses (not UTF-8, not JSON, a
    ``NaN``, a lone surrogate escape, nesting beyond its own limit), and the rare body
    holding a run of digits longer than :data:`MAX_JSON_INT_DIGITS`, goes through
    :mod:`json` with hooks that check those, so every refusal is the same whichever parser
    saw the body first.
    """
    data: Any = _NOT_READ
    if not _has_long_digit_run(body):
        try:
            data = _fast_decoder()(body)
        except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
            data = _NOT_READ
    if data is _NOT_READ:
        data = _careful_load(body)
    if type(data) in _CONTAINERS:
        data = _frozen_tree(data, 0)
    return data


_NOT_READ: Final = object()


def _careful_load(body: bytes) -> Any:
    try:
        # The integer hook costs a Python call per integer: only for bodies that hold a run
        # of digits longer than the limit (the C parser reads the others).
        data = json.loads(
            body,
            parse_float=Decimal,
            parse_int=_parse_int if _has_long_digit_run(body) else None,
            parse_constant=_parse_constant,
        )
    except RecursionError:
        raise _Unacceptable(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _has_surrogate_escape(body):
        _check_strings(data)
    return data


def parse_json(body: bytes, *, provider: str, api_key: Secret | None = None) -> Any:
    """``body`` parsed as JSON, numbers with a fraction as exact :class:`~decimal.Decimal`.

    A body that is not JSON is a :class:`DecodeError` quoting its start (with ``api_key``
    redacted), and so is JSON the SDK refuses: nesting deeper than
    :data:`~close_opps._constants.MAX_JSON_DEPTH`, integers longer than
    :data:`~close_opps._constants.MAX_JSON_INT_DIGITS` digits, ``NaN``/``Infinity``, and
    strings holding a lone surrogate. The cost is linear in the size of ``body``.
    """
    try:
        return load_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        text = _snippet(body[:200].decode("utf-8", "replace"))
        if api_key is not None:
            text = api_key.redact(text)
        if isinstance(exc, _Unacceptable):
            reason = f"it is JSON the SDK refuses: {exc}"
        else:
            reason = f"it is not JSON ({exc.__class__.__name__})"
        raise DecodeError(
            f"the response body cannot be read: {reason}: {text!r}",
            provider=provider,
        ) from None


def decipher_response(
    dialect: Dialect,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    api_key: Secret | None = None,
) -> Any:
    """A response's decoded body, or the typed error it means (raised).

    Pure (gidgethub's ``sansio.decipher_response`` is the model): everything the SDK reads
    from an answer goes through here, so every vendor's answers are unit-tested from recorded
    samples without HTTP. A 3xx-5xx status, or a 2xx whose body the dialect calls an error
    (:meth:`Dialect.check`), raises an :class:`~close_opps.APIError` subclass; a 2xx body that
    is not JSON raises :class:`~close_opps.DecodeError`.
    """
    if status >= 300:
        try:
            data: Any = parse_json(body, provider=dialect.provider) if body.strip() else None
        except DecodeError:
            data = body.decode("utf-8", "replace")
        raise dialect.error(status, headers, data, api_key=api_key)
    data = parse_json(body, provider=dialect.provider, api_key=api_key)
    hidden = dialect.check(status, headers, data, api_key=api_key)
    if hidden is not None:
        raise hidden
    return data


# ------------------------------------------------------------------------------ the transport


def _same_origin(a: yarl.URL, b: yarl.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class Transport:
    """Sends :class:`Request` s for one provider: auth, timeout, retries, errors, rate limits.

    Uses the caller's :class:`aiohttp.ClientSession` when given one (and leaves it open, its
    own ``User-Agent`` included), else creates its own on first use, following the
    environment's proxy settings (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``; never for a
    loopback host), and closes it in :meth:`aclose`. ``proxy`` sends every request through
    that proxy; ``user_agent`` is appended to the ``User-Agent`` header.
    """

    def __init__(
        self,
        *,
        dialect: Dialect,
        base_url: str,
        api_key: Secret,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        proxy: str | None = None,
        user_agent: str | None = None,
        max_in_flight: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive: requests always time out")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 (no retries) or more")
        if max_retry_wait < 0:
            raise ValueError("max_retry_wait must be 0 or more")
        self.dialect = dialect
        self.base_url = validate_base_url(base_url)
        self._api_key = api_key
        self._session = session
        self._owns_session = session is None
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.rate_limit: RateLimit | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.proxy = validate_proxy_url(proxy) if proxy is not None else None
        if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip()):
            raise ValueError("user_agent must be a non-empty string")
        self._user_agent = user_agent.strip() if user_agent else None
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._budget: tuple[asyncio.AbstractEventLoop, RateBudget] | None = None

    @property
    def provider(self) -> str:
        """The provider this transport talks to."""
        return self.dialect.provider

    @property
    def api_key(self) -> Secret:
        """The key this transport sends (a :class:`Secret`: it never shows itself)."""
        return self._api_key

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run: the transport sends nothing more."""
        return self._closed

    async def aclose(self) -> None:
        """Close the session if this transport created it; refuse every request from now on.

        A request in flight fails with :class:`ClientClosedError` and is not retried.
        """
        self._closed = True
        session, self._session = self._session, None
        if self._owns_session and session is not None and not session.closed:
            await session.close()

    def _rate_budget(self) -> RateBudget:
        """The budget of this key in the running loop: every transport using the key
        against this API shares it (looked up once per loop, not per request)."""
        loop = asyncio.get_running_loop()
        if self._budget is None or self._budget[0] is not loop:
            budget = budget_for(
                self.provider,
                self.base_url,
                self._api_key.reveal(),
                max_in_flight=self.max_in_flight,
            )
            self._budget = (loop, budget)
        return self._budget[1]

    def _user_agent_for(self, session: aiohttp.ClientSession) -> str:
        """The caller's session's ``User-Agent`` (else ours), then ``user_agent``."""
        base = session.headers.get("User-Agent") or USER_AGENT
        return f"{base} {self._user_agent}" if self._user_agent else base

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError(
                "the adapter is closed (aclose() ran, or its `async with` ended); "
                "create a new adapter",
                provider=self.provider,
            )
        loop = asyncio.get_running_loop()
        if self._session is None:
            host = yarl.URL(self.base_url).host or ""
            self._session = aiohttp.ClientSession(trust_env=not _is_loopback(host))
            self._loop = loop
        elif self._session.closed:
            raise ClientClosedError("the aiohttp session is closed", provider=self.provider)
        elif self._owns_session and self._loop is not loop:
            raise ClientClosedError(
                "the adapter was first used in another event loop (another asyncio.run()); "
                "create one adapter per event loop, and close it with aclose() or `async with`",
                provider=self.provider,
            )
        return self._session

    def _closed_error(self, request: Request, exc: BaseException) -> ClientClosedError:
        return ClientClosedError(
            f"{request.method} {request.path} was abandoned: the adapter was closed while "
            f"it was in flight ({_describe(exc)})",
            provider=self.provider,
        )

    async def send(self, request: Request) -> Response:
        """Send ``request``, retrying a read on throttling, 5xx, timeouts and dropped connections.

        Raises:
            APIError: (a subclass of it) the provider answered with an error.
            TransportError: no usable answer, after retries.
            DecodeError: the body is not JSON.
        """
        # a span and metrics per request, retries included (close_opps.telemetry)
        with telemetry.request(self.provider, request.method, request.path) as seen:
            response = await self._send(request, seen)
            seen.status = response.status
            if self.rate_limit is not None:
                seen.remaining = self.rate_limit.remaining
            return response

    async def _send(self, request: Request, seen: telemetry.RequestRecord) -> Response:
        import stamina  # imported on the first retried request: ~10 ms off `import`

        if not request.idempotent or not request.retry or self.max_retries == 0:
            return await self._send_once(request)
        failures = 0

        def on_failure(exc: Exception) -> bool | float:
            nonlocal failures
            if self._closed:
                return False
            failures += 1
            decision = retry_wait(exc, max_wait=self.max_retry_wait)
            if decision is False or failures > self.max_retries:
                return False  # the exception is the report: no log line
            telemetry.retried(seen, self.provider, exc)
            wait = _backoff(failures) if decision is True else decision
            logger.info(
                "%s: %s %s failed (%s); retrying in %.2f s (retry %d of %d)",
                self.provider,
                request.method,
                request.path,
                _describe(exc),
                wait,
                failures,
                self.max_retries,
            )
            return wait

        token = _retrying.set(True)
        try:
            async for attempt in stamina.retry_context(
                on=on_failure,
                attempts=self.max_retries + 1,
                timeout=None,
                wait_initial=BACKOFF_INITIAL,
                wait_max=BACKOFF_MAX,
                wait_jitter=BACKOFF_JITTER,
            ):
                with attempt:
                    return await self._send_once(request)
        finally:
            _retrying.reset(token)
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    async def _send_once(self, request: Request) -> Response:
        url = request.url(self.base_url)
        session = self._client()
        headers = {
            "Accept": "application/json",
            "User-Agent": self._user_agent_for(session),
            **self.dialect.auth_headers(self._api_key),
        }
        budget = self._rate_budget()
        await budget.acquire(max_wait=self.max_retry_wait)
        figures: list[RateLimit] = []  # the answer's rate-limit figures, when it had some
        throttled: RateLimitError | None = None
        try:
            return await self._exchange(request, session, headers, url, figures)
        except RateLimitError as exc:
            throttled = exc
            raise
        finally:
            await budget.release(
                figures[0] if figures else None,
                throttled=throttled is not None,
                retry_after=throttled.retry_after if throttled is not None else None,
            )

    async def _exchange(
        self,
        request: Request,
        session: aiohttp.ClientSession,
        headers: Mapping[str, str],
        url: yarl.URL,
        figures: list[RateLimit],
    ) -> Response:
        """One request and its answer, read into data or a typed error (its rate-limit
        figures appended to ``figures``)."""
        started = time.monotonic()
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.request(
                    request.method,
                    url,
                    headers=headers,
                    json=request.json,
                    allow_redirects=False,
                    proxy=self.proxy,
                    raise_for_status=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    body = await resp.read()
                    status = resp.status
                    resp_headers: Mapping[str, str] = resp.headers
                    location = resp.headers.get("Location")
                if not (300 <= status < 400 and location):
                    break
                try:
                    target = url.join(yarl.URL(location))
                    same_origin = _same_origin(url, target)
                except ValueError:  # "http://[::1", a port out of range, ...
                    raise TransportError(
                        f"{request.method} {request.path} was redirected to an unreadable "
                        f"location ({_snippet(location, 80)!r}); not followed",
                        provider=self.provider,
                    ) from None
                if not same_origin:
                    raise TransportError(
                        f"{request.method} {request.path} was redirected to another origin "
                        f"({target.scheme}://{target.host}); not followed, so the API key is not "
                        "sent there",
                        provider=self.provider,
                    )
                url = target
            else:
                raise TransportError(
                    f"{request.method} {request.path}: more than {MAX_REDIRECTS} redirects",
                    provider=self.provider,
                )
        except TimeoutError as exc:
            if self._closed:
                raise self._closed_error(request, exc) from safe_cause(exc)
            raise APITimeoutError(
                f"{request.method} {request.path} timed out after {self.timeout:g} s",
                provider=self.provider,
            ) from safe_cause(exc)
        except aiohttp.ClientError as exc:
            if self._closed:
                raise self._closed_error(request, exc) from safe_cause(exc)
            raise TransportError(
                f"{request.method} {request.path} failed: {_describe(exc)}",
                provider=self.provider,
            ) from safe_cause(exc)
        except RuntimeError as exc:  # aiohttp's "Session is closed", asyncio's "loop is closed"
            if self._closed:
                raise self._closed_error(request, exc) from safe_cause(exc)
            raise ClientClosedError(
                f"{request.method} {request.path} cannot be sent: {_describe(exc)}",
                provider=self.provider,
            ) from safe_cause(exc)
        if self._closed:  # closed while the answer was read: drop it, as promised
            raise ClientClosedError(
                f"{request.method} {request.path} was abandoned: the adapter was closed while "
                "it was in flight",
                provider=self.provider,
            )

        logger.debug(
            "%s: %s %s -> %s in %.3f s",
            self.provider,
            request.method,
            request.path,
            status,
            time.monotonic() - started,
        )
        rate_limit = parse_rate_limit(resp_headers)
        if rate_limit is not None:
            self.rate_limit = rate_limit
            figures.append(rate_limit)
        args = (self.dialect, status, resp_headers, body)
        if len(body) > OFFLOAD_BYTES:  # keep the event loop responsive while a big body parses
            data = await asyncio.to_thread(decipher_response, *args, api_key=self._api_key)
        else:
            data = decipher_response(*args, api_key=self._api_key)
        return Response(status=status, headers=resp_headers, data=data, size=len(body))


def _backoff(failures: int) -> float:
    """Exponential backoff with jitter before retry number ``failures`` (1-based)."""
    jitter = random.uniform(0, BACKOFF_JITTER)  # noqa: S311 - not cryptographic
    return float(min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** (failures - 1) + jitter))


def _describe(exc: BaseException) -> str:
    """What went wrong, once: ``HTTP 503``, ``timeout``, the connection error's own words."""
    if isinstance(exc, APIError):
        return f"HTTP {exc.status}"
    if isinstance(exc, (TimeoutError, APITimeoutError)):
        return "timeout"
    if isinstance(exc, TransportError) and exc.__cause__ is not None:
        return _describe(exc.__cause__)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
