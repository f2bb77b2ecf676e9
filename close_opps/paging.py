"""The one pager: every provider's listing, with nothing lost in silence.

A provider supplies a :class:`PagingPolicy` for each listing: how to ask for a page (a pure
request builder), how to read one (a pure page parser), and what it knows of its order. The
:class:`Pager` does the rest, once for every provider:

- bounded concurrent prefetch once the total is known, pages yielded in order;
- repeats dropped (a record is yielded once per listing), local filtering, ``limit``;
- learning the largest page size and offset from the limits a server names in its errors,
  and getting past a maximum offset by moving the window's bound on the sort key;
- completeness accounting: a listing never ends normally with fewer records than the
  server said match (:class:`~close_opps.IncompleteListingError`), and one that makes no
  progress stops (:class:`~close_opps.PaginationError`).

Ties. A server that sorts on a key with no tie-breaker and pages by offset can return the
records that share a key in a new order on every request, so one read of every page misses
some of them. When the records are in the policy's order, the records of one key occupy the
same positions in every answer; a key found at the end of one page and the start of the
next spans that boundary, and the count of its records on those pages is the size of its
group. The pager re-reads the pages around each such group (at the largest page size) until
it has seen every member, within a budget of requests; what it still cannot find is reported
by :class:`~close_opps.IncompleteListingError` once the listing has yielded everything else.
"""

from __future__ import annotations

import abc
import asyncio
import math
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import attrs

from close_opps import telemetry
from close_opps._constants import (
    FULL_REREADS,
    NO_PROGRESS_PAGES,
    NO_PROGRESS_RECORDS,
    OFFLOAD_BYTES,
    REREAD_BUDGET_FACTOR,
    REREAD_BUDGET_MIN,
)
from close_opps._redact import get_logger
from close_opps._tasks import fetch_in_order
from close_opps.errors import IncompleteListingError, InvalidRequestError, PaginationError
from close_opps.http import Request, Response
from close_opps.model import Opportunity

if TYPE_CHECKING:
    from close_opps.adapters.base import BaseAdapter, ListQuery

__all__ = ["Page", "PageRequest", "Pager", "PagingPolicy", "ParsedPage"]

logger = get_logger("close_opps.paging")


@attrs.frozen(kw_only=True)
class Page:
    """One page of a listing, as ``pages()`` yields it.

    Attributes:
        items: the page's records, in the order the provider sent them (after removing any
            record already yielded by an earlier page of the same listing, and any the
            adapter filters locally).
        total: how many records match the query in all, when the provider says (``None``
            when the adapter filters locally, since the server's count is then not the
            listing's).
        has_more: whether the provider has more pages after this one.
        meta: everything else the page's body said (Close's ``total_results`` and value
            aggregates, Getraze's ``pagination``, ...), as received.
    """

    items: tuple[Opportunity, ...]
    total: int | None = None
    has_more: bool = False
    meta: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    def __iter__(self) -> Iterator[Opportunity]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@attrs.frozen(kw_only=True)
class PageRequest:
    """Which page of a listing to fetch.

    Attributes:
        offset: records before this page in the window's order (``_skip``; a page-number API
            asks for page ``offset // size + 1``, and the pager keeps offsets aligned).
        size: records per page.
        cursor: the cursor of a cursor-paged API (``None`` for its first page).
        bound: ``None`` for the listing's first window; after a move past the server's
            maximum offset, the sort key the new window starts at (inclusive).
    """

    offset: int = 0
    size: int
    cursor: str | None = None
    bound: Any = None


@attrs.frozen(kw_only=True)
class ParsedPage:
    """One page as a vendor's parser read it.

    Attributes:
        records: the page's records, in the order the server sent them.
        total: how many records the query matches in all, when the server says.
        has_more: whether the server has pages after this one.
        next_cursor: the cursor of the next page (cursor-paged APIs).
        meta: everything else the body said, for :attr:`Page.meta`.
    """

    records: Sequence[Opportunity]
    has_more: bool
    total: int | None = None
    next_cursor: str | None = None
    meta: Mapping[str, Any] = attrs.field(factory=dict)


