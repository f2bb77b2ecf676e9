"""The exception tree of close-opps.

Every failure the SDK raises is a :class:`CloseOppsError`:

- :class:`APIError`: the provider answered with an error. One subclass per kind of failure
  (:class:`AuthenticationError`, :class:`PermissionDeniedError`, :class:`NotFoundError`,
  :class:`InvalidRequestError`, :class:`RateLimitError`, :class:`ServerError`), each carrying the
  status, the vendor's code and message, the response headers and body, and the request id.
- :class:`TransportError`: no usable answer came back (connection refused or dropped, timeout,
  refused redirect). :class:`APITimeoutError` is the timeout case.
- :class:`ClientClosedError`: the adapter was used after ``aclose()`` (or its ``async with``).
- :class:`DecodeError`: an answer came back but does not match the vendor's contract (not JSON,
  an HTML page, a record with a missing or mistyped field).
- :class:`PaginationError`: a listing cannot continue without losing or repeating records.
  :class:`IncompleteListingError` is the case where a listing ended with fewer records than
  the provider said match.
- :class:`MassDeletionError`: a reconciliation would delete more of a copy than allowed.
- :class:`InvalidCursorError`: a change-feed cursor that cannot be read (damaged, from another
  provider, or from an unknown format version).
- :class:`WebhookSignatureError`: a webhook delivery's signature does not verify.

aiohttp's and asyncio's own exceptions never escape raw: they are the ``__cause__`` of a
:class:`TransportError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from close_opps._redact import redact, redact_data

__all__ = [
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ClientClosedError",
    "CloseOppsError",
    "DecodeError",
    "EndpointNotFoundError",
    "IncompleteListingError",
    "InvalidArgumentError",
    "InvalidCursorError",
    "InvalidRequestError",
    "MassDeletionError",
    "NotFoundError",
    "PaginationError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TransportError",
    "WebhookSignatureError",
    "error_class_for_status",
]


class CloseOppsError(Exception):
    """Root of every error close-opps raises.

    Every string an error holds (message, vendor code, request id, record id, path, headers,
    body) has the API keys in use redacted, in every form they are sent in.

    Attributes:
        provider: the provider name (``"close"``, ``"getraze"``, ...) the error came from.
    """

    def __init__(self, message: str, *, provider: str) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.provider = provider

    def __str__(self) -> str:
        return f"{self.provider}: {self.message}"


class APIError(CloseOppsError):
    """The provider answered with an error.

    Attributes:
        status: the HTTP status (a vendor that signals errors inside a 200 body keeps 200).
        code: the vendor's machine-readable error code when it sends one (``"NOT_FOUND"``,
            ``"record_not_found"``), else ``None``.
        message: the vendor's human-readable message, or a generic one.
        headers: the response headers.
        body: the decoded JSON body, or the raw text when it was not JSON, or ``None``.
        request_id: the vendor's request id header, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.status = status
        self.code = redact(code) if code is not None else None
        self.headers: Mapping[str, str] = redact_data(dict(headers or {}))
        self.body = redact_data(body)
        self.request_id = redact(request_id) if request_id is not None else None

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        request_id = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.provider}: HTTP {self.status}{code}: {self.message}{request_id}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status={self.status!r}, "
            f"code={self.code!r}, message={self.message!r})"
        )


class AuthenticationError(APIError):
    """The API key is missing, invalid or expired (HTTP 401)."""


class PermissionDeniedError(APIError):
    """The key is valid but may not do this (HTTP 403)."""


class NotFoundError(APIError):
    """The record does not exist or is not visible to this key (HTTP 404)."""


class EndpointNotFoundError(APIError):
    """A 404 that does not mean "no such record": the route itself does not exist.

    Most often the base URL is wrong (a missing ``/external/v1`` or ``/api/v1``). Not a
    :class:`NotFoundError`, so nobody takes it to mean that a record was deleted.
    """


