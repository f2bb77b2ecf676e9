"""A hostile server on 127.0.0.1 for the tests of hostile input, and what it sends.

:class:`HostileServer` runs an :mod:`aiohttp.web` app in a background thread with its own
event loop, so in-process CLI runs (which call ``asyncio.run``) can use it as well as async
tests. Whatever the path, it answers with :attr:`HostileServer.answer` (status, headers,
body), counting the requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
from aiohttp import web

from close_opps import BaseAdapter, CloseAdapter, GetrazeAdapter, ReevoAdapter

#: The key every hostile test uses, and the forms it travels in.
KEY = "sk_live_7f3a9c2e41b84d0e9a6f"
BASIC = base64.b64encode(f"{KEY}:".encode()).decode()
BARE = base64.b64encode(KEY.encode()).decode()
KEY_FORMS = (KEY, BASIC, BASIC.rstrip("="), BARE, BARE.rstrip("="))

ADAPTERS: dict[str, type[BaseAdapter]] = {
    "close": CloseAdapter,
    "getraze": GetrazeAdapter,
    "reevo": ReevoAdapter,
}
#: An id of the right form for each provider (Getraze's are UUIDs).
IDS = {"close": "oppo_1", "getraze": "6f1c2d3e-0000-4000-8000-000000000001", "reevo": "x"}
BASE_PATHS = {"close": "/api/v1", "getraze": "/external/v1", "reevo": "/api/v2"}


def everything_said(exc: BaseException) -> str:
    """Every string an error shows: str, repr, the whole traceback with its causes, and the
    vendor fields."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for name in ("code", "request_id", "body", "headers", "record_id", "path", "field_errors"):
        parts.append(repr(getattr(exc, name, None)))
    return "\n".join(parts)


def leaks(text: str) -> list[str]:
    """The forms of :data:`KEY` that ``text`` shows."""
    return [form for form in KEY_FORMS if form in text]


@attrs.define
class Answer:
    """One HTTP answer."""

    status: int = 200
    body: bytes = b"{}"
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: Seconds to wait before answering (in the server's thread).
    delay: float = 0.0


def json_answer(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status=status, body=json.dumps(data).encode(), headers=dict(headers or {}))


class HostileServer:
    """The server; ``with HostileServer() as server:``."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.requests = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="hostile-server")

    def base_url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATHS[provider]}"

    def adapter(self, provider: str, **options: Any) -> BaseAdapter:
        options.setdefault("max_retries", 0)
        return ADAPTERS[provider](KEY, base_url=self.base_url(provider), **options)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        answer = self.answer
        await request.read()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def __enter__(self) -> HostileServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextmanager
def hostile_server() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


# ----------------------------------------------------------------- good records, to spoil


def close_record(**fields: Any) -> dict[str, Any]:
    return {
        "id": "oppo_1",
        "date_created": "2025-01-01T00:00:00+00:00",
        "date_updated": "2025-01-02T00:00:00+00:00",
        "status_type": "active",
        "value": 1000,
        "confidence": 40,
        **fields,
    }


def getraze_record(**fields: Any) -> dict[str, Any]:
    return {
        "id": "6f1c2d3e-0000-4000-8000-000000000001",
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-02T00:00:00Z",
        "title": "Deal",
        "value": "10.00",
        "probability": 40,
        **fields,
    }


def reevo_record(**attributes: Any) -> dict[str, Any]:
    return {
        "id": "9b2c0000-0000-4000-8000-000000000001",
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-02T00:00:00Z",
        "attributes": {
            "display_name": {"value": "Deal", "value_type": "string"},
            "stage": {
                "value": {"id": "s1", "display_value": "Qualify", "closing_probability": "40"},
                "value_type": "opportunity_stage",
            },
            **attributes,
        },
    }


RECORDS = {"close": close_record, "getraze": getraze_record, "reevo": reevo_record}


def one_body(provider: str, record: Any) -> Any:
    """The body of ``get`` for ``record``."""
    if provider == "close":
        return record
    if provider == "getraze":
        return {"success": True, "data": record}
    return {"data": record}


def list_body(provider: str, records: list[Any], *, more: bool = False) -> Any:
    """The body of one list page holding ``records``."""
    if provider == "close":
        return {"data": records, "has_more": more, "total_results": len(records)}
    if provider == "getraze":
        pagination = {"page": 1, "limit": 100, "total": len(records), "has_next": more}
        return {"success": True, "data": records, "pagination": pagination}
    return {"data": records, "next_cursor": "c2" if more else None}
