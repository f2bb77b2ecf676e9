"""One API key's request budget in a process, fed by the server's rate-limit figures.

Every adapter (and every transport) that uses the same key against the same API in one event
loop shares one :class:`RateBudget`, so more adapters never mean more 429s for the key:

- at most ``ceiling`` requests are in flight; the ceiling halves on a 429 and grows by one
  on each good answer, up to ``max_in_flight`` (additive increase, multiplicative decrease);
- when the server's figures say the window has no request left (``remaining`` minus the
  requests sent since), no request is sent until the window resets; a wait longer than the
  caller accepts raises :class:`~close_opps.RateLimitError` at once, without a request;
- a 429 with a wait pauses every request of the key until the wait is over.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from close_opps.errors import RateLimitError

if TYPE_CHECKING:
    from close_opps.http import RateLimit

__all__ = ["RateBudget", "budget_for"]


class RateBudget:
    """The shared budget of one key (see the module's description)."""

    def __init__(
        self,
        *,
        provider: str,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.provider = provider
        self.max_in_flight = max_in_flight
        self.ceiling = max_in_flight
        self.in_flight = 0
        #: Requests left in the server's window, less those sent since it said so.
        self.remaining: int | None = None
        self._limit: int | None = None
        self._window_ends: float | None = None
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self._changed = asyncio.Condition()

    def wait_needed(self) -> float | None:
        """Seconds to wait before one more request may go (``0``: now; ``None``: until a
        request in flight ends)."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        if self._window_ends is not None and now >= self._window_ends:
            # The window the figures spoke of is over: a new one starts full.
            self.remaining = self._limit
            self._window_ends = None
        if self.remaining is not None and self.remaining <= 0:
            if self._window_ends is not None:
                return self._window_ends - now
            if self.in_flight:
                return None  # their answers will bring fresh figures
        if self.in_flight >= self.ceiling:
            return None
        return 0.0

    async def acquire(self, *, max_wait: float) -> None:
        """Wait for room to send one request, then count it in flight.

        Raises:
            RateLimitError: the wait would be longer than ``max_wait`` (the key's window is
                spent, or the server asked every request to wait that long).
        """
        while True:
            async with self._changed:
                wait = self.wait_needed()
                if wait == 0:
                    self.in_flight += 1
                    if self.remaining is not None:
                        self.remaining -= 1
                    return
                if wait is None:
                    await self._changed.wait()
                    continue
            if wait > max_wait:
                raise RateLimitError(
                    f"the key has no request left until its rate-limit window resets in "
                    f"{wait:.0f} s (more than max_retry_wait); no request was sent",
                    provider=self.provider,
                    status=429,
                    retry_after=wait,
                )
            await self._sleep(wait)

    async def release(
        self,
        figures: RateLimit | None,
        *,
        throttled: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """A request ended: take the answer's figures, and a 429's wait, into account."""
        async with self._changed:
            self.in_flight = max(0, self.in_flight - 1)
            now = self._clock()
            if figures is not None:
                if figures.limit is not None:
                    self._limit = figures.limit
                if figures.remaining is not None:
                    # Requests still in flight were sent after the server counted this one.
                    self.remaining = max(0, figures.remaining - self.in_flight)
                if figures.reset is not None:
                    age = max(0.0, time.time() - figures.observed_at.timestamp())
                    self._window_ends = now + max(0.0, figures.reset - age)
            if throttled:
                self.ceiling = max(1, self.ceiling // 2)
                if retry_after is not None:
                    # The server named its own wait: after it, try again, whatever the
                    # window's figures said.
                    self._paused_until = max(self._paused_until, now + retry_after)
                    self.remaining = None
                    self._window_ends = None
            else:
                self.ceiling = min(self.max_in_flight, self.ceiling + 1)
            self._changed.notify_all()


_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RateBudget]] = (
    weakref.WeakKeyDictionary()
)


def budget_for(provider: str, origin: str, api_key: str, *, max_in_flight: int) -> RateBudget:
    """The budget of ``api_key`` at ``origin`` in the running event loop (made on first use).

    Keyed by a hash of the key, never the key itself.
    """
    loop = asyncio.get_running_loop()
    budgets = _BUDGETS.setdefault(loop, {})
    digest = hashlib.sha256(f"{provider}\0{origin}\0{api_key}".encode()).hexdigest()
    budget = budgets.get(digest)
    if budget is None:
        budget = budgets[digest] = RateBudget(provider=provider, max_in_flight=max_in_flight)
    else:
        budget.max_in_flight = max(budget.max_in_flight, max_in_flight)
    return budget
