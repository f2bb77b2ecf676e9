"""OpportunityHub: routing, concurrent merged listing, back-pressure, failure policies."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta

import pytest

import close_opps
from close_opps import AuthenticationError, CloseOppsError, NotFoundError, Opportunity
from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.http import Dialect
from close_opps.hub import TASK_PREFIX, OpportunityHub
from close_opps.sandbox import GetrazeOptions, Sandbox

VENDORS = ("close", "getraze", "reevo")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


class FakeAdapter(BaseAdapter):
    """An in-memory provider: one record per page, with hooks to pause or fail it."""

    provider = "fake"
    default_base_url = "https://fake.invalid/api"
    dialect_class = Dialect

    def __init__(
        self,
        name: str,
        *,
        count: int | None = None,
        fail_with: BaseException | None = None,
        fail_after: int = 0,
        gate: asyncio.Event | None = None,
        gate_after: int = 1,
    ) -> None:
        super().__init__(api_key="fake-key")
        self.name = name
        self.count = count  # None: never ends
        self.fail_with = fail_with
        self.fail_after = fail_after
        self.gate = gate
        self.gate_after = gate_after
        self.produced = 0
        self.finished = False  # the listing ended, by exhaustion, error, close or cancel
        self.closed = False

    def record(self, index: int) -> Opportunity:
        moment = T0 + timedelta(minutes=index)
        return Opportunity(
            provider=self.name, id=f"{self.name}-{index}", created_at=moment, updated_at=moment
        )

    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        prefix = f"{self.name}-"
        if not opportunity_id.startswith(prefix):
            raise NotFoundError("no such record", provider=self.name, status=404)
        return self.record(int(opportunity_id.removeprefix(prefix)))

    async def _pages(self, query: ListQuery) -> AsyncGenerator[Page, None]:
        try:
            index = 0
            while self.count is None or index < self.count:
                if self.gate is not None and index == self.gate_after:
                    await self.gate.wait()
                if self.fail_with is not None and index == self.fail_after:
                    raise self.fail_with
                self.produced += 1
                yield Page(items=(self.record(index),), has_more=True)
                index += 1
                await asyncio.sleep(0)
            if self.fail_with is not None and index == self.fail_after:
                raise self.fail_with
        finally:
            self.finished = True

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def hub_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(TASK_PREFIX)]


async def settle(turns: int = 50) -> None:
    """Let every ready task run (no wall-clock time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def connect_all(sb: Sandbox, **options: object) -> list[BaseAdapter]:
    return [
        close_opps.connect(name, api_key=sb[name].api_key, base_url=sb[name].base_url, **options)
        for name in VENDORS
    ]


async def wait_until_idle(sb: Sandbox, *, polls: int = 3, every: float = 0.01) -> None:
    """Wait until no vendor has received a request for ``polls`` polls in a row."""
    last: tuple[int, ...] = ()
    quiet = 0
    for _ in range(200):
        counts = tuple(sb[name].request_count for name in VENDORS)
        quiet = quiet + 1 if counts == last else 0
        if quiet >= polls:
            return
        last = counts
        await asyncio.sleep(every)
    raise AssertionError("the providers never went idle")


# ------------------------------------------------------------------------ construction


def test_names_from_providers_or_mapping() -> None:
    close = close_opps.connect("close", api_key="k")
    reevo = close_opps.connect("reevo", api_key="k")
    hub = OpportunityHub([close, reevo])
    assert hub.providers == ["close", "reevo"]
    assert hub.adapters["reevo"] is reevo
    assert dict(hub.failures) == {}

    renamed = OpportunityHub(
        {"close-eu": close, "close-us": close_opps.connect("close", api_key="k")}
    )
    assert renamed.providers == ["close-eu", "close-us"]


def test_duplicate_names_and_bad_arguments() -> None:
    first = close_opps.connect("close", api_key="a")
    second = close_opps.connect("close", api_key="b")
    with pytest.raises(ValueError, match="two adapters are named 'close'"):
        OpportunityHub([first, second])
    with pytest.raises(ValueError, match="buffer"):
        OpportunityHub([first], buffer=0)
    with pytest.raises(TypeError, match="close_opps adapters"):
        OpportunityHub({"x": object()})  # type: ignore[arg-type]


async def test_list_validates_eagerly() -> None:
    hub = OpportunityHub({"a": FakeAdapter("a", count=1)})
    with pytest.raises(ValueError, match="on_error"):
        hub.list(on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="known providers: a"):
        hub.list(providers=["nope"])
    with pytest.raises(ValueError, match="timezone-aware"):
        hub.list(updated_since=datetime(2025, 1, 1))  # naive: the point of the test
    assert hub_tasks() == []


# ---------------------------------------------------------------------------- routing


async def test_get_routes_to_the_named_adapter() -> None:
    async with Sandbox(seed=2, records=5) as sb, OpportunityHub(connect_all(sb)) as hub:
        for name in VENDORS:
            record_id = sb[name].ids[1]
            opp = await hub.get(name, record_id)
            assert (opp.provider, opp.id) == (name, record_id)
        assert sb.close.request_count == sb.getraze.request_count == 1
        with pytest.raises(ValueError, match="known providers: close, getraze, reevo"):
            await hub.get("salesforce", "x")
        with pytest.raises(NotFoundError):
            await hub.get("reevo", "00000000-0000-0000-0000-000000000000")


async def test_aclose_closes_every_adapter() -> None:
    adapters = {name: FakeAdapter(name, count=1) for name in ("a", "b")}
    async with OpportunityHub(adapters) as hub:
        assert hub.providers == ["a", "b"]
    assert all(adapter.closed for adapter in adapters.values())


# ---------------------------------------------------------------------- concurrency


async def test_records_of_all_providers_arrive_interleaved() -> None:
    async with (
        Sandbox(seed=4, records=60, latency=0.005) as sb,
        OpportunityHub(connect_all(sb, page_size=10, concurrency=1)) as hub,
    ):
        order = [(opp.provider, opp.id) async for opp in hub.list()]

    per_provider = Counter(provider for provider, _ in order)
    assert per_provider == dict.fromkeys(VENDORS, 60)
    assert len(set(order)) == len(order)
    positions = {name: [i for i, (p, _) in enumerate(order) if p == name] for name in VENDORS}
    # Every provider had yielded before any other provider finished its listing.
    for name in VENDORS:
        for other in VENDORS:
            assert positions[name][0] < positions[other][-1]


async def test_a_provider_yields_while_another_is_still_listing() -> None:
    """``a`` pauses after its first record until a record of ``b`` has been yielded: a hub
    that listed the providers one after the other would wait forever."""
    b_seen = asyncio.Event()
    hub = OpportunityHub(
        {"a": FakeAdapter("a", count=3, gate=b_seen), "b": FakeAdapter("b", count=3)}
    )
    seen: list[str] = []
    async with asyncio.timeout(5):
        async for opp in hub.list():
            seen.append(opp.provider)
            if opp.provider == "b":
                b_seen.set()
    assert Counter(seen) == {"a": 3, "b": 3}
    assert seen.index("b") < len(seen) - seen[::-1].index("a") - 1  # b came before a's last


async def test_per_provider_filters_and_limit() -> None:
    async with Sandbox(seed=4, records=30) as sb, OpportunityHub(connect_all(sb)) as hub:
        records = [opp async for opp in hub.list(limit=4, status="open")]
        chosen = [opp async for opp in hub.list(providers=["reevo"], limit=2)]
    assert Counter(opp.provider for opp in records) == dict.fromkeys(VENDORS, 4)
    assert all(opp.status == "open" for opp in records)
    assert [opp.provider for opp in chosen] == ["reevo", "reevo"]


# --------------------------------------------------------------------- back-pressure


async def test_a_paused_consumer_stops_the_providers() -> None:
    adapters = {name: FakeAdapter(name, count=1000) for name in ("a", "b", "c")}
    hub = OpportunityHub(adapters, buffer=4)
    async with aclosing(hub.list()) as listing:
        first = await anext(listing)
        await settle()  # the consumer "pauses": every other task runs as far as it can
        produced = sum(adapter.produced for adapter in adapters.values())
        # one consumed, at most ``buffer`` queued, one in hand per provider task
        assert produced <= 1 + hub.buffer + len(adapters)
        await settle()
        assert sum(adapter.produced for adapter in adapters.values()) == produced
        rest = [opp async for opp in listing]
    assert len(rest) + 1 == 3000
    assert first.id.endswith("-0")


async def test_back_pressure_reaches_the_http_requests() -> None:
    async with Sandbox(seed=5, records=300) as sb:
        adapters = connect_all(sb, page_size=10, concurrency=1)
        async with OpportunityHub(adapters, buffer=4) as hub, aclosing(hub.list()) as listing:
            await anext(listing)
            await wait_until_idle(sb)
            # 30 pages each; a paused consumer lets each provider read only a page or three
            # (the page in hand, plus the one its adapter prefetches).
            for name in VENDORS:
                assert 1 <= sb[name].request_count <= 4, (name, sb[name].request_count)
            rest = [opp async for opp in listing]
        assert len(rest) == 3 * 300 - 1
        assert sb.close.request_count == 30


# ------------------------------------------------------------------- failure policies


def _wrong_key_sandbox() -> Sandbox:
    """Slow Close and Reevo (20 pages each), and a Getraze that fails at once."""
    return Sandbox(seed=6, records=200, latency=0.01, getraze=GetrazeOptions(latency=0.0))


def _with_wrong_getraze_key(sb: Sandbox) -> list[BaseAdapter]:
    adapters = connect_all(sb, page_size=10, concurrency=1)
    adapters[1] = close_opps.connect(
        "getraze", api_key="wrong-key-do-not-log", base_url=sb.getraze.base_url
    )
    return adapters


async def test_raise_policy_raises_the_typed_error_and_cancels_the_others() -> None:
    async with _wrong_key_sandbox() as sb, OpportunityHub(_with_wrong_getraze_key(sb)) as hub:
        received: list[Opportunity] = []

        async def consume() -> None:
            async for opp in hub.list():
                received.append(opp)

        with pytest.raises(AuthenticationError) as caught:
            await consume()
        assert type(caught.value) is AuthenticationError  # itself, not a group
        assert caught.value.provider == "getraze"
        assert hub_tasks() == []  # the other providers' tasks were cancelled and awaited
        stopped_at = (sb.close.request_count, sb.reevo.request_count)
        await asyncio.sleep(0.05)  # long enough for several more pages, had they gone on
        assert (sb.close.request_count, sb.reevo.request_count) == stopped_at
        assert max(stopped_at) < 20  # of 20 pages each
        assert len(received) < 400


async def test_skip_policy_lists_the_healthy_providers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="close_opps.hub")
    async with _wrong_key_sandbox() as sb, OpportunityHub(_with_wrong_getraze_key(sb)) as hub:
        records = [opp async for opp in hub.list(on_error="skip")]
        assert Counter(opp.provider for opp in records) == {"close": 200, "reevo": 200}
        assert list(hub.failures) == ["getraze"]
        assert type(hub.failures["getraze"]) is AuthenticationError

        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert "getraze" in message
        assert "AuthenticationError" in message
        for secret in ("wrong-key-do-not-log", sb.close.api_key, sb.reevo.api_key):
            assert secret not in caplog.text

        # the next listing starts with no failures
        assert [opp.provider async for opp in hub.list(providers=["close"], limit=1)] == ["close"]
        assert dict(hub.failures) == {}


