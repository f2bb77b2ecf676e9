"""Telemetry through the OpenTelemetry SDK's in-memory exporters: spans and metrics as
documented in close_opps.telemetry, and no header value in any attribute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from close_opps import AuthenticationError, connect, telemetry
from close_opps.sandbox import Fault, Sandbox
from close_opps.sync import SyncStore, sync


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry.use(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield spans, reader
    finally:
        telemetry.use()  # back to the global (no-op) providers
        meter_provider.shutdown()
        tracer_provider.shutdown()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_sync_spans_and_metrics(
    otel: tuple[InMemorySpanExporter, InMemoryMetricReader], tmp_path: Path
) -> None:
    spans, reader = otel
    async with Sandbox(seed=2, records=25, vendors=["reevo"]) as sb:
        sb.reevo.script(Fault.rate_limit(0), Fault.server_error())
        async with (
            connect(
                "reevo", api_key=sb.reevo.api_key, base_url=sb.reevo.base_url, page_size=10
            ) as reevo,
            SyncStore(tmp_path / "t.db") as store,
        ):
            await sync({"acme": reevo}, store)
            await sync({"acme": reevo}, store)
        key = sb.reevo.api_key
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name == "close_opps.sync"]
    assert len(runs) == 2
    first = dict(runs[0].attributes or {})
    assert first["close_opps.connection"] == "acme"
    assert first["close_opps.provider"] == "reevo"
    assert first["close_opps.records"] == 25 and first["close_opps.inserted"] == 25
    requests = [s for s in finished if s.name == "close_opps.request"]
    assert requests
    for span in requests:
        attributes = dict(span.attributes or {})
        assert attributes["close_opps.connection"] == "acme"
        assert attributes["http.request.method"] in ("GET", "POST")
        assert span.parent is not None  # inside its sync run
    assert max(int(str(dict(s.attributes or {})["close_opps.retries"])) for s in requests) == 2
    assert {dict(s.attributes or {})["http.response.status_code"] for s in requests} == {200}
    # no attribute anywhere holds a header value (the key above all)
    for span in finished:
        for value in (span.attributes or {}).values():
            assert key not in str(value)
            assert "Bearer" not in str(value)

    points = _points(reader)
    assert sum(p.value for p in points["close_opps.requests"]) == len(requests)
    assert sum(p.value for p in points["close_opps.retries"]) == 2
    assert sum(p.value for p in points["close_opps.rate_limited"]) == 1
    delivered = sum(int(str(dict(r.attributes or {})["close_opps.records"])) for r in runs)
    assert sum(p.value for p in points["close_opps.records"]) == delivered >= 25
    lag = points["close_opps.sync.lag"]
    assert len(lag) == 1 and 0 <= lag[0].value < 60  # the second run: since the first
    assert dict(lag[0].attributes)["close_opps.connection"] == "acme"
    for name, values in points.items():
        for point in values:
            assert key not in str(dict(point.attributes)), name


async def test_a_failed_request_is_an_error_span(
    otel: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    spans, _ = otel
    async with (
        Sandbox(seed=2, records=3, vendors=["getraze"]) as sb,
        connect("getraze", api_key="wrong-key", base_url=sb.getraze.base_url) as g,
    ):
        with pytest.raises(AuthenticationError):
            await g.get(sb.getraze.ids[0])
    (span,) = [s for s in spans.get_finished_spans() if s.name == "close_opps.request"]
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == 401
    assert attributes["error.type"] == "AuthenticationError"
    assert "close_opps.connection" not in attributes  # not inside a sync
    assert all("wrong-key" not in str(v) for v in attributes.values())


async def test_listing_and_page_spans(
    otel: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    spans, _ = otel
    async with (
        Sandbox(seed=2, records=25, vendors=["close"]) as sb,
        connect(
            "close", api_key=sb.close.api_key, base_url=sb.close.base_url, page_size=10
        ) as close,
    ):
        key = sb.close.api_key
        got = [o async for o in close.list()]
    assert len(got) == 25
    finished = spans.get_finished_spans()
    (listing,) = [s for s in finished if s.name == "close_opps.list"]
    pages = [s for s in finished if s.name == "close_opps.page"]
    requests = [s for s in finished if s.name == "close_opps.request"]
    assert listing.attributes is not None
    assert (listing.attributes["close_opps.records"], listing.attributes["close_opps.pages"]) == (
        25,
        3,
    )
    records = sorted(str((s.attributes or {}).get("close_opps.records")) for s in pages)
    assert records == ["10", "10", "5"]
    # each request is a child of its page span
    page_ids = {s.context.span_id for s in pages if s.context is not None}
    assert {s.parent.span_id for s in requests if s.parent is not None} == page_ids
    assert all(key not in str(s.attributes) for s in finished)


async def test_an_incomplete_listing_span_is_an_error(
    otel: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    spans, _ = otel
    async with Sandbox(seed=2, records=5, vendors=["close"]) as sb:
        sb.close.script(Fault.server_error(500))
        async with connect(
            "close", api_key=sb.close.api_key, base_url=sb.close.base_url, max_retries=0
        ) as close:
            with pytest.raises(Exception, match="500"):
                [o async for o in close.list()]
    (listing,) = [s for s in spans.get_finished_spans() if s.name == "close_opps.list"]
    assert listing.status.status_code.name == "ERROR"