class PagingPolicy(abc.ABC):
    """One vendor's paging for one listing: a pure request builder and a pure page parser.

    Subclass it in an adapter and return it from ``BaseAdapter._paging``. Only
    :meth:`request` and :meth:`parse` are required; the rest describes what the vendor knows
    about its order, so that the pager can check completeness.
    """

    #: ``True``: pages are addressed by offset (``_skip`` or page numbers), so once the total
    #: is known the pager fetches several at once. ``False``: each page names the next
    #: (``next_cursor``), one page after the other.
    random_access: bool = True
    #: Offsets must be multiples of the page size (page-number APIs).
    aligned_offsets: bool = False
    #: The sort is descending on :meth:`sort_key`.
    descending: bool = False
    #: Whether :meth:`matches` may drop records the server sent (a filter the server does not
    #: apply). When ``True`` the server's total is not the listing's.
    filters_locally: bool = False
    #: Whether :meth:`past_end` may end the listing before the server's last page.
    may_end_early: bool = False
    #: Whether a listing stopped by the server's maximum offset can go on from the last sort
    #: key seen (needs :meth:`sort_key` and a ``bound`` understood by :meth:`request`).
    can_move_window: bool = False

    @abc.abstractmethod
    def request(self, page: PageRequest) -> Request:
        """The HTTP request for ``page``."""

    @abc.abstractmethod
    def parse(self, response: Response, page: PageRequest) -> ParsedPage:
        """Read one page (pure; may run in a worker thread).

        Raises:
            DecodeError: the body does not match the vendor's contract.
            PaginationError: the server did not honour the page asked for.
        """

    #: The record field the server sorts the listing by (``"created_at"`` or
    #: ``"updated_at"``), or ``None`` when the order is another or unknown.
    sort_by: str | None = None

    def sort_key(self, record: Opportunity) -> Any:
        """The value the server sorts the listing by (by default the :attr:`sort_by` field of
        the record), or ``None`` when the order is unknown (then ties cannot be accounted
        for, and a window cannot move)."""
        return getattr(record, self.sort_by) if self.sort_by is not None else None

    def matches(self, record: Opportunity) -> bool:
        """Whether a record the server sent belongs in the listing (local filters)."""
        return True

    def past_end(self, record: Opportunity) -> bool:
        """Whether the listing, read in order, has gone past its last record."""
        return False

    def end_key(self) -> Any:
        """The sort key where :meth:`past_end` begins, when known: the pager then guesses
        from the pace of keys so far how many pages are left, and prefetches no more."""
        return None


def _distance(a: Any, b: Any) -> float | None:
    """``|a - b|`` for datetimes (in seconds) and numbers; ``None`` for other keys."""
    try:
        difference = a - b
    except TypeError:
        return None
    if hasattr(difference, "total_seconds"):
        return abs(float(difference.total_seconds()))
    return abs(float(difference)) if isinstance(difference, (int, float)) else None


class _OffsetLimitReached(Exception):
    """The next page of a window is past the server's maximum offset."""


@attrs.define
class _Run:
    """The records at one end of a page that share one sort key."""

    key: Any
    ids: list[str]


@attrs.define
class _PageEdges:
    """What tie accounting needs of one page of a window's first pass."""

    offset: int
    count: int
    head: _Run
    tail: _Run


@attrs.define
class _TieGroup:
    """Records sharing one sort key across page boundaries: positions ``[start, start+size)``."""

    key: Any
    start: int
    size: int
    found: set[str]


