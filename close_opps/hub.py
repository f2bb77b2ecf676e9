"""Several providers behind one object: routed ``get`` and a concurrent, merged ``list``.

::

    async with OpportunityHub([close, getraze, reevo]) as hub:
        async for opp in hub.list(updated_since=since, status="won"):
            ...

:meth:`OpportunityHub.list` runs one task per provider. The tasks feed one bounded
:class:`asyncio.Queue`, so records are yielded as they arrive, whichever provider sends them,
and a slow consumer stops the providers instead of letting their listings pile up in memory.
See ``docs/hub.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self

import attrs

from close_opps._redact import get_logger
from close_opps._tasks import aclose_iterator, cancel_and_wait
from close_opps.adapters.base import BaseAdapter
from close_opps.errors import CloseOppsError
from close_opps.model import Opportunity

__all__ = ["TASK_PREFIX", "OnError", "OpportunityHub"]

logger = get_logger("close_opps.hub")

#: What :meth:`OpportunityHub.list` does when a provider fails.
OnError = Literal["raise", "skip"]
_ON_ERROR: Final = ("raise", "skip")
#: The name prefix of the hub's provider tasks (``close-opps-hub:close``).
TASK_PREFIX: Final = "close-opps-hub:"


@attrs.frozen
class _Ended:
    """A provider task's last word on the queue."""

    provider: str


@attrs.define
class _Run:
    """What the provider tasks of one listing share with its consumer."""

    on_error: OnError
    failures: dict[str, CloseOppsError]
    tasks: dict[str, asyncio.Task[None]] = attrs.field(factory=dict)
    #: The exception to raise in the consumer: the first typed error under ``"raise"``, or
    #: the first non-``CloseOppsError`` exception (a bug) under either policy.
    error: BaseException | None = None

    def stop_others(self, provider: str) -> None:
        for name, task in self.tasks.items():
            if name != provider:
                task.cancel()


