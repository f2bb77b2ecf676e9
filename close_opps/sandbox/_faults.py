"""Fault injection: latency, rate limits, server errors, dropped connections, bad bodies.

One :class:`FaultInjector` sits in front of each vendor app as its outermost middleware. It
counts and records every request, adds the configured latency, then decides whether this
read (``GET`` or ``POST``) gets a fault: first from the scripted queue (:meth:`push`), else
by drawing from a seeded RNG against the rates of a :class:`FaultConfig`. Rate-limit and
server-error responses are drawn by the vendor's own :class:`FaultRenderer`, so a 429 looks
like that vendor's 429.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, Protocol
from urllib.parse import parse_qsl

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

__all__ = [
    "FAULTS",
    "Fault",
    "FaultConfig",
    "FaultInjector",
    "FaultKind",
    "FaultRenderer",
    "Latency",
    "RecordedRequest",
    "fault_middleware",
    "format_seconds",
    "gateway_page",
]

FaultKind = Literal[
    "ok", "delay", "rate_limit", "server_error", "drop", "malformed", "incomplete", "respond"
]
MalformedForm = Literal["html", "truncated_json"]
#: Seconds of latency: a fixed number, or a ``(low, high)`` range drawn from a seeded RNG.
Latency = float | tuple[float, float]

#: Methods the faults apply to: the reads. Anything else passes straight through.
_READS: Final = frozenset({"GET", "POST"})
#: Default wait (seconds) that an injected 429 asks the client for.
DEFAULT_WAIT: Final = 0.01


def format_seconds(seconds: float) -> str:
    """``1`` for 1.0, ``0.25`` for 0.25: how the sandbox writes waits into headers."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def gateway_page(status: int) -> str:
    """The HTML page a load balancer sends with a 502/503/504 (or a 200 from a captive proxy)."""
    reason = {
        200: "OK",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Temporarily Unavailable",
        504: "Gateway Time-out",
    }.get(status, "Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted (or drawn) fault. Build them with the class methods.

    ``Fault.rate_limit(0.01)`` is a 429 in the vendor's own form asking for a 0.01 s wait;
    ``Fault.server_error(503)``; ``Fault.drop()`` closes the connection without a response;
    ``Fault.malformed("html")`` / ``Fault.malformed("truncated_json", status=502)``;
    ``Fault.incomplete()`` announces a full ``Content-Length`` and closes half way;
    ``Fault.delay(0.2)`` answers normally after 0.2 s; ``Fault.respond(401, {...})`` sends
    any response; ``Fault.ok()`` is a normal answer (a placeholder in a script).
    """

    kind: FaultKind
    status: int | None = None
    seconds: float = 0.0
    retry_after_header: bool | None = None
    form: MalformedForm = "html"
    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    @classmethod
    def ok(cls) -> Fault:
        """A normal answer: a placeholder so a script can say "fault, normal, fault"."""
        return cls(kind="ok")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """A normal answer after ``seconds`` (to trip a client's timeout, say)."""
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def rate_limit(
        cls, wait: float = DEFAULT_WAIT, *, retry_after_header: bool | None = None
    ) -> Fault:
        """A 429 in the vendor's form asking for ``wait`` seconds.

        Close: ``RateLimit: limit=…, remaining=0, reset=<wait>`` and an empty body
        (``Retry-After`` too when ``retry_after_header``). Getraze: the
        ``RATE_LIMIT_EXCEEDED`` envelope with ``error.retry_after = wait`` and no
        ``Retry-After`` header (unless asked). Reevo: ``Retry-After: <wait>`` (unless
        ``retry_after_header=False``).
        """
        return cls(kind="rate_limit", seconds=wait, retry_after_header=retry_after_header)

    @classmethod
    def server_error(cls, status: int = 500, *, retry_after: float | None = None) -> Fault:
        """A 5xx: 500 in the vendor's error form, 502/503/504 as a gateway's HTML page.

        ``retry_after`` adds a ``Retry-After`` header (as a 503 often has).
        """
        if not 500 <= status <= 599:
            raise ValueError("a server error status is 5xx")
        return cls(
            kind="server_error",
            status=status,
            seconds=retry_after or 0.0,
            retry_after_header=retry_after is not None,
        )

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending any response."""
        return cls(kind="drop")

    @classmethod
    def malformed(cls, form: MalformedForm = "html", *, status: int = 200) -> Fault:
        """A complete response whose body is not what the client expects.

        ``"html"``: an nginx-style HTML page. ``"truncated_json"``: the real answer's JSON
        cut in half (with a matching ``Content-Length``, so only the JSON is broken).
        """
        return cls(kind="malformed", form=form, status=status)

    @classmethod
    def incomplete(cls) -> Fault:
        """Send the real answer's headers and half its body, then close the connection."""
        return cls(kind="incomplete")

    @classmethod
    def respond(
        cls, status: int, body: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> Fault:
        """Any response: ``body`` is sent as JSON unless it is ``str`` or ``bytes``."""
        return cls(kind="respond", status=status, body=body, headers=dict(headers or {}))


def _rate(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("a fault rate is between 0.0 and 1.0")
    return value


@attrs.frozen(kw_only=True)
class FaultConfig:
    """Random faults: the share of reads (0.0-1.0) that get each kind, from a seeded RNG.

    The draws depend only on ``seed`` and the order of requests, so a sequential client sees
    the same faults on every run. ``wait`` is what the injected 429s ask for.
    """

    rate_limit: float = attrs.field(default=0.0, converter=_rate)
    server_error: float = attrs.field(default=0.0, converter=_rate)
    drop: float = attrs.field(default=0.0, converter=_rate)
    malformed: float = attrs.field(default=0.0, converter=_rate)
    seed: int = 0
    wait: float = DEFAULT_WAIT
    server_error_statuses: tuple[int, ...] = (500, 502, 503)
    malformed_forms: tuple[MalformedForm, ...] = ("html", "truncated_json")

    def __attrs_post_init__(self) -> None:
        if self.total > 1.0 + 1e-9:
            raise ValueError("the fault rates add up to more than 1.0")

    @property
    def total(self) -> float:
        """The share of reads that get some fault."""
        return self.rate_limit + self.server_error + self.drop + self.malformed


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """A request as the sandbox saw it, and the fault it got (``None``: none)."""

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str] = attrs.field(hash=False)
    body: bytes
    fault: FaultKind | None

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query string, decoded (``request.query["_skip"]``)."""
        return MultiDictProxy(MultiDict(parse_qsl(self.query_string, keep_blank_values=True)))

    def json(self) -> Any:
        """The body, decoded as JSON."""
        return json.loads(self.body)


class FaultRenderer(Protocol):
    """How a vendor app words the faults whose form is vendor-specific."""

    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        """The vendor's 429 asking for ``fault.seconds``."""
        ...

    def server_error(self, request: web.Request, status: int) -> web.StreamResponse:
        """The vendor's 5xx."""
        ...


class FaultInjector:
    """Per-app fault state: the scripted queue, the random faults, latency and counters."""

    def __init__(
        self,
        renderer: FaultRenderer,
        *,
        config: FaultConfig | None = None,
        latency: Latency = 0.0,
        log_size: int = 10_000,
    ) -> None:
        self.renderer = renderer
        self.config = config or FaultConfig()
        self.latency = latency
        self.script: deque[Fault] = deque()
        self.request_count = 0
        self.fault_count = 0
        self.requests: deque[RecordedRequest] = deque(maxlen=log_size)
        #: Called with each request as it arrives (recorded, before it is answered): a
        #: test changes the data here "while a listing runs", deterministically.
        self.on_request: list[Callable[[RecordedRequest], None]] = []
        self._rng = random.Random(f"faults:{self.config.seed}")  # noqa: S311 - not crypto
        self._latency_rng = random.Random(f"latency:{self.config.seed}")  # noqa: S311

    def push(self, *faults: Fault) -> None:
        """Queue faults for the next reads, in order; once used up, reads answer normally."""
        self.script.extend(faults)

    def extend(self, faults: Iterable[Fault]) -> None:
        """Queue faults from an iterable (see :meth:`push`)."""
        self.script.extend(faults)

    def reset(self) -> None:
        """Forget the script, the counters and the log, and restart the RNGs."""
        self.script.clear()
        self.request_count = 0
        self.fault_count = 0
        self.requests.clear()
        self._rng = random.Random(f"faults:{self.config.seed}")  # noqa: S311
        self._latency_rng = random.Random(f"latency:{self.config.seed}")  # noqa: S311

    def next_latency(self) -> float:
        """The latency of the next request."""
        if isinstance(self.latency, tuple):
            low, high = self.latency
            return self._latency_rng.uniform(low, high)
        return float(self.latency)

    def next_fault(self) -> Fault | None:
        """The fault for the next read: the script's head, else a random draw, else ``None``."""
        if self.script:
            fault = self.script.popleft()
            return None if fault.kind == "ok" else fault
        config = self.config
        if config.total <= 0.0:
            return None
        roll = self._rng.random()
        if roll < config.rate_limit:
            return Fault.rate_limit(config.wait)
        roll -= config.rate_limit
        if roll < config.server_error:
            return Fault.server_error(self._rng.choice(config.server_error_statuses))
        roll -= config.server_error
        if roll < config.drop:
            return Fault.drop()
        roll -= config.drop
        if roll < config.malformed:
            form = self._rng.choice(config.malformed_forms)
            return Fault.malformed(form, status=self._rng.choice((200, 502)))
        return None


#: Where each app keeps its injector.
FAULTS: Final = web.AppKey("close_opps_sandbox_faults", FaultInjector)


def _drop(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=599)  # never sent: the connection is gone


async def _real(request: web.Request, handler: Handler) -> web.Response:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if not isinstance(response, web.Response):  # pragma: no cover - apps return Response
        raise TypeError("the sandbox apps answer with web.Response")
    return response


def _passthrough_headers(response: web.StreamResponse) -> dict[str, str]:
    skip = {"content-length", "content-type", "transfer-encoding"}
    return {k: v for k, v in response.headers.items() if k.lower() not in skip}


async def _apply(request: web.Request, handler: Handler, fault: Fault) -> web.StreamResponse:
    injector = request.app[FAULTS]
    kind = fault.kind
    if kind == "delay":
        await asyncio.sleep(fault.seconds)
        return await handler(request)
    if kind == "rate_limit":
        return injector.renderer.rate_limited(request, fault)
    if kind == "server_error":
        response = injector.renderer.server_error(request, fault.status or 500)
        if fault.retry_after_header:
            response.headers["Retry-After"] = format_seconds(fault.seconds)
        return response
    if kind == "drop":
        return _drop(request)
    if kind == "respond":
        body = fault.body
        headers = dict(fault.headers)
        if isinstance(body, str):
            body = body.encode()
        if isinstance(body, bytes):
            return web.Response(status=fault.status or 200, body=body, headers=headers)
        if body is None:
            return web.Response(status=fault.status or 200, headers=headers)
        return web.json_response(body, status=fault.status or 200, headers=headers)
    if kind == "malformed" and fault.form == "html":
        status = fault.status or 200
        return web.Response(
            status=status,
            text=gateway_page(status if status >= 500 else 503),
            content_type="text/html",
        )
    real = await _real(request, handler)
    body = real.body if isinstance(real.body, bytes) else b""
    half = body[: max(1, len(body) // 2)]
    if kind == "malformed":  # truncated JSON, complete HTTP message
        return web.Response(
            status=fault.status or 200,
            body=half,
            content_type="application/json",
            headers=_passthrough_headers(real),
        )
    # incomplete: promise the whole body, send half, hang up
    stream = web.StreamResponse(status=real.status, headers=_passthrough_headers(real))
    stream.content_type = real.content_type
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(half)
    if request.transport is not None:
        request.transport.close()
    return stream


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and record the request, add latency, and apply the next fault, if any."""
    injector = request.app[FAULTS]
    injector.request_count += 1
    body = await request.read() if request.can_read_body else b""
    fault = injector.next_fault() if request.method in _READS else None
    recorded = RecordedRequest(
        method=request.method,
        path=request.path,
        query_string=request.query_string,
        headers=CIMultiDictProxy(CIMultiDict(request.headers)),
        body=body,
        fault=fault.kind if fault else None,
    )
    injector.requests.append(recorded)
    for hook in list(injector.on_request):
        hook(recorded)
    latency = injector.next_latency() if request.method in _READS else 0.0
    if latency > 0:
        await asyncio.sleep(latency)
    if fault is None:
        return await handler(request)
    injector.fault_count += 1
    return await _apply(request, handler, fault)
