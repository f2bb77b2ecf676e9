"""Fault injection: scripted and seeded faults happen as asked, in each vendor's form."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from close_opps.sandbox import Fault, FaultConfig, GetrazeOptions, Sandbox, VendorServer

from ._support import Reply, call


def _read_url(server: VendorServer) -> tuple[str, str]:
    """A read of each vendor: (method, url)."""
    if server.name == "close":
        return "GET", f"{server.base_url}/opportunity/"
    if server.name == "getraze":
        return "GET", f"{server.base_url}/opportunities"
    return "POST", f"{server.base_url}/opportunity/_query"


async def _read(http: aiohttp.ClientSession, server: VendorServer) -> Reply:
    method, url = _read_url(server)
    body: dict[str, object] | None = {} if method == "POST" else None
    return await call(http, method, url, headers=server.auth_headers, json_body=body)


async def test_close_429_form(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.close.script(Fault.rate_limit(0.01), Fault.rate_limit(0.5, retry_after_header=True))
    first, second, third = [await _read(http, sandbox.close) for _ in range(3)]
    assert first.status == second.status == 429
    assert first.headers["RateLimit"] == "limit=1000, remaining=0, reset=0.01"
    assert "Retry-After" not in first.headers
    assert first.body == b""
    assert second.headers["RateLimit"].endswith("remaining=0, reset=0.5")
    assert second.headers["Retry-After"] == "0.5"
    assert third.status == 200


async def test_getraze_429_form(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.getraze.script(Fault.rate_limit(0.02), Fault.rate_limit(1))
    first, second = [await _read(http, sandbox.getraze) for _ in range(2)]
    assert first.status == 429
    assert first.json() == {
        "success": False,
        "error": {
            "code": "RATE_LIMIT_EXCEEDED",
            "message": "Rate limit of 10000 requests per hour exceeded. Try again later.",
            "retry_after": 0.02,
        },
    }
    assert "Retry-After" not in first.headers
    assert first.headers["X-RateLimit-Remaining"] == "0"
    assert second.json()["error"]["retry_after"] == 1
    assert isinstance(second.json()["error"]["retry_after"], int)


async def test_reevo_429_form(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.reevo.script(Fault.rate_limit(0.03), Fault.rate_limit(2, retry_after_header=False))
    first, second = [await _read(http, sandbox.reevo) for _ in range(2)]
    assert first.status == second.status == 429
    assert first.headers["Retry-After"] == "0.03"
    assert "Retry-After" not in second.headers
    assert first.json()["error"] == "rate_limit_exceeded"


async def test_scripted_sequence_then_normal(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    server = sandbox.reevo  # its reads are POSTs, which aiohttp never resends by itself
    server.script(
        Fault.rate_limit(0.01),
        Fault.rate_limit(0.01),
        Fault.drop(),
        Fault.ok(),
        Fault.server_error(503),
    )
    statuses: list[int | str] = []
    for _ in range(6):
        try:
            statuses.append((await _read(http, server)).status)
        except aiohttp.ServerDisconnectedError:
            statuses.append("dropped")
    assert statuses == [429, 429, "dropped", 200, 503, 200]
    assert server.request_count == 6
    assert [r.fault for r in server.requests] == [
        "rate_limit",
        "rate_limit",
        "drop",
        None,
        "server_error",
        None,
    ]
    assert server.faults.fault_count == 4
    assert not server.faults.script


async def test_aiohttp_resends_a_get_once_after_a_drop(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    # aiohttp's client resends an idempotent request once when the server hangs up, so a
    # GET only fails when two drops come in a row; the sandbox sees both requests.
    server = sandbox.close
    server.script(Fault.drop())
    assert (await _read(http, server)).status == 200
    assert [r.fault for r in server.requests] == ["drop", None]
    server.script(Fault.drop(), Fault.drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _read(http, server)
    assert server.request_count == 4


@pytest.mark.parametrize("vendor", ["close", "getraze", "reevo"])
async def test_server_errors(sandbox: Sandbox, http: aiohttp.ClientSession, vendor: str) -> None:
    server = sandbox[vendor]
    server.script(
        Fault.server_error(500),
        Fault.server_error(502),
        Fault.server_error(503, retry_after=0.02),
    )
    internal, bad_gateway, unavailable = [await _read(http, server) for _ in range(3)]
    assert "Retry-After" not in internal.headers and "Retry-After" not in bad_gateway.headers
    assert unavailable.headers["Retry-After"] == "0.02"
    assert internal.status == 500
    if vendor == "close":
        assert internal.json() == {"error": "Internal Server Error"}
    elif vendor == "getraze":
        assert internal.json()["error"]["code"] == "INTERNAL_ERROR"
    else:
        assert internal.body == b"Internal Server Error"
    for reply, status in ((bad_gateway, 502), (unavailable, 503)):
        assert reply.status == status
        assert reply.headers["Content-Type"].startswith("text/html")
        assert f"<title>{status} ".encode() in reply.body


@pytest.mark.parametrize("vendor", ["close", "getraze", "reevo"])
async def test_malformed_bodies(sandbox: Sandbox, http: aiohttp.ClientSession, vendor: str) -> None:
    server = sandbox[vendor]
    server.script(
        Fault.malformed("html"),
        Fault.malformed("truncated_json"),
        Fault.malformed("truncated_json", status=502),
    )
    html, truncated, truncated_502 = [await _read(http, server) for _ in range(3)]
    assert html.status == 200 and html.headers["Content-Type"].startswith("text/html")
    assert html.body.startswith(b"<html>")
    for reply, status in ((truncated, 200), (truncated_502, 502)):
        assert reply.status == status
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.body.startswith(b"{")
        with pytest.raises(json.JSONDecodeError):
            reply.json()
    assert (await _read(http, server)).status == 200


async def test_incomplete_body(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.getraze.script(Fault.incomplete())
    with pytest.raises(aiohttp.ClientPayloadError):
        await _read(http, sandbox.getraze)
    assert (await _read(http, sandbox.getraze)).status == 200


async def test_drop_on_every_vendor(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    for vendor in ("close", "getraze", "reevo"):
        server = sandbox[vendor]
        method, _ = _read_url(server)
        # a GET is resent once by aiohttp itself (see the test above): drop both
        server.script(*[Fault.drop()] * (2 if method == "GET" else 1))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _read(http, server)
        assert (await _read(http, server)).status == 200


async def test_respond_and_delay(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.reevo.script(
        Fault.respond(401, {"detail": "Token expired"}),
        Fault.respond(200, "not json", headers={"Content-Type": "text/plain"}),
        Fault.delay(0.05),
    )
    expired = await _read(http, sandbox.reevo)
    assert expired.status == 401 and expired.json() == {"detail": "Token expired"}
    text = await _read(http, sandbox.reevo)
    assert text.body == b"not json"
    started = time.perf_counter()
    slow = await _read(http, sandbox.reevo)
    assert slow.status == 200 and time.perf_counter() - started >= 0.05
    timeout = aiohttp.ClientTimeout(total=0.02)
    sandbox.reevo.script(Fault.delay(0.1))
    method, url = _read_url(sandbox.reevo)
    with pytest.raises(TimeoutError):
        async with http.request(
            method, url, json={}, headers=sandbox.reevo.auth_headers, timeout=timeout
        ):
            pass


async def test_only_reads_are_affected(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.close.script(Fault.server_error(500))
    url = f"{sandbox.close.base_url}/opportunity/{sandbox.close.ids[0]}/"
    reply = await call(http, "DELETE", url, headers=sandbox.close.auth_headers)
    assert reply.status == 405
    assert len(sandbox.close.faults.script) == 1
    assert sandbox.close.request_count == 1
    assert (await call(http, "GET", url, headers=sandbox.close.auth_headers)).status == 500


async def _statuses(config: FaultConfig, n: int, http: aiohttp.ClientSession) -> list[int | str]:
    out: list[int | str] = []
    async with Sandbox(vendors=["reevo"], faults=config) as sb:
        for _ in range(n):
            try:
                out.append((await _read(http, sb.reevo)).status)
            except aiohttp.ServerDisconnectedError:
                out.append("dropped")
    return out


async def test_random_faults_are_seeded(http: aiohttp.ClientSession) -> None:
    config = FaultConfig(rate_limit=0.2, server_error=0.2, drop=0.1, malformed=0.1, seed=5)
    first = await _statuses(config, 40, http)
    assert first == await _statuses(config, 40, http)
    assert first != await _statuses(FaultConfig(server_error=0.2, seed=6), 40, http)
    assert {429, 200, "dropped"} <= set(first)
    assert set(first) & {500, 502, 503}
    assert 10 <= sum(1 for s in first if s != 200) <= 35


async def test_fault_config_is_validated() -> None:
    with pytest.raises(ValueError, match=r"between 0\.0 and 1\.0"):
        FaultConfig(drop=1.5)
    with pytest.raises(ValueError, match=r"more than 1\.0"):
        FaultConfig(drop=0.6, server_error=0.6)
    with pytest.raises(ValueError, match="5xx"):
        Fault.server_error(404)


async def test_latency(http: aiohttp.ClientSession) -> None:
    options = GetrazeOptions(latency=(0.01, 0.02))
    async with Sandbox(vendors=["getraze", "reevo"], latency=0.02, getraze=options) as sb:
        started = time.perf_counter()
        await _read(http, sb.reevo)
        assert time.perf_counter() - started >= 0.02
        started = time.perf_counter()
        await _read(http, sb.getraze)
        assert time.perf_counter() - started >= 0.01
        assert sb.getraze.faults.latency == (0.01, 0.02)


async def test_reset_clears_script_and_counters(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.close.script(Fault.drop(), Fault.drop())
    await _read(http, sandbox.reevo)
    sandbox.reset()
    assert sandbox.close.request_count == sandbox.reevo.request_count == 0
    assert sandbox.close.requests == [] and not sandbox.close.faults.script
    assert (await _read(http, sandbox.close)).status == 200
    recorded = sandbox.close.requests[0]
    assert recorded.method == "GET" and recorded.path == "/api/v1/opportunity/"
    assert recorded.headers["authorization"].startswith("Basic ")
    await call(
        http,
        "GET",
        f"{sandbox.close.base_url}/opportunity/",
        headers=sandbox.close.auth_headers,
        params={"_skip": 14, "_limit": 7, "date_updated__gte": "2025-01-01T00:00:00+00:00"},
    )
    query = sandbox.close.requests[-1].query
    assert query["_skip"] == "14" and query["date_updated__gte"] == "2025-01-01T00:00:00+00:00"
    await _read(http, sandbox.reevo)
    assert sandbox.reevo.requests[-1].json() == {}
