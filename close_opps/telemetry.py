"""OpenTelemetry spans and metrics, through the OpenTelemetry API only (the ``otel`` extra).

Nothing is recorded unless the application configures an OpenTelemetry SDK (or passes
providers to :func:`use`); without the ``opentelemetry-api`` package every call here does
nothing. Header values are never recorded (no attribute is built from a header), so keys
cannot leak into traces.

Spans:

- ``close_opps.request``: one per API request as the transport sends it, retries
  included: ``close_opps.provider``, ``close_opps.connection`` (when inside a sync),
  ``http.request.method``, ``url.path``, ``http.response.status_code``,
  ``close_opps.retries``; an error status and the error's type on failure.
- ``close_opps.list``: one per listing (a ``list()``/``pages()`` or a change feed's):
  ``close_opps.provider``, ``close_opps.connection``, ``close_opps.records`` (distinct
  records received), ``close_opps.pages``; an error status on failure (an
  ``IncompleteListingError`` included).
- ``close_opps.page``: one per page the pager fetches (its ``close_opps.request`` nested in
  it): ``close_opps.provider``, ``close_opps.connection``, ``close_opps.offset``,
  ``close_opps.page_size``, ``close_opps.records`` (records on the page).
- ``close_opps.sync``: one per connection's sync run: ``close_opps.connection``,
  ``close_opps.provider``, ``close_opps.records`` (changes applied), ``close_opps.inserted``,
  ``close_opps.updated``, ``close_opps.deleted``, ``close_opps.full_resync``.

Metrics (attributes ``close_opps.provider`` and, inside a sync, ``close_opps.connection``):

- ``close_opps.requests`` (counter; with ``http.response.status_code``),
  ``close_opps.retries`` (counter), ``close_opps.rate_limited`` (counter of 429 answers);
- ``close_opps.rate_limit.remaining`` (gauge): the latest headroom the server announced;
- ``close_opps.records`` (counter): records read by syncs;
- ``close_opps.sync.lag`` (gauge, seconds): when a connection's sync commits, how long
  since its previous complete sync committed (how stale its copy could have been).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, Final

import attrs

from close_opps._constants import VERSION

__all__ = ["current_connection", "use"]

_SCOPE: Final = "close_opps"

#: The connection being synced in this task (set by ``sync``), for the requests' attributes.
current_connection: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "close_opps_connection", default=None
)


class _Instruments:
    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        # the API only (the SDK is the application's choice), imported on first use
        from opentelemetry import metrics, trace

        self.error = trace.StatusCode.ERROR
        self.tracer = trace.get_tracer(_SCOPE, VERSION, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, VERSION, meter_provider=meter_provider)
        self.requests = meter.create_counter("close_opps.requests", "{request}", "API requests")
        self.retries = meter.create_counter("close_opps.retries", "{retry}", "Request retries")
        self.rate_limited = meter.create_counter(
            "close_opps.rate_limited", "{response}", "HTTP 429 answers"
        )
        self.remaining = meter.create_gauge(
            "close_opps.rate_limit.remaining", "{request}", "Latest rate-limit headroom"
        )
        self.records = meter.create_counter("close_opps.records", "{record}", "Records read")
        self.lag = meter.create_gauge(
            "close_opps.sync.lag", "s", "Time since the previous complete sync, at commit"
        )


_instruments: _Instruments | None = None
_missing = False


def use(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Record through these providers instead of the global ones (tests, or an application
    that keeps its providers to itself). ``use()`` goes back to the global providers.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (the ``otel`` extra).
    """
    global _instruments
    _instruments = _Instruments(tracer_provider, meter_provider)


def _get() -> _Instruments | None:
    global _instruments, _missing
    if _instruments is None and not _missing:
        try:
            _instruments = _Instruments()
        except ImportError:  # pragma: no cover - depends on the installed extras
            _missing = True
    return _instruments


def _mark_failed(found: _Instruments, span: Any, exc: BaseException) -> None:
    span.set_status(found.error, type(exc).__name__)
    span.set_attribute("error.type", type(exc).__name__)


