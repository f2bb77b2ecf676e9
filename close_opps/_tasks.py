"""Task helpers: fetches run at once but yielded in order, and clean cancellation."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["aclose_iterator", "cancel_and_wait", "fetch_in_order"]

T = TypeVar("T")


async def fetch_in_order(
    fetches: Iterator[Callable[[], Awaitable[T]]], *, concurrency: int
) -> AsyncGenerator[T, None]:
    """Run the fetches ``concurrency`` at a time and yield their results in order.

    The next fetch starts as soon as a result is handed over, so at most ``concurrency``
    results exist at once, whatever the number of pages. ``fetches`` is read lazily: it may
    stop (return) once the caller knows no more pages are needed. A failed fetch raises when
    its turn comes; leaving the loop early (break, error) cancels the fetches in flight.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pending: deque[asyncio.Task[T]] = deque()

    def top_up() -> None:
        while len(pending) < concurrency:
            fetch = next(fetches, None)
            if fetch is None:
                return
            pending.append(asyncio.ensure_future(fetch()))

    try:
        top_up()
        while pending:
            result = await pending.popleft()
            top_up()
            yield result
    finally:
        await cancel_and_wait(pending)


async def aclose_iterator(iterator: AsyncIterator[Any]) -> None:
    """Close ``iterator`` now if it is an async generator (else there is nothing to close)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has finished, even if we are cancelled.

    Their exceptions are marked retrieved (the caller has raised the one that matters), so
    asyncio never logs "Task exception was never retrieved".
    """
    tasks = list(tasks)
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    try:
        if pending:
            await asyncio.wait(pending)
    except asyncio.CancelledError:
        # Cancelled while waiting: the tasks are cancelled already and end promptly;
        # wait for them anyway so none outlives its owner, then honour the cancellation.
        await asyncio.wait(pending)
        raise
    finally:
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()
