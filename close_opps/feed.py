"""Change feeds: the machinery every provider's ``adapter.changes()`` shares.

``adapter.changes(since=cursor)`` returns a :class:`ChangeFeed`: an async iterator of
:class:`~close_opps.Change` records that, once iterated to its end, holds a new
:attr:`ChangeFeed.cursor` to pass as ``since`` next time. This module holds what is the same
for every provider:

- the cursor: an opaque string carrying a format version, the provider's name, a checkpoint
  (a moment in the provider's clock, for feeds that read a change log) and the ids the copy
  knows, each with an optional 32-bit fingerprint of its record. :func:`encode_cursor` and
  :func:`decode_cursor`; a cursor that cannot be read raises
  :class:`~close_opps.InvalidCursorError`;
- reconciliation (:meth:`FeedRun.reconcile`): list the current records, compare them with the
  ids the cursor knows, emit an upsert for each new or changed record and a delete for each id
  no longer listed, and only once the listing is complete;
- the mass-deletion guard (:func:`check_mass_deletion`): a reconciliation that would delete
  more than a share of the known records (default half) raises
  :class:`~close_opps.MassDeletionError` before any delete, unless the caller allows it.

What differs per provider (Close reads its event log) lives in the adapter, which overrides
``BaseAdapter._change_stream``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import attrs

from close_opps._redact import get_logger
from close_opps._tasks import fetch_in_order
from close_opps.changes import Change
from close_opps.errors import InvalidCursorError, MassDeletionError
from close_opps.model import Opportunity

__all__ = [
    "CURSOR_VERSION",
    "DEFAULT_MAX_DELETION_SHARE",
    "ChangeFeed",
    "Clock",
    "FeedRun",
    "FeedState",
    "check_mass_deletion",
    "decode_cursor",
    "encode_cursor",
    "fingerprint",
]

logger = get_logger("close_opps.feed")

#: The cursor format this release writes (and the newest it reads).
CURSOR_VERSION: Final = 1
_PREFIX: Final = "coc1."
#: The share of the known records a reconciliation may delete without being allowed to.
DEFAULT_MAX_DELETION_SHARE: Final = 0.5
#: A decoded cursor larger than this is refused (a damaged or hostile cursor).
_MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
_UUID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

#: A callable returning the current moment (timezone-aware).
Clock = Callable[[], datetime]
#: Fetches one record by id, ``None`` when the provider says there is no such record.
Confirm = Callable[[str], Awaitable[Opportunity | None]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def fingerprint(opportunity: Opportunity) -> int:
    """A 32-bit digest of the record as the provider sent it (``raw``), to notice changes.

    Two different records collide with probability 2**-32: a change missed that way is
    caught by the next change of the record.
    """
    text = json.dumps(
        opportunity.raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


@attrs.frozen(kw_only=True)
class FeedState:
    """What a cursor carries.

    Attributes:
        provider: the provider whose feed issued it.
        checkpoint: a moment in the provider's time the next run reads changes from (Close's
            event log), or ``None``.
        known: the ids of the records the copy holds after the run, each with the
            fingerprint of its record (``None`` when the feed does not keep one).
        resume_after: set in the cursor of a first run that was interrupted
            (:meth:`ChangeFeed.checkpoint`): the creation time it had reached; the next run
            goes on from there (inclusive) instead of starting again.
    """

    provider: str
    checkpoint: datetime | None = None
    known: Mapping[str, int | None] = attrs.field(factory=dict)
    resume_after: datetime | None = None


def encode_cursor(state: FeedState) -> str:
    """``state`` as an opaque, URL-safe string (see ``docs/changes.md`` for its size)."""
    ids = sorted(state.known)
    fingerprints = [state.known[i] for i in ids]
    with_fps = bool(ids) and all(fp is not None for fp in fingerprints)
    packed_uuids = bool(ids) and all(_UUID.match(i) for i in ids)
    header = {
        "v": CURSOR_VERSION,
        "p": state.provider,
        "t": state.checkpoint.astimezone(UTC).isoformat() if state.checkpoint else None,
        "r": state.resume_after.astimezone(UTC).isoformat() if state.resume_after else None,
        "n": len(ids),
        "f": with_fps,
        "k": "uuid" if packed_uuids else "text",
    }
    parts = [json.dumps(header, separators=(",", ":")).encode(), b"\n"]
    if with_fps:
        parts.append(b"".join(fp.to_bytes(4, "big") for fp in fingerprints))  # type: ignore[union-attr]
    if packed_uuids:
        parts.append(b"".join(uuid.UUID(i).bytes for i in ids))
    else:
        parts.append(json.dumps(ids, separators=(",", ":"), ensure_ascii=False).encode())
    # level 6: the same size as 9 for ids (random text or bytes), in half the time
    blob = zlib.compress(b"".join(parts), 6)
    return _PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")


def decode_cursor(cursor: str, *, provider: str) -> FeedState:
    """Read a cursor written by :func:`encode_cursor` for ``provider``'s feed.

    Raises:
        InvalidCursorError: not a cursor (damaged, truncated), one issued for another
            provider, or one of a format version this release cannot read.
    """

    def bad(reason: str) -> InvalidCursorError:
        return InvalidCursorError(f"invalid change cursor: {reason}", provider=provider)

    if not isinstance(cursor, str):
        raise bad(f"expected a string, got {type(cursor).__name__}")
    text = cursor.strip()
    if not text.startswith(_PREFIX):
        if re.match(r"\Acoc\d+\.", text):
            raise bad("written by a newer release of close-opps (unknown format version)")
        raise bad("not a cursor from close-opps' changes() (it must start with 'coc1.')")
    try:
        body = text[len(_PREFIX) :]
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(blob, _MAX_DECODED_BYTES)
        complete = inflater.eof and not inflater.unconsumed_tail
        head, _, rest = raw.partition(b"\n")
        header = json.loads(head) if complete else None
    except (binascii.Error, ValueError, zlib.error):
        header = None
    if header is None:
        raise bad("damaged or truncated (copy it whole)")
    if not isinstance(header, dict):
        raise bad("damaged header")
    if header.get("v") != CURSOR_VERSION:
        raise bad(f"format version {header.get('v')!r}; this release reads {CURSOR_VERSION}")
    if header.get("p") != provider:
        raise bad(f"issued by the {header.get('p')!r} feed, not {provider!r}'s")
    try:
        count = int(header["n"])
        if not 0 <= count <= len(raw):  # each id takes at least a byte: no huge allocation
            raise ValueError("id count")
        checkpoint = datetime.fromisoformat(header["t"]) if header.get("t") else None
        resume_after = datetime.fromisoformat(header["r"]) if header.get("r") else None
        for moment in (checkpoint, resume_after):
            if moment is not None and moment.utcoffset() is None:
                raise ValueError("naive moment")
        fps: list[int | None] = [None] * count
        if header.get("f"):
            fps = [int.from_bytes(rest[4 * i : 4 * i + 4], "big") for i in range(count)]
            rest = rest[4 * count :]
        if header.get("k") == "uuid":
            if len(rest) != 16 * count:
                raise ValueError("id block length")
            ids = [str(uuid.UUID(bytes=rest[16 * i : 16 * i + 16])) for i in range(count)]
        else:
            ids = json.loads(rest)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("ids")
        if len(ids) != count:
            raise ValueError("id count")
    except (KeyError, TypeError, ValueError):
        raise bad("damaged content") from None
    return FeedState(
        provider=provider,
        checkpoint=checkpoint,
        known=dict(zip(ids, fps, strict=True)),
        resume_after=resume_after,
    )


def check_mass_deletion(
    provider: str, *, would_delete: int, known: int, max_share: float, allowed: bool
) -> None:
    """Refuse a reconciliation that would delete more than ``max_share`` of ``known``.

    Raises:
        MassDeletionError: ``would_delete > max_share * known`` and not ``allowed``.
    """
    if allowed or known == 0 or would_delete <= max_share * known:
        return
    raise MassDeletionError(
        f"reconciliation would delete {would_delete} of the {known} known records, more than "
        f"the allowed {max_share:.0%}: nothing was deleted. A key with a narrower scope or an "
        "empty answer can look like this; if the deletions are real, pass "
        "allow_mass_deletion=True (or a larger max_deletion_share) to changes() or sync()",
        provider=provider,
        would_delete=would_delete,
        known=known,
    )


class FeedRun:
    """One run of a change feed: its inputs and the state it leaves (for implementations).

    Attributes:
        provider: the provider's name.
        since: the decoded cursor, or ``None`` for a first run.
        clock: the current moment, for feeds that compare it with a checkpoint.
        max_deletion_share: the mass-deletion guard's share.
        allow_mass_deletion: turns the guard off.
        full_resync: set by the run when it delivered every current record as an upsert
            (a first run, or a fallback to full reconciliation).
        checkpoint: the checkpoint to write into the new cursor.
        known: the ids (and fingerprints) the new cursor knows; ``None`` until the run ends.
    """

    def __init__(
        self,
        *,
        provider: str,
        since: FeedState | None,
        clock: Clock | None = None,
        max_deletion_share: float = DEFAULT_MAX_DELETION_SHARE,
        allow_mass_deletion: bool = False,
    ) -> None:
        if isinstance(max_deletion_share, bool) or not 0 <= max_deletion_share <= 1:
            raise ValueError(
                f"max_deletion_share must be between 0 and 1, got {max_deletion_share!r}"
            )
        self.provider = provider
        self.since = since
        self.clock: Clock = clock or _utc_now
        self.max_deletion_share = float(max_deletion_share)
        self.allow_mass_deletion = bool(allow_mass_deletion)
        self.full_resync = False
        self.checkpoint: datetime | None = None
        self.known: dict[str, int | None] | None = None
        #: During a resumable first run: what has been delivered so far, and the creation
        #: time reached (``None`` when the run cannot be resumed).
        self._delivered: dict[str, int | None] = {}
        self._position: datetime | None = None
        self._resumable = False

    @property
    def resuming(self) -> bool:
        """Whether the cursor is that of an interrupted first run, to be continued."""
        return self.since is not None and self.since.resume_after is not None

    @property
    def first_run(self) -> bool:
        """Whether this run delivers every current record: no cursor, or an interrupted
        first run's."""
        return self.since is None or self.resuming

    def partial_state(self) -> FeedState | None:
        """The state to resume a first run from, once every change so far is applied."""
        if not self._resumable or self._position is None or self.known is not None:
            return None
        return FeedState(
            provider=self.provider,
            checkpoint=self.checkpoint,
            known=dict(self._delivered),
            resume_after=self._position,
        )

    def now(self) -> datetime:
        """The clock's moment, checked to be timezone-aware."""
        moment = self.clock()
        if moment.utcoffset() is None:
            raise ValueError(f"the feed's clock must return aware datetimes, got {moment!r}")
        return moment

    def state(self) -> FeedState:
        """The state the run ended with."""
        if self.known is None:
            raise RuntimeError("the change feed has not run to its end")
        return FeedState(provider=self.provider, checkpoint=self.checkpoint, known=self.known)

    async def initial(
        self,
        list_from: Callable[[datetime | None], AsyncIterator[Opportunity]],
        *,
        fingerprints: bool = True,
    ) -> AsyncGenerator[Change, None]:
        """A first run, or the continuation of an interrupted one: every current record as
        an upsert, no delete.

        ``list_from(after)`` lists the current records oldest created first, from the
        creation time ``after`` (inclusive; ``None``: from the start). As long as they come
        in that order, :meth:`partial_state` can resume the run from the last creation time
        delivered. Sets :attr:`full_resync` and, at the end, :attr:`known`.
        """
        self.full_resync = True
        after = self.since.resume_after if self.since is not None else None
        self._delivered = dict(self.since.known) if after is not None and self.since else {}
        self._position = after
        self._resumable = True
        async with aclosing(_generator(list_from(after))) as records:
            async for change in self._initial(records, after, fingerprints=fingerprints):
                yield change
        self.known = self._delivered

    async def _initial(
        self, records: AsyncIterator[Opportunity], after: datetime | None, *, fingerprints: bool
    ) -> AsyncGenerator[Change, None]:
        async for record in records:
            if after is not None and record.created_at < after:
                continue  # a provider that filters loosely: delivered before
            if self._position is not None and record.created_at < self._position:
                self._resumable = False  # out of creation order: cannot resume safely
            elif self._resumable:
                self._position = record.created_at
            self._delivered[record.id] = fingerprint(record) if fingerprints else None
            yield Change.upsert(record, occurred_at=record.updated_at)

    async def reconcile(
        self,
        records: AsyncIterator[Opportunity],
        *,
        upsert_all: bool,
        fingerprints: bool = True,
        confirm: Confirm | None = None,
        concurrency: int = 1,
    ) -> AsyncGenerator[Change, None]:
        """Compare a complete listing with the ids the cursor knows.

        Yields an upsert for every listed record that is new or whose fingerprint changed
        (every record with ``upsert_all``), then, once the listing has ended normally, a
        delete for every known id it did not list. A listing that raises (an
        :class:`~close_opps.IncompleteListingError`, a failure midway) raises here before
        any delete. With ``confirm`` (a get by id, ``concurrency`` at a time), each id not
        listed is asked for first: a record that answers is alive (a listing over offset
        pages skips one when another is deleted meanwhile) and is upserted instead. Sets
        :attr:`known` for the new cursor.

        Raises:
            MassDeletionError: the deletes would exceed the guard's share (nothing deleted).
        """
        known = dict(self.since.known) if self.since is not None else {}
        seen: dict[str, int | None] = {}
        async with aclosing(_generator(records)) as listing:
            async for record in listing:
                mark = fingerprint(record) if fingerprints else None
                previous = known.get(record.id, _ABSENT)
                seen[record.id] = mark
                if upsert_all or previous is _ABSENT or previous is None or previous != mark:
                    yield Change.upsert(record, occurred_at=record.updated_at)
        gone = sorted(i for i in known if i not in seen)
        check_mass_deletion(
            self.provider,
            would_delete=len(gone),
            known=len(known),
            max_share=self.max_deletion_share,
            allowed=self.allow_mass_deletion,
        )
        if confirm is None:
            for record_id in gone:
                yield Change.delete(self.provider, record_id)
            self.known = seen
            return
        alive = 0
        asks = ((lambda i=i: _confirmed(confirm, i)) for i in gone)
        async with aclosing(fetch_in_order(asks, concurrency=concurrency)) as answers:
            async for record_id, found in answers:
                if found is None:
                    yield Change.delete(self.provider, record_id)
                    continue
                alive += 1
                # no fingerprint: a get's record can differ in form from a listed one
                # (Getraze), so the next run upserts it as listed
                seen[record_id] = None
                yield Change.upsert(found, occurred_at=found.updated_at)
        if alive:
            logger.warning(
                "%s: the listing missed %d live record(s) (records changed while it ran); "
                "a get found them, so they were not deleted",
                self.provider,
                alive,
            )
        self.known = seen


