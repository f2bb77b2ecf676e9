"""connect() and providers(): built-in adapters and third-party ones through entry points."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable, Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

import close_opps
from close_opps import registry
from close_opps.adapters.base import BaseAdapter, ListQuery, Page
from close_opps.http import Dialect
from close_opps.model import Opportunity


class AcmeAdapter(BaseAdapter):
    """A third-party adapter, as a plugin package would ship it."""

    provider = "acme"
    default_base_url = "https://api.acme.example/v1"
    dialect_class = Dialect

    async def get(self, opportunity_id: str, *, fields: Iterable[str] | None = None) -> Opportunity:
        raise NotImplementedError

    async def _pages(self, query: ListQuery) -> AsyncGenerator[Page, None]:
        yield Page(items=())


NotAnAdapter = object()


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    entries = [
        EntryPoint("acme", f"{__name__}:AcmeAdapter", registry.ENTRY_POINT_GROUP),
        EntryPoint("broken", f"{__name__}:NotAnAdapter", registry.ENTRY_POINT_GROUP),
        EntryPoint("close", f"{__name__}:AcmeAdapter", registry.ENTRY_POINT_GROUP),
    ]

    def fake_entry_points(**kwargs: Any) -> list[EntryPoint]:
        assert kwargs == {"group": registry.ENTRY_POINT_GROUP}
        return entries

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    registry._plugins.cache_clear()
    yield
    registry._plugins.cache_clear()


def test_builtin_providers() -> None:
    assert {"close", "getraze", "reevo"} <= set(close_opps.providers())


@pytest.mark.parametrize(
    ("name", "cls_name"),
    [("close", "CloseAdapter"), ("getraze", "GetrazeAdapter"), ("reevo", "ReevoAdapter")],
)
async def test_connect_builtin(name: str, cls_name: str) -> None:
    async with close_opps.connect(name, api_key="k", timeout=5.0) as adapter:
        assert type(adapter).__name__ == cls_name
        assert adapter.provider == name
        assert adapter._transport.timeout == 5.0


def test_unknown_provider() -> None:
    with pytest.raises(ValueError, match=r"known providers: .*close"):
        close_opps.connect("salesforce", api_key="k")


async def test_plugin_through_entry_point(plugins: None) -> None:
    assert "acme" in close_opps.providers()
    async with close_opps.connect("acme", api_key="k") as adapter:
        assert isinstance(adapter, AcmeAdapter)
        assert adapter.base_url == "https://api.acme.example/v1"


def test_plugin_cannot_replace_a_builtin(plugins: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="close_opps.registry"):
        names = close_opps.providers()
    assert names.count("close") == 1
    assert registry.adapter_class("close") is close_opps.CloseAdapter
    assert "ignoring the close adapter" in caplog.text


def test_plugin_that_is_not_an_adapter(plugins: None) -> None:
    with pytest.raises(TypeError, match="not a close_opps BaseAdapter"):
        registry.adapter_class("broken")