async def test_raise_policy_raises_the_first_failure() -> None:
    late = asyncio.Event()
    hub = OpportunityHub(
        {
            "slow": FakeAdapter(
                "slow",
                count=10,
                gate=late,
                fail_with=CloseOppsError("later", provider="slow"),
                fail_after=1,
            ),
            "fast": FakeAdapter(
                "fast", count=10, fail_with=CloseOppsError("first", provider="fast"), fail_after=2
            ),
        }
    )
    with pytest.raises(CloseOppsError, match="first"):
        async for _ in hub.list():
            pass
    assert all(adapter.finished for adapter in hub.adapters.values())  # type: ignore[attr-defined]


async def test_a_bug_propagates_whatever_the_policy() -> None:
    healthy = FakeAdapter("healthy")  # endless
    broken = FakeAdapter("broken", count=5, fail_with=KeyError("oops"), fail_after=2)
    hub = OpportunityHub({"healthy": healthy, "broken": broken})
    with pytest.raises(KeyError, match="oops"):
        async for _ in hub.list(on_error="skip"):
            pass
    assert healthy.finished  # cancelled, its listing closed
    assert hub_tasks() == []
    assert dict(hub.failures) == {}


# --------------------------------------------------------------------- leaving early


async def test_break_with_aclosing_cancels_at_once() -> None:
    adapters = {name: FakeAdapter(name) for name in ("a", "b")}
    hub = OpportunityHub(adapters, buffer=2)
    async with aclosing(hub.list()) as listing:
        async for opp in listing:
            if opp.id == "a-2":
                break
    assert hub_tasks() == []
    assert all(adapter.finished for adapter in adapters.values())