class InvalidRequestError(APIError):
    """The provider rejected the request's parameters (HTTP 400, 409, 422).

    Attributes:
        field_errors: the vendor's per-field messages, ``{"field": "message"}``, when sent.
        max_page_size: the largest page the server serves, when the error names it.
        offset_too_large: the request's offset (Close's ``_skip``) is past what the server
            serves.
        max_offset: the largest offset the server serves, when the error names it.
        cursor_invalid: the request's cursor is invalid or expired.
    """

    def __init__(
        self,
        message: str,
        *,
        field_errors: Mapping[str, str] | None = None,
        max_page_size: int | None = None,
        offset_too_large: bool = False,
        max_offset: int | None = None,
        cursor_invalid: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.field_errors: Mapping[str, str] = redact_data(dict(field_errors or {}))
        self.max_page_size = max_page_size
        self.offset_too_large = offset_too_large
        self.max_offset = max_offset
        self.cursor_invalid = cursor_invalid


class RateLimitError(APIError):
    """The provider throttled the request (HTTP 429).

    Raised once retries are exhausted, or at once when the wait the server asks for is longer
    than the adapter's ``max_retry_wait``.

    Attributes:
        retry_after: seconds the server asked to wait, when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIError):
    """The provider failed (HTTP 5xx).

    Attributes:
        retry_after: seconds the server asked to wait (``Retry-After`` on a 503), when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TransportError(CloseOppsError):
    """No usable HTTP answer: connection refused or dropped, TLS failure, refused redirect."""


class APITimeoutError(TransportError):
    """The request did not complete within the adapter's timeout."""


class ClientClosedError(CloseOppsError):
    """The adapter (or the HTTP session it was given) is closed, or belongs to an event loop
    that has ended. Never retried: create a new adapter."""


class DecodeError(CloseOppsError):
    """A response does not match the vendor's contract.

    Attributes:
        record_id: the id of the record that failed, when known.
        path: the path of the offending field (``"data[2].date_updated"``), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        record_id: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.record_id = redact(record_id) if record_id is not None else None
        self.path = redact(path) if path is not None else None

    def __str__(self) -> str:
        record = f" record {self.record_id!r}" if self.record_id else ""
        path = f" at {self.path}" if self.path else ""
        where = f"{self.provider}:{record}{path}" if record or path else self.provider
        return f"{where}: {self.message}"


class PaginationError(CloseOppsError):
    """A listing cannot go on without losing or repeating records."""


class IncompleteListingError(PaginationError):
    """A listing ended with fewer distinct records than the provider said match.

    Raised after every record found was yielded, and after the re-reads meant to find the rest.

    Attributes:
        expected: how many records the provider said match.
        received: how many distinct records the listing yielded.
    """

    def __init__(self, message: str, *, provider: str, expected: int, received: int) -> None:
        super().__init__(message, provider=provider)
        self.expected = expected
        self.received = received


class MassDeletionError(CloseOppsError):
    """A reconciliation would delete more of a copy than the caller allowed.

    Attributes:
        would_delete: how many known records would be deleted.
        known: how many records were known before.
    """

    def __init__(self, message: str, *, provider: str, would_delete: int, known: int) -> None:
        super().__init__(message, provider=provider)
        self.would_delete = would_delete
        self.known = known


class InvalidCursorError(CloseOppsError, ValueError):
    """A change-feed cursor (``changes(since=...)``) that cannot be used.

    It is damaged (not a cursor this SDK wrote), was issued by another provider's feed, or
    has a format version this release cannot read. Also a :class:`ValueError`: it is raised
    when ``changes()`` is called, before any request.
    """


class InvalidArgumentError(CloseOppsError, ValueError):
    """An argument the provider cannot take (a malformed id), refused before any request.

    Also a :class:`ValueError`, like every other invalid argument.
    """


class WebhookSignatureError(CloseOppsError):
    """A webhook delivery's signature is missing, wrong or outside the allowed time window."""


_CLASS_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def error_class_for_status(status: int) -> type[APIError]:
    """The :class:`APIError` subclass for an HTTP status (``APIError`` itself when none fits)."""
    if status in _CLASS_BY_STATUS:
        return _CLASS_BY_STATUS[status]
    if status >= 500:
        return ServerError
    return APIError