class OpportunityHub:
    """Several adapters under their provider names.

    Args:
        adapters: the adapters, named by their ``provider`` (``"close"``, ...), or a mapping
            ``{name: adapter}`` to choose the names (two accounts of one CRM, say).
        buffer: how many records :meth:`list` holds between the providers and the consumer,
            for all providers together.

    Raises:
        ValueError: two adapters have the same name, or ``buffer`` is less than 1.
        TypeError: something that is not a :class:`BaseAdapter`.

    The hub closes its adapters in :meth:`aclose` (and on leaving ``async with``).
    """

    def __init__(
        self,
        adapters: Iterable[BaseAdapter] | Mapping[str, BaseAdapter],
        *,
        buffer: int = 64,
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be a positive integer, got {buffer!r}")
        named: list[tuple[str, BaseAdapter]]
        if isinstance(adapters, Mapping):
            named = [(str(name), adapter) for name, adapter in adapters.items()]
        else:
            named = [(getattr(adapter, "provider", "?"), adapter) for adapter in adapters]
        found: dict[str, BaseAdapter] = {}
        for name, adapter in named:
            if not isinstance(adapter, BaseAdapter):
                raise TypeError(
                    f"the hub takes close_opps adapters, got {type(adapter).__name__} for {name!r}"
                )
            if name in found:
                raise ValueError(
                    f"two adapters are named {name!r}; pass a mapping {{name: adapter}} to "
                    "name them apart"
                )
            found[name] = adapter
        self._adapters = found
        self._buffer = buffer
        self._failures: dict[str, CloseOppsError] = {}

    # ------------------------------------------------------------------------- properties

    @property
    def adapters(self) -> Mapping[str, BaseAdapter]:
        """The adapters by name (read-only)."""
        return MappingProxyType(self._adapters)

    @property
    def providers(self) -> list[str]:
        """The adapters' names, in the order given."""
        return list(self._adapters)

    @property
    def buffer(self) -> int:
        """Records held at most between the providers and the consumer of :meth:`list`."""
        return self._buffer

    @property
    def failures(self) -> Mapping[str, CloseOppsError]:
        """The providers that failed during the latest ``list(on_error="skip")``, with their
        errors. Empty when every provider succeeded; reset by each call of :meth:`list`."""
        return MappingProxyType(self._failures)

    def adapter(self, provider: str) -> BaseAdapter:
        """The adapter named ``provider``.

        Raises:
            ValueError: no adapter has that name (the message names the known ones).
        """
        try:
            return self._adapters[provider]
        except KeyError:
            known = ", ".join(self._adapters) or "none"
            raise ValueError(
                f"the hub has no provider {provider!r}; known providers: {known}"
            ) from None

    def select(self, providers: Iterable[str] | None) -> list[str]:
        """``providers`` checked against the hub's names (all of them for ``None``).

        Raises:
            ValueError: an unknown name.
        """
        if providers is None:
            return list(self._adapters)
        if isinstance(providers, str):
            providers = [providers]
        chosen = list(dict.fromkeys(providers))
        for name in chosen:
            self.adapter(name)
        return chosen

    # ------------------------------------------------------------------------ reading

    async def get(
        self, provider: str, opportunity_id: str, *, fields: Iterable[str] | None = None
    ) -> Opportunity:
        """One opportunity from the adapter named ``provider``.

        Raises:
            ValueError: no adapter has that name.
            NotFoundError: no such record (and any error of the adapter's ``get``).
        """
        return await self.adapter(provider).get(opportunity_id, fields=fields)

    def list(
        self,
        *,
        on_error: OnError = "raise",
        providers: Iterable[str] | None = None,
        **filters: Any,
    ) -> AsyncGenerator[Opportunity, None]:
        """Every matching record of every provider, listed concurrently, yielded as it comes.

        Args:
            on_error: ``"raise"``: the first provider error (the typed
                :class:`~close_opps.CloseOppsError` itself) is raised once the other
                providers are cancelled. ``"skip"``: a failed provider is logged (WARNING)
                and recorded in :attr:`failures`; the others run to the end.
            providers: only these names (default: all).
            **filters: the adapters' ``list()`` arguments (``updated_since``, ``status``,
                ``limit`` -- per provider --, ``page_size``, ...), given to each provider.

        Records of different providers come interleaved, in no guaranteed order; each
        provider's own records keep its order. At most ``buffer`` records wait between the
        providers and the consumer. Leaving the loop early (``break``, ``aclose()``, the
        consumer being cancelled) cancels the providers; use
        ``contextlib.aclosing(hub.list())`` for that to happen at once rather than when the
        iterator is garbage collected. An exception that is not a ``CloseOppsError`` (a bug)
        is raised whatever ``on_error`` says.

        Raises:
            ValueError: ``on_error`` is not ``"raise"`` or ``"skip"``, an unknown provider,
                or a filter an adapter rejects -- all at the call, before any request.
        """
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        names = self.select(providers)
        # Each adapter validates its arguments when list() is called: do it now, for all.
        listings = {name: self._adapters[name].list(**filters) for name in names}
        self._failures = {}
        return self._merge(listings, _Run(on_error=on_error, failures=self._failures))

    async def _merge(
        self, listings: Mapping[str, AsyncIterator[Opportunity]], run: _Run
    ) -> AsyncGenerator[Opportunity, None]:
        queue: asyncio.Queue[Opportunity | _Ended] = asyncio.Queue(maxsize=self._buffer)
        for name, listing in listings.items():
            run.tasks[name] = asyncio.create_task(
                self._pump(name, listing, queue, run), name=f"{TASK_PREFIX}{name}"
            )
        running = len(run.tasks)
        try:
            while running:
                item = await queue.get()
                if run.error is not None:
                    raise run.error
                if isinstance(item, _Ended):
                    running -= 1
                    continue
                yield item
        finally:
            await cancel_and_wait(run.tasks.values())
            # Close listings whose task never started (cancelled before its first step).
            for listing in listings.values():
                await aclose_iterator(listing)

    async def _pump(
        self,
        name: str,
        listing: AsyncIterator[Opportunity],
        queue: asyncio.Queue[Opportunity | _Ended],
        run: _Run,
    ) -> None:
        """Move one provider's records into the queue; report how the listing ended."""
        try:
            async for item in listing:
                await queue.put(item)
        except CloseOppsError as exc:
            if run.on_error == "raise":
                if run.error is None:
                    run.error = exc
                    run.stop_others(name)
            else:
                run.failures[name] = exc
                logger.warning(
                    "provider %s failed, listing the others without it: %s: %s",
                    name,
                    type(exc).__name__,
                    exc,
                )
        except Exception as exc:  # a bug: always raised in the consumer
            if run.error is None:
                run.error = exc
                run.stop_others(name)
        finally:
            await aclose_iterator(listing)
        await queue.put(_Ended(name))

    # ------------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close every adapter (all of them, even if one fails; the first error is raised)."""
        results = await asyncio.gather(
            *(adapter.aclose() for adapter in self._adapters.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

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
        return f"OpportunityHub(providers={self.providers!r}, buffer={self._buffer})"