async def test_plain_break_cleans_up_soon_after() -> None:
    async with (
        Sandbox(seed=8, records=200, latency=0.002) as sb,
        OpportunityHub(connect_all(sb, page_size=10, concurrency=1)) as hub,
    ):
        async for _ in hub.list():
            break
        # The loop's async-generator finalizer closes it; on a loaded machine that can take
        # more than a few loop turns, so wait for it (up to two seconds), not a fixed count.
        deadline = asyncio.get_running_loop().time() + 2.0
        while hub_tasks() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        assert hub_tasks() == []
        counts = [sb[name].request_count for name in VENDORS]
        await asyncio.sleep(0.03)
        assert [sb[name].request_count for name in VENDORS] == counts
        assert all(count <= 3 for count in counts)


async def test_cancelling_the_consumer_cancels_the_providers() -> None:
    adapters = {name: FakeAdapter(name) for name in ("a", "b")}
    hub = OpportunityHub(adapters, buffer=2)
    started = asyncio.Event()

    async def consume() -> None:
        async with aclosing(hub.list()) as listing:
            async for _ in listing:
                started.set()
                await asyncio.sleep(3600)  # cancelled here, outside the hub's generator

    consumer = asyncio.create_task(consume())
    await started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert hub_tasks() == []
    assert all(adapter.finished for adapter in adapters.values())