class Pager:
    """Runs one listing of ``adapter`` with ``policy``: see the module's description."""

    def __init__(self, adapter: BaseAdapter, policy: PagingPolicy, query: ListQuery) -> None:
        self._adapter = adapter
        self._policy = policy
        self._query = query
        self._provider = adapter.provider
        self._pages_fetched = 0
        self._seen: set[str] = set()
        self._remaining = query.limit
        self._in_order = True
        self._first_key: Any = None
        self._last_key: Any = None
        self._in_order_count = 0
        self._ids_at_last_key: set[str] = set()
        self._reached_end = False
        self._quiet_pages = 0
        self._unaccounted = 0
        self._expected: int | None = None
        self._carried = 0
        self._window_total: int | None = None
        self._total_changed = False

    # ------------------------------------------------------------------------------ driving

    async def pages(self) -> AsyncGenerator[Page, None]:
        """The listing's pages, each with the records not yielded before."""
        if self._remaining == 0:
            return
        span = telemetry.ListingSpan(self._provider)  # from the first step, not the call
        error: Exception | None = None
        try:
            async with aclosing(self._passes()) as pages:
                async for page in pages:
                    yield page
        except Exception as exc:  # leaving early (GeneratorExit) or cancelling is no error
            error = exc
            raise
        finally:
            span.end(records=len(self._seen), pages=self._pages_fetched, error=error)

    async def _passes(self) -> AsyncGenerator[Page, None]:
        passes = 0
        while True:
            self._expected = None
            self._unaccounted = 0
            self._carried = 0
            self._window_total = None
            self._total_changed = False
            # A new pass starts from the first record again: the order check starts over
            # (whether the server honours the order, once found out, stays known).
            self._first_key = self._last_key = None
            self._in_order_count = 0
            self._ids_at_last_key = set()
            self._quiet_pages = 0
            run = self._offset_pass() if self._policy.random_access else self._cursor_pass()
            async with aclosing(run) as pages:
                async for page in pages:
                    yield page
                    if self._done:
                        return
            if self._done:
                return  # ended by ``limit``: nothing to account for
            if self._ended:
                # Ended at the bound, before the server's last page: its total is not ours.
                self._raise_if_missing(self._unaccounted)
                return
            missing = self._missing()
            if (missing <= 0 and not self._total_changed) or passes >= FULL_REREADS:
                self._raise_if_missing(missing)
                return
            passes += 1
            if missing > 0:
                logger.warning(
                    "%s: the listing found %d records of the %d the server said match; "
                    "reading it again to find the rest",
                    self._provider,
                    len(self._seen),
                    self._expected,
                )
            else:
                # Records were deleted or created meanwhile: offset pages may have shifted
                # past a record. One more pass finds it (only new records are yielded).
                logger.info(
                    "%s: the server's total changed during the listing; reading it again so "
                    "that no record shifted between pages is missed",
                    self._provider,
                )

    @property
    def _ended(self) -> bool:
        """The listing, read in order, went past its end (and the order held)."""
        return self._reached_end and self._in_order

    @property
    def _done(self) -> bool:
        return self._remaining is not None and self._remaining <= 0

    def _missing(self) -> int:
        """Records the server has that the listing did not yield: by the server's total
        when it gives one (the truth, even when records moved between pages), else by the
        tie groups that re-reading could not complete."""
        if self._expected is None:
            return self._unaccounted
        return max(0, self._expected - len(self._seen))

    def _raise_if_missing(self, missing: int) -> None:
        if missing <= 0:
            return
        received = len(self._seen)
        raise IncompleteListingError(
            f"the server said {received + missing} records match but the listing could "
            f"account for only {received}, after re-reading; records may share a sort key "
            "that the server orders inconsistently between requests",
            provider=self._provider,
            expected=received + missing,
            received=received,
        )

    # ----------------------------------------------------------------------- offset paging

    async def _offset_pass(self) -> AsyncGenerator[Page, None]:
        bound: Any = None
        while True:
            window_start = len(self._seen)
            self._window_total = None
            edges: list[_PageEdges] = []
            size = self._adapter._check_page_size(self._query.page_size)
            if self._remaining is not None and not self._policy.filters_locally:
                size = min(size, self._remaining + len(self._ids_at_last_key))
            reached_offset_limit = False
            try:
                async with aclosing(self._window(bound, size, edges)) as pages:
                    async for page in pages:
                        yield page
                        if self._done:
                            return
            except _OffsetLimitReached:
                reached_offset_limit = True
            async with aclosing(self._reread_ties(bound, size, edges)) as pages:
                async for page in pages:
                    yield page
                    if self._done:
                        return
            if not reached_offset_limit:
                return
            bound = self._move_window(bound, progressed=len(self._seen) > window_start)
            # The new window's total counts the records from its bound on.
            self._carried = len(self._seen) - len(self._ids_at_last_key)

    def _move_window(self, bound: Any, *, progressed: bool) -> Any:
        policy = self._policy
        limit = self._adapter._max_offset
        if not policy.can_move_window or self._last_key is None:
            raise PaginationError(
                f"the listing reached the server's maximum offset ({limit}) and cannot go on "
                "in this order; narrow the query or use the default order",
                provider=self._provider,
            )
        if not self._in_order:
            raise PaginationError(
                "the listing reached the server's maximum offset but the server did not "
                "honour the sort order, so it cannot resume without losing records",
                provider=self._provider,
            )
        if self._last_key == bound and not progressed:
            raise PaginationError(
                f"more records share the sort key {self._last_key} than the server's maximum "
                f"offset ({limit}) lets one listing reach; narrow the query",
                provider=self._provider,
            )
        logger.info(
            "%s: reached the maximum offset; resuming from the sort key %s",
            self._provider,
            self._last_key,
        )
        return self._last_key

    async def _window(
        self, bound: Any, size: int, edges: list[_PageEdges]
    ) -> AsyncGenerator[Page, None]:
        """The pages of one window (one bound), offsets growing from 0."""
        first, size = await self._first_page(PageRequest(offset=0, size=size, bound=bound))
        last = first
        yield self._take(first, 0, edges)
        offset = size
        ramp = 1
        while last.has_more and not self._ended and not self._done:
            max_offset = self._adapter._max_offset
            if max_offset is not None and offset > max_offset:
                raise _OffsetLimitReached
            total = last.total
            if total is None or offset >= total:
                # No total, or it grew: each page must be seen before asking for the next.
                last = await self._fetch_checked(PageRequest(offset=offset, size=size, bound=bound))
                yield self._take(last, offset, edges)
                offset += size
                continue
            end = total
            if max_offset is not None:
                end = min(end, max_offset + 1)
            if self._remaining is not None and not self._policy.filters_locally:
                end = min(end, offset + math.ceil(self._remaining / size) * size)
            offsets = range(offset, end, size)
            if self._policy.may_end_early or (
                self._remaining is not None and self._policy.filters_locally
            ):
                # The listing may end at any page: fetch a few ahead, in rounds of 1, 2, 4, ...
                # and no more than the pace of sort keys so far says the end is away.
                count = min(ramp, self._adapter.concurrency)
                guess = self._pages_to_end(size)
                offsets = offsets[: min(count, guess) if guess is not None else count]
                ramp *= 2
            fetches = (
                (lambda o=o: self._fetch_checked(PageRequest(offset=o, size=size, bound=bound)))
                for o in offsets
            )
            async with aclosing(
                fetch_in_order(fetches, concurrency=self._adapter.concurrency)
            ) as stream:
                index = 0
                async for last in stream:
                    yield self._take(last, offsets[index], edges)
                    index += 1
                    if not last.has_more or self._ended or self._done:
                        break
            offset = offsets[index - 1] + size

    async def _first_page(self, page: PageRequest) -> tuple[ParsedPage, int]:
        """A window's first page, learning the server's maximum page size if it names one."""
        while True:
            try:
                return await self._fetch(page), page.size
            except InvalidRequestError as exc:
                maximum = exc.max_page_size
                if maximum is None or maximum >= page.size:
                    raise
                self._adapter._learn_max_page_size(page.size, maximum)
                page = attrs.evolve(page, size=maximum)

    async def _fetch_checked(self, page: PageRequest) -> ParsedPage:
        """A page past the first, noting a maximum offset the server names."""
        try:
            return await self._fetch(page)
        except InvalidRequestError as exc:
            if not exc.offset_too_large:
                raise
            if exc.max_offset is not None:
                self._adapter._max_offset = exc.max_offset
            raise _OffsetLimitReached from exc

    async def _fetch(self, page: PageRequest) -> ParsedPage:
        self._pages_fetched += 1
        with telemetry.page(self._provider, page.offset, page.size) as seen:
            response = await self._adapter._send(self._policy.request(page))
            if response.size > OFFLOAD_BYTES:  # decode big pages off the event loop
                parsed = await asyncio.to_thread(self._policy.parse, response, page)
            else:
                parsed = self._policy.parse(response, page)
            seen.records = len(parsed.records)
            return parsed

    # ---------------------------------------------------------------------- cursor paging

    async def _cursor_pass(self) -> AsyncGenerator[Page, None]:
        size = self._adapter._check_page_size(self._query.page_size)
        if self._remaining is not None:
            size = min(size, self._remaining)
        cursor: str | None = None
        cursors: set[str] = set()
        restarted = False
        count = 0
        while True:
            request = PageRequest(offset=count, size=size, cursor=cursor)
            try:
                parsed = await self._fetch(request)
            except InvalidRequestError as exc:
                if cursor is None and exc.max_page_size is not None and exc.max_page_size < size:
                    self._adapter._learn_max_page_size(size, exc.max_page_size)
                    size = exc.max_page_size
                    continue
                if cursor is None or not exc.cursor_invalid:
                    raise
                if restarted:
                    raise PaginationError(
                        "the server rejected a cursor again after the listing was restarted "
                        f"from its first page ({exc}); giving up rather than looping",
                        provider=self._provider,
                    ) from exc
                logger.warning(
                    "%s: the server rejected the cursor (%s); restarting the listing from its "
                    "first page, skipping the %d records already yielded",
                    self._provider,
                    exc,
                    len(self._seen),
                )
                restarted, cursor, count = True, None, 0
                cursors.clear()
                continue
            count += len(parsed.records)
            page = self._take(parsed, request.offset, None)
            if page.items or not parsed.next_cursor:
                yield page
            if not parsed.next_cursor or self._done or self._ended:
                return
            if parsed.next_cursor in cursors:
                raise PaginationError(
                    "the server sent a cursor it had already sent in this listing; stopping "
                    "rather than looping",
                    provider=self._provider,
                )
            cursors.add(parsed.next_cursor)
            cursor = parsed.next_cursor

    # ----------------------------------------------------------------------- one page in

    def _take(
        self,
        parsed: ParsedPage,
        offset: int,
        edges: list[_PageEdges] | None,
        *,
        in_sequence: bool = True,
    ) -> Page:
        """The page of ``parsed``'s records not yielded yet that belong in the listing.

        ``in_sequence``: the page is the next in the listing's order (not a re-read), so it
        advances the order, early-end and progress checks.
        """
        policy = self._policy
        items: list[Opportunity] = []
        fresh = 0
        for record in parsed.records:
            if in_sequence:
                self._follow_order(record, offset)
                if policy.may_end_early and policy.past_end(record):
                    self._reached_end = True
            if record.id in self._seen:
                continue
            self._seen.add(record.id)
            fresh += 1
            if policy.matches(record):
                items.append(record)
        if in_sequence:
            if edges is not None and self._in_order and parsed.records:
                edges.append(self._edges(parsed.records, offset))
            self._note_progress(fresh, len(parsed.records), parsed)
            if parsed.total is not None:
                self._expected = self._carried + parsed.total
                if self._window_total is not None and parsed.total != self._window_total:
                    self._total_changed = True
                self._window_total = parsed.total
        if self._remaining is not None:
            items = items[: self._remaining]
            self._remaining -= len(items)
        return Page(
            items=tuple(items),
            total=None if policy.filters_locally else parsed.total,
            has_more=parsed.has_more and not self._ended and not self._done,
            meta=parsed.meta,
        )

    def _follow_order(self, record: Opportunity, offset: int) -> None:
        """Check that records come in the policy's order; remember the last key's ids."""
        key = self._policy.sort_key(record)
        if key is None:
            self._in_order = False
            return
        if self._last_key is not None and key == self._last_key:
            self._ids_at_last_key.add(record.id)
            self._in_order_count += 1
            return
        if self._last_key is not None and self._in_order:
            backwards = key > self._last_key if self._policy.descending else key < self._last_key
            if backwards:
                self._in_order = False
                logger.warning(
                    "%s: the server did not honour the listing's sort order (the page at "
                    "offset %d goes against it); reading every page and filtering locally "
                    "(no early end, no tie accounting)",
                    self._provider,
                    offset,
                )
        if self._first_key is None:
            self._first_key = key
        self._in_order_count += 1
        self._last_key = key
        self._ids_at_last_key = {record.id}

    def _pages_to_end(self, size: int) -> int | None:
        """A guess of the pages left before :meth:`PagingPolicy.end_key`, from the pace of
        sort keys so far (``None``: no guess)."""
        end = self._policy.end_key()
        if end is None or not self._in_order or self._in_order_count < 2:
            return None
        span = _distance(self._first_key, self._last_key)
        gap = _distance(self._last_key, end)
        if not span or gap is None:
            return None
        records_left = gap * (self._in_order_count - 1) / span
        # One record more: the listing ends on seeing the first record past the end.
        return max(1, math.ceil((records_left + 1) / size))

    def _note_progress(self, fresh: int, received: int, parsed: ParsedPage) -> None:
        """Stop a listing whose pages bring nothing new, again and again."""
        if fresh or not parsed.has_more:
            self._quiet_pages = 0
            return
        self._quiet_pages += 1
        size = max(received, 1)
        needed = max(NO_PROGRESS_PAGES, math.ceil(NO_PROGRESS_RECORDS / size))
        if self._quiet_pages >= needed:
            raise PaginationError(
                f"{self._quiet_pages} pages in a row brought no record not seen before while "
                "the server said more follow: it does not honour the paging; stopping rather "
                "than looping",
                provider=self._provider,
            )

    def _edges(self, records: Sequence[Opportunity], offset: int) -> _PageEdges:
        key = self._policy.sort_key
        head_key, tail_key = key(records[0]), key(records[-1])
        head = [r.id for r in records if key(r) == head_key]
        tail = [r.id for r in records if key(r) == tail_key]
        return _PageEdges(
            offset=offset,
            count=len(records),
            head=_Run(head_key, head),
            tail=_Run(tail_key, tail),
        )

    # ----------------------------------------------------------------------------- ties

    def _tie_groups(self, edges: list[_PageEdges]) -> Iterator[_TieGroup]:
        """Groups of records sharing a key across the boundaries of consecutive pages."""
        by_offset = sorted(edges, key=lambda e: e.offset)
        index = 0
        while index < len(by_offset) - 1:
            page = by_offset[index]
            following = by_offset[index + 1]
            if page.offset + page.count != following.offset or page.tail.key != following.head.key:
                index += 1
                continue
            key = page.tail.key
            start = page.offset + page.count - len(page.tail.ids)
            ids = list(page.tail.ids)
            index += 1
            # Pages wholly of this key, then the head of the page where it ends.
            while True:
                current = by_offset[index]
                whole = current.head.key == key and len(current.head.ids) == current.count
                nxt = by_offset[index + 1] if index + 1 < len(by_offset) else None
                contiguous = nxt is not None and current.offset + current.count == nxt.offset
                if whole and contiguous and nxt is not None and nxt.head.key == key:
                    ids.extend(current.head.ids)
                    index += 1
                    continue
                ids.extend(current.head.ids)
                break
            yield _TieGroup(key=key, start=start, size=len(ids), found=set(ids))

    async def _reread_ties(
        self, bound: Any, size: int, edges: list[_PageEdges]
    ) -> AsyncGenerator[Page, None]:
        """Re-read the pages around each tie group until every member was seen."""
        if not self._in_order:
            return
        groups = [
            g
            for g in self._tie_groups(edges)
            # One record on both sides of a boundary is most often a record that moved
            # (one was deleted or added meanwhile), not a tie: with a total, its check
            # tells; without one, re-read to be safe.
            if len(g.found) < g.size and (len(g.found) > 1 or self._expected is None)
        ]
        if not groups:
            return
        budget = REREAD_BUDGET_FACTOR * len(edges) + REREAD_BUDGET_MIN
        reread_size = self._adapter._check_page_size(max(size, self._adapter.max_page_size or size))
        logger.info(
            "%s: %d records share a sort key across page boundaries and %d of them moved "
            "between pages; re-reading those pages (at most %d requests)",
            self._provider,
            sum(g.size for g in groups),
            sum(g.size - len(g.found) for g in groups),
            budget,
        )
        for group in groups:
            while len(group.found) < group.size and budget > 0:
                first = group.start - group.start % reread_size
                for offset in range(first, group.start + group.size, reread_size):
                    if budget <= 0 or len(group.found) >= group.size:
                        break
                    budget -= 1
                    parsed = await self._fetch(
                        PageRequest(offset=offset, size=reread_size, bound=bound)
                    )
                    group.found.update(
                        r.id for r in parsed.records if self._policy.sort_key(r) == group.key
                    )
                    page = self._take(parsed, offset, None, in_sequence=False)
                    if page.items:
                        yield page
                    if self._done:
                        return
            if len(group.found) < group.size:
                self._unaccounted += group.size - len(group.found)
