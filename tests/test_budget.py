"""The shared rate budget of one key: a fake clock, no real waiting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from close_opps import CloseAdapter, RateLimitError
from close_opps._budget import RateBudget, budget_for
from close_opps.http import RateLimit
from close_opps.sandbox import CloseOptions, RateLimitPolicy, Sandbox


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def figures(remaining: int, reset: float, limit: int = 100) -> RateLimit:
    return RateLimit(limit=limit, remaining=remaining, reset=reset, observed_at=datetime.now(UTC))


def budget(fake: FakeTime, max_in_flight: int = 4) -> RateBudget:
    return RateBudget(
        provider="close", max_in_flight=max_in_flight, clock=fake.clock, sleep=fake.sleep
    )


async def test_at_most_ceiling_requests_in_flight() -> None:
    fake = FakeTime()
    b = budget(fake, max_in_flight=2)
    await b.acquire(max_wait=60)
    await b.acquire(max_wait=60)
    third = asyncio.ensure_future(b.acquire(max_wait=60))
    await asyncio.sleep(0)
    assert not third.done()  # waits for a request in flight to end
    await b.release(None)
    await asyncio.wait_for(third, 1)
    assert b.in_flight == 2


async def test_no_request_beyond_the_window_then_the_window_resets() -> None:
    fake = FakeTime()
    b = budget(fake)
    await b.acquire(max_wait=60)
    await b.release(figures(remaining=1, reset=5))
    await b.acquire(max_wait=60)  # the last request of the window
    await b.release(figures(remaining=0, reset=4))
    await b.acquire(max_wait=60)  # waits until the window resets, then goes
    assert fake.slept == [pytest.approx(4, abs=0.1)]
    assert b.remaining == 99  # a fresh window of 100, one sent


async def test_a_spent_window_longer_than_max_wait_raises_without_a_request() -> None:
    fake = FakeTime()
    b = budget(fake)
    await b.acquire(max_wait=60)
    await b.release(figures(remaining=0, reset=3000, limit=1000))
    with pytest.raises(RateLimitError) as info:
        await b.acquire(max_wait=60)
    assert info.value.retry_after == pytest.approx(3000, abs=1)
    assert b.in_flight == 0
    assert fake.slept == []


async def test_a_429_pauses_everyone_and_halves_the_ceiling() -> None:
    fake = FakeTime()
    b = budget(fake, max_in_flight=8)
    await b.acquire(max_wait=60)
    await b.release(None, throttled=True, retry_after=2.0)
    assert b.ceiling == 4
    await b.acquire(max_wait=60)
    assert fake.slept == [2.0]
    await b.release(None)
    assert b.ceiling == 5  # grows back by one per good answer


async def test_in_flight_requests_count_against_remaining() -> None:
    fake = FakeTime()
    b = budget(fake, max_in_flight=8)
    for _ in range(3):
        await b.acquire(max_wait=60)
    await b.release(figures(remaining=2, reset=10))
    # Two requests are still in flight, sent after the server counted: none is left.
    assert b.remaining == 0
    assert b.wait_needed() == pytest.approx(10, abs=0.1)


async def test_one_budget_per_key_origin_and_loop() -> None:
    one = budget_for("close", "https://api.close.com", "k1", max_in_flight=4)
    assert budget_for("close", "https://api.close.com", "k1", max_in_flight=8) is one
    assert one.max_in_flight == 8
    assert budget_for("close", "https://api.close.com", "k2", max_in_flight=4) is not one
    assert budget_for("close", "http://127.0.0.1:1", "k1", max_in_flight=4) is not one


async def test_adapters_sharing_a_key_share_its_budget_over_a_real_server() -> None:
    """Two Close adapters with one key list at once against a limit of 20 requests per
    0.2 s window: the budget keeps them under it, so the server answers no 429."""
    options = CloseOptions(records=600, rate_limit=RateLimitPolicy(limit=20, window=0.2))
    async with Sandbox(seed=3, vendors=["close"], close=options) as sb:
        adapters = [
            CloseAdapter(sb.close.api_key, base_url=sb.close.base_url, page_size=10, max_retries=0)
            for _ in range(2)
        ]
        async with adapters[0], adapters[1]:
            counts = await asyncio.gather(*(collect(adapter) for adapter in adapters))
        # max_retries=0: a single 429 would have failed a listing.
        assert counts == [600, 600]
        assert sb.close.request_count == 2 * 60


async def collect(adapter: CloseAdapter) -> int:
    return sum([1 async for _ in adapter.list()])
