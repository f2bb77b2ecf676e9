"""Concurrent page fetching that still yields in order, with bounded memory."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import TypeVar

__all__ = ["fetch_in_order"]

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
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