_ABSENT: Final[Any] = object()


async def _confirmed(confirm: Confirm, record_id: str) -> tuple[str, Opportunity | None]:
    return record_id, await confirm(record_id)


async def _generator(records: AsyncIterator[Opportunity]) -> AsyncGenerator[Opportunity, None]:
    """``records`` as an async generator that closes the listing when it is closed."""
    try:
        async for record in records:
            yield record
    finally:
        aclose = getattr(records, "aclose", None)
        if aclose is not None:
            await aclose()


class ChangeFeed:
    """The changes since a cursor, as ``adapter.changes()`` returns them.

    An async iterator of :class:`~close_opps.Change`; use it once. When it has been iterated
    to its end, :attr:`cursor` holds the cursor to pass as ``changes(since=...)`` next time;
    a feed that raised or was left early has no cursor (keep the old one: its changes will be
    delivered again). Also an async context manager that closes the feed on exit.

    Attributes:
        cursor: the new cursor (an opaque string), or ``None`` until the end is reached.
    """

    def __init__(
        self, run: FeedRun, source: Callable[[FeedRun], AsyncGenerator[Change, None]]
    ) -> None:
        self._run = run
        self._source = source
        self._stream: AsyncGenerator[Change, None] | None = None
        self._finished = False
        self.cursor: str | None = None

    @property
    def provider(self) -> str:
        """The provider's name."""
        return self._run.provider

    @property
    def full_resync(self) -> bool:
        """Whether this run delivered every current record as an upsert.

        ``True`` for a first run (``since=None``) and when Close falls back to a full
        reconciliation (a cursor older than the event log keeps, or a key that cannot read
        it). Set as soon as the feed knows, before its first change.
        """
        return self._run.full_resync

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        if self._finished:
            raise StopAsyncIteration
        if self._stream is None:
            self._stream = self._source(self._run)
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._finished = True
            # linear in the records known: off the event loop
            self.cursor = await asyncio.to_thread(encode_cursor, self._run.state())
            raise
        except BaseException:
            self._finished = True
            raise

    def checkpoint(self) -> str | None:
        """A cursor that resumes this first run where it is, or ``None``.

        During a first run (``since=None``, or the cursor of an interrupted one), once every
        change yielded so far has been applied, this cursor continues the run from the
        creation time reached (records created at that instant are delivered again) rather
        than from the start: store it after each batch you commit. ``None`` for other runs
        (they restart from their own cursor), before the first change, and if the provider
        did not list in creation order. After the end, :attr:`cursor`.

        Encoding it takes time in proportion to the records delivered so far (about 40 ms
        per 10,000): call it off the event loop, and not after every record
        (``close_opps.sync`` does so with every batch at first, then every tenth of the way).
        """
        if self.cursor is not None:
            return self.cursor
        state = self.checkpoint_state()
        return encode_cursor(state) if state is not None else None

    def checkpoint_state(self) -> FeedState | None:
        """What :meth:`checkpoint` encodes, taken at once (a copy of the ids delivered, a
        small cost), so that the encoding can run later, off the event loop, while the
        feed is read on: ``encode_cursor(state)`` is then the checkpoint of this moment.
        ``None`` when :meth:`checkpoint` would be, and after the end (see :attr:`cursor`).
        """
        if self.cursor is not None:
            return None
        return self._run.partial_state()

    async def aclose(self) -> None:
        """Stop the feed (no cursor is set)."""
        self._finished = True
        if self._stream is not None:
            await self._stream.aclose()

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
        state = "done" if self.cursor is not None else "open"
        return f"ChangeFeed(provider={self.provider!r}, {state})"
