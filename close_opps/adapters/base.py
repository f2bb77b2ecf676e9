"""The adapter contract every provider satisfies.

A provider is one module: a :class:`~close_opps.http.Dialect` (how its HTTP speaks: auth,
error bodies, the limits its errors name), vendor record classes with a mapping to
:class:`~close_opps.Opportunity`, a :class:`~close_opps.paging.PagingPolicy` (a pure request
builder and page parser), and a :class:`BaseAdapter` subclass implementing
:meth:`BaseAdapter.get` and :meth:`BaseAdapter.paging_policy`. Everything else (constructor
options, validation of list arguments, the pager, ``limit``, item-by-item iteration, context
management, redaction) lives here once.
"""

from __future__ import annotations

import abc
import inspect
import os
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from contextlib import aclosing
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, ParamSpec, Self, TypeVar

import aiohttp
import attrs

from close_opps._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMEOUT,
)
from close_opps._redact import get_logger
from close_opps.changes import Change
from close_opps.errors import NotFoundError
from close_opps.feed import DEFAULT_MAX_DELETION_SHARE, ChangeFeed, Clock, FeedRun, decode_cursor
from close_opps.http import Dialect, RateLimit, Request, Response, Secret, Transport
from close_opps.model import Opportunity, OpportunityStatus
from close_opps.paging import Page, Pager, PagingPolicy

__all__ = ["BaseAdapter", "ListQuery", "Page", "StatusArg", "api_key_env"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

logger = get_logger("close_opps.adapters")

#: What ``status=`` accepts: one status (or its value, ``"won"``) or several.
StatusArg = OpportunityStatus | str | Iterable[OpportunityStatus | str] | None


def api_key_env(provider: str) -> str:
    """The environment variable an adapter reads its key from: ``CLOSE_API_KEY`` for
    ``close``, ``ACME_CRM_API_KEY`` for ``acme-crm``."""
    return re.sub(r"[^A-Z0-9]", "_", provider.upper()) + "_API_KEY"


def _aware_or_none(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise ValueError(
            f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=UTC)); got {value!r}"
        )
    return value


def _statuses(status: StatusArg) -> frozenset[OpportunityStatus] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, (str, OpportunityStatus)) else list(status)
    try:
        result = frozenset(OpportunityStatus(s) for s in items)
    except ValueError:
        allowed = ", ".join(s.value for s in OpportunityStatus)
        raise ValueError(f"status must be one of {allowed}; got {status!r}") from None
    if not result:
        raise ValueError("status must name at least one status")
    return result


@attrs.frozen(kw_only=True)
class ListQuery:
    """The arguments of one ``list()``/``pages()`` call, validated once for every adapter.

    Datetime bounds are timezone-aware; ``*_since`` bounds are inclusive and ``*_before``
    bounds exclusive. ``statuses`` is ``None`` for "any status".
    """

    updated_since: datetime | None = None
    updated_before: datetime | None = None
    created_since: datetime | None = None
    created_before: datetime | None = None
    statuses: frozenset[OpportunityStatus] | None = None
    limit: int | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    order_by: str | None = None
    query: str | None = None
    filters: Mapping[str, Any] = attrs.field(factory=dict)

    def matches(self, opportunity: Opportunity) -> bool:
        """Whether a record satisfies the query's bounds and statuses.

        For adapters that must filter locally what their API cannot filter.
        """
        if self.statuses is not None and opportunity.status not in self.statuses:
            return False
        if self.updated_since is not None and opportunity.updated_at < self.updated_since:
            return False
        if self.updated_before is not None and opportunity.updated_at >= self.updated_before:
            return False
        if self.created_since is not None and opportunity.created_at < self.created_since:
            return False
        return not (
            self.created_before is not None and opportunity.created_at >= self.created_before
        )


