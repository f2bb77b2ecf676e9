"""Fixtures of the sandbox tests: a running Sandbox and a plain aiohttp client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from close_opps.sandbox import Sandbox
from close_opps.sandbox._data import REFERENCE_TODAY


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=7, today=REFERENCE_TODAY) as running:  # dates fixed
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