@contextlib.contextmanager
def _current_span(found: _Instruments, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    """A span made current for the block, marked failed (with the error's type) when the
    block raises."""
    with found.tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            _mark_failed(found, span, exc)
            raise


def _base(provider: str) -> dict[str, str]:
    attributes = {"close_opps.provider": provider}
    connection = current_connection.get()
    if connection is not None:
        attributes["close_opps.connection"] = connection
    return attributes


@attrs.define
class RequestRecord:
    """What :func:`request` records of one request (filled in by the transport)."""

    status: int | None = None
    retries: int = 0
    remaining: int | None = None


@contextlib.contextmanager
def request(provider: str, method: str, path: str) -> Iterator[RequestRecord]:
    """A ``close_opps.request`` span and the request metrics around one request."""
    record = RequestRecord()
    found = _get()
    if found is None:  # pragma: no cover - depends on the installed extras
        yield record
        return
    attributes: dict[str, Any] = {
        **_base(provider),
        "http.request.method": method,
        "url.path": path,
    }
    with _current_span(found, "close_opps.request", attributes) as span:
        try:
            yield record
        except BaseException as exc:
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                record.status = status
            raise
        finally:
            metric = _base(provider)
            if record.status is not None:
                span.set_attribute("http.response.status_code", record.status)
            span.set_attribute("close_opps.retries", record.retries)
            found.requests.add(1, {**metric, "http.response.status_code": record.status or 0})
            if record.retries:
                found.retries.add(record.retries, metric)
            if record.status == 429:
                found.rate_limited.add(1, metric)
            if record.remaining is not None:
                found.remaining.set(record.remaining, metric)


class ListingSpan:
    """A ``close_opps.list`` span, started and ended explicitly: a listing is an async
    generator, whose steps run in its consumer's context, so the span is never made current
    (its pages are spans of their own)."""

    def __init__(self, provider: str) -> None:
        self._found = _get()
        self._span: Any = None
        if self._found is not None:
            self._span = self._found.tracer.start_span(
                "close_opps.list", attributes=_base(provider)
            )

    def end(self, *, records: int, pages: int, error: BaseException | None = None) -> None:
        """End the span with what the listing received (and its error, if it failed)."""
        if self._span is None or self._found is None:
            return
        self._span.set_attribute("close_opps.records", records)
        self._span.set_attribute("close_opps.pages", pages)
        if error is not None:
            _mark_failed(self._found, self._span, error)
        self._span.end()
        self._span = None


@attrs.define
class PageRecord:
    """What :func:`page` records of one page (filled in by the pager)."""

    records: int | None = None


@contextlib.contextmanager
def page(provider: str, offset: int, size: int) -> Iterator[PageRecord]:
    """A ``close_opps.page`` span around fetching and parsing one page (its request nests)."""
    record = PageRecord()
    found = _get()
    if found is None:  # pragma: no cover - depends on the installed extras
        yield record
        return
    attributes: dict[str, Any] = {
        **_base(provider),
        "close_opps.offset": offset,
        "close_opps.page_size": size,
    }
    with _current_span(found, "close_opps.page", attributes) as span:
        try:
            yield record
        finally:
            if record.records is not None:
                span.set_attribute("close_opps.records", record.records)


def retried(record: RequestRecord, provider: str, exc: BaseException) -> None:
    """Count a retry of the request (a 429 that is retried counts as rate limited)."""
    record.retries += 1
    found = _get()
    if found is not None and getattr(exc, "status", None) == 429:
        found.rate_limited.add(1, _base(provider))


@contextlib.contextmanager
def sync_span(connection: str, provider: str) -> Iterator[Any]:
    """A ``close_opps.sync`` span for one connection's run (``None`` without the API)."""
    found = _get()
    if found is None:  # pragma: no cover - depends on the installed extras
        yield None
        return
    attributes = {"close_opps.connection": connection, "close_opps.provider": provider}
    with _current_span(found, "close_opps.sync", attributes) as span:
        yield span


def synced(
    span: Any,
    connection: str,
    provider: str,
    *,
    counts: dict[str, int],
    full_resync: bool,
    lag: float | None,
) -> None:
    """Record a completed run on its span and in the metrics."""
    found = _get()
    if found is None or span is None:  # pragma: no cover - depends on the installed extras
        return
    records = counts["inserted"] + counts["updated"] + counts["unchanged"]
    span.set_attribute("close_opps.records", records)
    for name in ("inserted", "updated", "deleted"):
        span.set_attribute(f"close_opps.{name}", counts[name])
    span.set_attribute("close_opps.full_resync", full_resync)
    attributes = {"close_opps.connection": connection, "close_opps.provider": provider}
    found.records.add(records, attributes)
    if lag is not None:
        found.lag.set(lag, attributes)
