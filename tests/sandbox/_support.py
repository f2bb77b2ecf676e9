"""Helpers of the sandbox tests: vendor examples, a plain HTTP call."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> Any:
    """A vendor example copied verbatim from the vendor docs (see fixtures/)."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def getraze_case(name: str) -> dict[str, Any]:
    """One recorded Getraze response (``getraze-live-responses.json``) by its case name."""
    for case in load_fixture("getraze-live-responses.json")["cases"]:
        if case["case"] == name:
            return dict(case)
    raise KeyError(name)


@attrs.frozen
class Reply:
    """A response read to the end."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str | int] | None = None,
    json_body: Any = None,
) -> Reply:
    """Send one request and read the whole response."""
    async with http.request(
        method, url, headers=headers, params=params, json=json_body
    ) as response:
        body = await response.read()
        return Reply(response.status, response.headers, body)