async def test_cancelling_a_consumer_waiting_for_records() -> None:
    """Cancelled while the hub waits for the next record: cleaned up at once, no aclosing."""
    gate = asyncio.Event()  # never set: both providers stall after their first record
    adapters = {name: FakeAdapter(name, gate=gate) for name in ("a", "b")}
    hub = OpportunityHub(adapters)
    received: list[str] = []

    async def consume() -> None:
        async for opp in hub.list():
            received.append(opp.id)

    consumer = asyncio.create_task(consume())
    await settle()
    assert sorted(received) == ["a-0", "b-0"]
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert hub_tasks() == []
    assert all(adapter.finished for adapter in adapters.values())


async def test_cancelling_a_consumer_without_aclosing_cleans_up_soon_after() -> None:
    adapters = {name: FakeAdapter(name) for name in ("a", "b")}
    hub = OpportunityHub(adapters, buffer=2)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in hub.list():
            started.set()
            await asyncio.sleep(3600)

    consumer = asyncio.create_task(consume())
    await started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await settle(10)  # the loop's async-generator finalizer closes the dropped listing
    assert hub_tasks() == []
    assert all(adapter.finished for adapter in adapters.values())


async def test_no_providers_selected() -> None:
    hub = OpportunityHub({"a": FakeAdapter("a", count=3)})
    assert [opp async for opp in hub.list(providers=[])] == []