def _list_query(
    adapter: BaseAdapter,
    *,
    updated_since: datetime | None = None,
    updated_before: datetime | None = None,
    created_since: datetime | None = None,
    created_before: datetime | None = None,
    status: StatusArg = None,
    limit: int | None = None,
    page_size: int | None = None,
    order_by: str | None = None,
    query: str | None = None,
    **filters: Any,
) -> ListQuery:
    """The arguments of every listing (``list()``, ``pages()``, ``list_query()``), defined
    once: this function checks them and is the signature those methods show."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    for name, text in (("order_by", order_by), ("query", query)):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    adapter.check_filters(filters)
    return ListQuery(
        updated_since=_aware_or_none("updated_since", updated_since),
        updated_before=_aware_or_none("updated_before", updated_before),
        created_since=_aware_or_none("created_since", created_since),
        created_before=_aware_or_none("created_before", created_before),
        statuses=_statuses(status),
        limit=limit,
        page_size=adapter._page_size if page_size is None else adapter._check_page_size(page_size),
        order_by=order_by,
        query=query,
        filters=dict(filters),
    )


def _with_signature(reference: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give a method taking ``**arguments`` the typed signature of ``reference`` (for type
    checkers and ``help()``), so the list arguments are written once."""

    def decorate(fn: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(fn).return_annotation
        fn.__signature__ = inspect.signature(reference).replace(  # type: ignore[attr-defined]
            return_annotation=returns
        )
        return fn

    return decorate


class BaseAdapter(abc.ABC):
    """One CRM's opportunities behind the common async interface.

    Use as an async context manager (or call :meth:`aclose`)::

        async with CloseAdapter(api_key) as close:
            opp = await close.get("oppo_...")
            async for opp in close.list(updated_since=since, status="won"):
                ...

    Args:
        api_key: the provider's API key. Never shown in ``repr``, logs or errors. Default:
            the ``<PROVIDER>_API_KEY`` environment variable (``CLOSE_API_KEY``, ...).
        base_url: the API's root; ``https`` only, except for a loopback host.
        session: an :class:`aiohttp.ClientSession` to use (left open); by default the adapter
            creates one and closes it on exit.
        timeout: seconds one HTTP request may take in all.
        max_retries: retries of a failed read (429, 5xx, connection errors, timeouts);
            ``0`` turns retries off.
        max_retry_wait: a server-requested wait longer than this many seconds is not slept:
            :class:`~close_opps.RateLimitError` is raised at once, with ``retry_after``.
        page_size: records per page when ``list()`` is not told otherwise.
        concurrency: pages fetched at once when the provider tells the total up front.
        proxy: an ``http(s)://`` proxy for every request. By default the adapter's own
            session follows ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (not for a loopback
            host); a ``session`` you pass keeps its own settings.
        user_agent: your application's product token (``"acme-sync/2.1"``), appended to
            the ``User-Agent`` header. A ``User-Agent`` set on your ``session`` is kept.

    Raises:
        ValueError: no ``api_key`` and no ``<PROVIDER>_API_KEY`` variable (the message
            names it), or an invalid option.
    """

    #: The provider's name, as in :attr:`Opportunity.provider`.
    provider: ClassVar[str]
    #: The production API root.
    default_base_url: ClassVar[str]
    #: How the provider's HTTP speaks.
    dialect_class: ClassVar[type[Dialect]]
    #: The largest page the provider serves, when known up front.
    max_page_size: ClassVar[int | None] = None
    #: The ``order_by`` that lists oldest created first (``None``: the default order does).
    creation_order: ClassVar[str | None] = None
    #: Filter names the adapter sets itself (refused in ``**filters``).
    reserved_filters: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        page_size: int = DEFAULT_PAGE_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        proxy: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        #: The largest page the server named when refusing a larger one (see
        #: :meth:`_learn_max_page_size`); it holds for the adapter's lifetime.
        self._learned_max_page_size: int | None = None
        #: The largest offset the server serves, once an error has named it.
        self._max_offset: int | None = None
        self._page_size = self._check_page_size(page_size)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        #: The settings a :meth:`clone` is made with (never a session: it belongs to a loop).
        self._settings: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": max_retries,
            "max_retry_wait": max_retry_wait,
            "page_size": page_size,
            "concurrency": concurrency,
            "proxy": proxy,
            "user_agent": user_agent,
        }
        self._transport = Transport(
            dialect=self.dialect_class(),
            base_url=base_url or self.default_base_url,
            api_key=Secret(self._api_key_or_env(api_key)),
            session=session,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            proxy=proxy,
            user_agent=user_agent,
            max_in_flight=concurrency,
        )

    def clone(self) -> Self:
        """A new adapter with the same key and settings, not yet opened.

        An adapter belongs to the event loop it first ran in and never reopens once closed;
        code that runs each job in a loop of its own (a dlt pipeline, a worker) uses a clone
        per job. A ``session`` given to this adapter is not shared with the clone.
        """
        return type(self)(self._transport.api_key.reveal(), **self._settings)

    @classmethod
    def _api_key_or_env(cls, api_key: str | None) -> str:
        if api_key is not None:
            return api_key
        variable = api_key_env(cls.provider)
        key = os.environ.get(variable, "")
        if not key.strip():
            raise ValueError(
                f"{cls.provider}: no API key: pass api_key=... or set the {variable} "
                "environment variable"
            )
        return key

    # ------------------------------------------------------------------ the common interface

    @property
    def base_url(self) -> str:
        """The API root this adapter talks to."""
        return self._transport.base_url

    @property
    def rate_limit(self) -> RateLimit | None:
        """The latest rate-limit figures the provider sent (``None`` before any response)."""
        return self._transport.rate_limit

    @abc.abstractmethod
    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        """One opportunity by its id.

        Args:
            opportunity_id: the provider's id; sent as one percent-encoded path segment.
            fields: vendor field names to ask for, when the provider can restrict them (the
                fields the mapping needs are always added).

        Raises:
            NotFoundError: no such record for this key.
        """

    def paging_policy(self, query: ListQuery) -> PagingPolicy:
        """The vendor's paging for one validated listing (for implementations).

        The core's :class:`~close_opps.paging.Pager` runs it: an adapter implements this (a
        pure request builder and page parser), not the page loop.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement paging_policy()")

    def _pages(self, query: ListQuery) -> AsyncGenerator[Page, None]:
        """The pages of a validated listing, honouring ``query.limit``."""
        return Pager(self, self.paging_policy(query), query).pages()

    @_with_signature(_list_query)
    def pages(self, **arguments: Any) -> AsyncGenerator[Page, None]:
        """The listing page by page, for callers who want totals and aggregates.

        Takes the same arguments as :meth:`list` (checked at the call, before any request).
        """
        return self._limited(self.list_query(**arguments))

    def changes(
        self,
        since: str | None = None,
        *,
        max_deletion_share: float = DEFAULT_MAX_DELETION_SHARE,
        allow_mass_deletion: bool = False,
        clock: Clock | None = None,
    ) -> ChangeFeed:
        """The changes since a cursor: every upsert and delete, at least once.

        ``since=None`` delivers every current record as an upsert. Iterate the returned
        :class:`~close_opps.feed.ChangeFeed` to its end, then keep its ``cursor`` for the next
        call. A consumer that applies the changes in order (an upsert replaces, a delete
        removes) ends with the provider's state; a change delivered twice does no harm. See
        ``docs/changes.md`` for what each provider can tell and what a run costs.

        Args:
            since: the ``cursor`` of an earlier feed of this provider, or ``None``.
            max_deletion_share: a reconciliation that would delete more than this share of
                the records the cursor knows raises instead (default half).
            allow_mass_deletion: turn that guard off (the deletions are expected).
            clock: the current moment (default: the system clock, UTC); feeds that read a
                change log compare it with the cursor's checkpoint.

        Raises:
            InvalidCursorError: ``since`` is not a cursor of this provider's feed (at once,
                before any request).
            ValueError: ``max_deletion_share`` is not between 0 and 1.

        Iterating raises what ``list()`` raises, and :class:`~close_opps.MassDeletionError`
        before any delete when the guard trips.
        """
        state = decode_cursor(since, provider=self.provider) if since is not None else None
        run = FeedRun(
            provider=self.provider,
            since=state,
            clock=clock,
            max_deletion_share=max_deletion_share,
            allow_mass_deletion=allow_mass_deletion,
        )
        return ChangeFeed(run, self._change_stream)

    async def _change_stream(self, run: FeedRun) -> AsyncGenerator[Change, None]:
        """The changes of one feed run (for implementations; the default reconciles).

        Reconciliation lists every current record (ordered by creation, so that edits made
        meanwhile move nothing), upserts the new and changed ones (every one on a first run)
        and deletes the known ids no longer listed. A provider with a change log overrides
        this, and may call ``run.reconcile`` as its fallback.
        """
        stream = (
            run.initial(self._created_from)
            if run.first_run
            else run.reconcile(
                self.list(),
                upsert_all=False,
                confirm=self._get_or_none,
                concurrency=self.concurrency,
            )
        )
        async with aclosing(stream) as changes:
            async for change in changes:
                yield change

    async def _get_or_none(self, opportunity_id: str) -> Opportunity | None:
        """The record, or ``None`` when the provider says there is no such record."""
        try:
            return await self.get(opportunity_id)
        except NotFoundError:
            return None

    def _created_from(self, after: datetime | None) -> AsyncGenerator[Opportunity, None]:
        """Every current record, oldest created first, from ``after`` (inclusive)."""
        return self.list(created_since=after, order_by=self.creation_order)

    async def aclose(self) -> None:
        """Release the HTTP session if the adapter created it."""
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key='***')"

    # ------------------------------------------------------------------- for implementations

    async def _limited(self, query: ListQuery) -> AsyncGenerator[Page, None]:
        """The adapter's pages, cut at ``query.limit`` records (the last page trimmed)."""
        remaining = query.limit
        if remaining == 0:
            return
        async with aclosing(self._pages(query)) as pages:
            async for page in pages:
                if remaining is None:
                    yield page
                    continue
                if len(page.items) >= remaining:
                    yield attrs.evolve(page, items=page.items[:remaining])
                    return
                remaining -= len(page.items)
                yield page

    async def _items(self, query: ListQuery) -> AsyncGenerator[Opportunity, None]:
        async with aclosing(self._limited(query)) as pages:
            async for page in pages:
                for item in page.items:
                    yield item

    async def _send(self, request: Request) -> Response:
        """Send a request through the adapter's transport (for implementations)."""
        return await self._transport.send(request)

    def _check_page_size(self, page_size: int) -> int:
        """``page_size`` validated and capped at the provider's known maximum."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive integer, got {page_size!r}")
        for maximum in (self.max_page_size, self._learned_max_page_size):
            if maximum is not None:
                page_size = min(page_size, maximum)
        return page_size

    def _learn_max_page_size(self, refused: int, maximum: int) -> None:
        """Remember the largest page the server named when it refused ``refused`` records."""
        logger.info(
            "%s: a page of %d is over the server's maximum, using %d",
            self.provider,
            refused,
            maximum,
        )
        self._learned_max_page_size = maximum

    def check_filters(self, filters: Mapping[str, Any]) -> None:
        """Refuse vendor filters that cannot be honoured (for implementations).

        The default refuses :attr:`reserved_filters`; a provider adds its own rules (a
        filter its server ignores, a value it cannot take). Raise :class:`ValueError`.
        """
        for key in filters:
            if key in self.reserved_filters:
                raise ValueError(
                    f"{key} is managed by the adapter; use list()'s own arguments "
                    "(limit, page_size, order_by, ...) instead"
                )

    @_with_signature(_list_query)
    def list_query(self, **arguments: Any) -> ListQuery:
        """The listing these arguments describe, every argument checked (before any request).

        Raises:
            ValueError: an argument is invalid (a naive datetime, an unknown status, a
                filter the adapter manages or cannot honour).
            TypeError: an argument has the wrong type.
        """
        return _list_query(self, **arguments)

    # ------------------------------------------------------------------------- list, last
    # (defined last so that ``list`` in annotations above still means the builtin)

    @_with_signature(_list_query)
    def list(self, **arguments: Any) -> AsyncGenerator[Opportunity, None]:
        """Every matching opportunity, exactly once, fetched page by page.

        Args:
            updated_since: only records updated at or after this moment (inclusive), filtered
                by the server where the API allows.
            updated_before: only records updated before this moment (exclusive).
            created_since: only records created at or after this moment (inclusive).
            created_before: only records created before this moment (exclusive).
            status: an :class:`OpportunityStatus` (or ``"open"``, ``"won"``, ``"lost"``), or
                several.
            limit: stop after this many records, fetching no page more than needed.
            page_size: records per request (capped at the provider's maximum).
            order_by: the provider's own sort key (see the provider's docs page).
            query: the provider's free-text search, where it has one.
            **filters: any other filter of the provider's list endpoint, by its own name.

        Every argument is checked at the call, before any request. Iterating then raises:

        Raises:
            ValueError: an argument is invalid (a naive datetime, an unknown status, a
                filter the adapter manages or cannot honour).
            IncompleteListingError: the listing ended with fewer records than the provider
                said match (after yielding every record it found, and re-reading).
            PaginationError: the listing cannot go on without losing or repeating records
                (the server does not honour paging).
            AuthenticationError, PermissionDeniedError, InvalidRequestError,
                RateLimitError, ServerError, EndpointNotFoundError: the provider answered
                with an error (after retries, for the retryable ones).
            TransportError: no usable answer (connection failures, timeouts), after retries.
            DecodeError: an answer does not match the vendor's contract.
        """
        return self._items(self.list_query(**arguments))
