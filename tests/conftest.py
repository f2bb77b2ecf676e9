"""Shared test set-up: no test ever sleeps for a retry, and fixtures come from one place."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import aioresponses.core
import pytest
import stamina

FIXTURES = Path(__file__).parent / "fixtures"

# dlt (tests/test_dlt.py, docs/dlt.md) sends anonymous usage telemetry by default: no test
# may reach the network. Set before any pipeline is made (and inherited by subprocesses).
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"


def _patch_aioresponses_for_aiohttp_314() -> None:
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's new ``stream_writer``.

    Upstream: https://github.com/pnuckowski/aioresponses/issues/289 (open). The mocked
    response has already "sent" its request, so a writer reporting zero bytes is faithful.
    Remove once aioresponses passes ``stream_writer`` itself.
    """
    if "stream_writer" not in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
        return

    class _ClientResponse(aiohttp.ClientResponse):
        def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
            kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
            super().__init__(method, url, **kwargs)

    aioresponses.core.ClientResponse = _ClientResponse  # type: ignore[attr-defined]


_patch_aioresponses_for_aiohttp_314()


@pytest.fixture(autouse=True)
def _no_retry_sleeps() -> Iterator[None]:
    """stamina's testing mode: backoffs are zero, adapters keep their own attempt counts."""
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


def load_fixture(name: str) -> Any:
    """A JSON fixture from ``tests/fixtures``."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server for the session (see ``tests/_postgres.py``)."""
    from tests._postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    from tests._postgres import new_database

    return new_database(postgres_server_url)
