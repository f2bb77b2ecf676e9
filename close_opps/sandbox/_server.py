"""Run the vendor emulators on 127.0.0.1: the :class:`Sandbox` context manager."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

import attrs
from aiohttp import web

from . import close as _close_app
from . import getraze as _getraze_app
from . import reevo as _reevo_app
from ._common import JSON, STATE, Clock, VendorState
from ._data import Deal
from ._events import EventLog
from ._faults import FAULTS, Fault, FaultConfig, FaultInjector, Latency, RecordedRequest
from ._options import DEFAULT_RECORDS, CloseOptions, GetrazeOptions, ReevoOptions

__all__ = ["HOST", "VENDORS", "Sandbox", "VendorName", "VendorServer", "serve_forever"]

VendorName = Literal["close", "getraze", "reevo"]
#: The vendors the sandbox emulates, in the order they start.
VENDORS: Final[tuple[VendorName, ...]] = get_args(VendorName)
#: The only address the sandbox binds.
HOST: Final = "127.0.0.1"

_BASE_PATHS: Final[Mapping[VendorName, str]] = {
    "close": _close_app.BASE_PATH,
    "getraze": _getraze_app.BASE_PATH,
    "reevo": _reevo_app.BASE_PATH,
}


class VendorServer:
    """One running vendor emulator: where it is, its key, its data, its faults and counters."""

    def __init__(
        self, name: VendorName, app: web.Application, runner: web.AppRunner, port: int
    ) -> None:
        self.name: VendorName = name
        self.app = app
        self.runner = runner
        self.port = port

    # -- where and how to call it

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The base URL an SDK adapter takes, e.g. ``http://127.0.0.1:PORT/api/v1``."""
        return f"{self.origin}{_BASE_PATHS[self.name]}"

    @property
    def api_key(self) -> str:
        """The API key the emulator accepts."""
        return self.state.api_key

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a plain HTTP client the way the vendor documents."""
        if self.name == "close":
            token = base64.b64encode(f"{self.api_key}:".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        if self.name == "getraze":
            return {"X-API-Key": self.api_key}
        return {"Authorization": f"Bearer {self.api_key}"}

    # -- data

    @property
    def state(self) -> VendorState:
        """The app's state: records, options, limiter."""
        return self.app[STATE]

    @property
    def records(self) -> list[JSON]:
        """The records as the list endpoint serves them, in seed order."""
        return self.state.records

    @property
    def deals(self) -> list[Deal]:
        """The vendor-neutral deals behind :attr:`records` (same order)."""
        return self.state.deals

    @property
    def ids(self) -> list[str]:
        """The ids of :attr:`records`, in seed order."""
        state = self.state
        ids = state.cached("ids", lambda: [str(record["id"]) for record in state.records])
        return list(ids)

    def record(self, record_id: str) -> JSON:
        """The record as ``get`` serves it (``KeyError`` if unknown)."""
        return self.state.details[record_id]

    def deal(self, record_id: str) -> Deal:
        """The vendor-neutral deal behind a record (``KeyError`` if unknown)."""
        return self.state.deal(record_id)

    def create(self, **fields: Any) -> JSON:
        """Add a record now, as a user would in the CRM; ``fields`` override :class:`Deal`
        fields of the generated deal (``company`` is Close's lead). Returns the record as
        listed, under a new id. Close logs ``opportunity`` ``created``."""
        return self.state.create(**fields)

    def edit(self, record_id: str, **changes: Any) -> JSON:
        """Change :class:`Deal` fields of a record now, as a user would in the CRM: its
        update time becomes the clock's now (unless ``changes`` sets ``updated_at``). Close
        logs ``opportunity`` ``updated`` (consolidated with a recent one of that record)."""
        return self.state.edit(record_id, **changes)

    def touch(self, record_id: str, at: datetime) -> JSON:
        """Set a record's update time, as an edit in the CRM would; returns the new record."""
        return self.state.touch(record_id, at)

    def update(self, record_id: str, **changes: Any) -> JSON:
        """Change fields of the deal behind a record (see :class:`Deal`) and re-render it
        (the update time changes only if ``changes`` says so; :meth:`edit` dates it now)."""
        return self.state.update(record_id, **changes)

    def remove(self, record_id: str) -> None:
        """Delete a record (Close logs ``opportunity`` ``deleted``)."""
        self.state.remove(record_id)

    def delete(self, record_id: str) -> None:
        """Delete a record (the same as :meth:`remove`)."""
        self.state.remove(record_id)

    # -- Close leads and the event log

    @property
    def events(self) -> EventLog:
        """Close's event log: ``events.events()`` (newest first), ``events.listeners`` (called
        with each event as it is logged). ``LookupError`` for the other vendors."""
        log = self.state.events
        if log is None:
            raise LookupError(f"the {self.name} emulator has no event log")
        return log

    def lead_ids(self) -> list[str]:
        """Close: the ids of the leads that have opportunities, in first-seen order."""
        self._close_only("lead_ids")
        return list(dict.fromkeys(str(r["lead_id"]) for r in self.state.records))

    def delete_lead(self, lead_id: str) -> list[str]:
        """Close: delete a lead and all its opportunities, as ``DELETE /lead/{id}/`` would.

        Logs an ``opportunity`` ``deleted`` event per opportunity (``lead_id`` set) and the
        ``lead`` ``deleted`` event, sharing one ``request_id``. Returns the deleted
        opportunity ids.
        """
        self._close_only("delete_lead")
        return _close_app.delete_lead(self.state, lead_id)

    def merge_leads(self, source_lead_id: str, destination_lead_id: str) -> list[str]:
        """Close: merge a lead into another (``POST /lead/merge/``): its opportunities move
        to the destination (``CloseOptions.merge_form`` says how the events show it), the
        source is deleted. Returns the ids of the moved opportunities as they are now."""
        self._close_only("merge_leads")
        return _close_app.merge_leads(self.state, source_lead_id, destination_lead_id)

    def _close_only(self, what: str) -> None:
        if self.name != "close":
            raise LookupError(f"{what} is a Close feature; this is the {self.name} emulator")

    def share_timestamp(
        self,
        at: datetime,
        record_ids: Iterable[str] | None = None,
        *,
        created: bool = True,
        updated: bool = True,
    ) -> None:
        """Seed ties: one creation and/or update time ``at`` for the records (default: all).

        Data seeding, not an edit (nothing is logged). With Getraze's default
        ``tie_order="shuffled"``, a listing over such records behaves as the real server's.
        """
        self.state.share_timestamp(at, record_ids, created=created, updated=updated)

    # -- faults and counters

    @property
    def faults(self) -> FaultInjector:
        """The app's fault injector (script queue, random config, latency, counters)."""
        return self.app[FAULTS]

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next reads of this vendor, in order; then answer normally."""
        self.faults.push(*faults)

    @property
    def on_request(self) -> list[Callable[[RecordedRequest], None]]:
        """Callables run with each request as it arrives, before it is answered (given the
        :class:`RecordedRequest`): change the data there to edit while a sync runs, at a
        chosen page, without timing games."""
        return self.faults.on_request

    @property
    def request_count(self) -> int:
        """Requests this vendor has received (faulted ones included)."""
        return self.faults.request_count

    @property
    def requests(self) -> list[RecordedRequest]:
        """The last requests received (at most 10,000), oldest first."""
        return list(self.faults.requests)

    def reset(self) -> None:
        """Clear the fault script, the counters, the request log and the rate limiter."""
        self.faults.reset()
        self.state.limiter.reset()

    def __repr__(self) -> str:
        return f"<VendorServer {self.name} {self.base_url}>"


def _merge(
    options: Any,
    *,
    seed: int,
    records: int | None,
    latency: Latency | None,
    faults: FaultConfig | None,
    clock: Clock | None = None,
    today: date | None = None,
) -> Any:
    return attrs.evolve(
        options,
        clock=options.clock if options.clock is not None else clock,
        today=options.today if options.today is not None else today,
        seed=options.seed if options.seed is not None else seed,
        records=options.records
        if options.records is not None
        else (records if records is not None else DEFAULT_RECORDS),
        latency=options.latency if options.latency is not None else latency,
        faults=options.faults if options.faults is not None else faults,
    )


class Sandbox:
    """The three vendor emulators, each on its own free port of 127.0.0.1.

    ``async with Sandbox(seed=1) as sb:`` then ``sb.close.base_url`` /
    ``sb.close.api_key`` (likewise ``sb.getraze``, ``sb.reevo``). ``records``, ``latency``,
    ``faults`` and ``clock`` (what dates edits and Close's events; default the wall clock)
    apply to every vendor whose options leave them unset. ``vendors`` picks which
    emulators start; ``ports`` pins ports (0 or absent: a free one). The data is dated
    relative to ``today`` (default: the current UTC date): the same ``seed`` and ``today``
    give the same data.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        records: int | None = None,
        latency: Latency | None = None,
        faults: FaultConfig | None = None,
        clock: Clock | None = None,
        close: CloseOptions | None = None,
        getraze: GetrazeOptions | None = None,
        reevo: ReevoOptions | None = None,
        vendors: Iterable[VendorName] = VENDORS,
        ports: Mapping[str, int] | None = None,
        shutdown_timeout: float = 1.0,
        today: date | None = None,
    ) -> None:
        chosen = tuple(dict.fromkeys(vendors))
        unknown = [name for name in chosen if name not in VENDORS]
        if unknown:
            raise ValueError(f"unknown vendors: {unknown}; choose from {list(VENDORS)}")
        self.seed = seed
        self.vendors: tuple[VendorName, ...] = chosen
        self.ports = dict(ports or {})
        self.shutdown_timeout = shutdown_timeout
        given: dict[VendorName, Any] = {
            "close": close or CloseOptions(),
            "getraze": getraze or GetrazeOptions(),
            "reevo": reevo or ReevoOptions(),
        }
        #: The options each vendor runs with, after applying the Sandbox-wide values.
        self.options: dict[VendorName, Any] = {
            name: _merge(
                opts,
                seed=seed,
                records=records,
                latency=latency,
                faults=faults,
                clock=clock,
                today=today,
            )
            for name, opts in given.items()
        }
        self.servers: dict[VendorName, VendorServer] = {}

    # -- lifecycle

    async def start(self) -> Self:
        """Start the chosen emulators (``async with`` does it for you)."""
        if self.servers:
            raise RuntimeError("the sandbox is already running")
        try:
            for name in self.vendors:
                self.servers[name] = await self._start(name)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self, name: VendorName) -> VendorServer:
        options = self.options[name]
        if name == "close":
            app = _close_app.make_app(options, seed=self.seed)
        elif name == "getraze":
            app = _getraze_app.make_app(options, seed=self.seed)
        else:
            app = _reevo_app.make_app(options, seed=self.seed)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, self.ports.get(name, 0))
            await site.start()
            port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        return VendorServer(name, app, runner, port)

    async def stop(self) -> None:
        """Stop every running emulator."""
        servers, self.servers = self.servers, {}
        for server in servers.values():
            await server.runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- access

    def __getitem__(self, name: str) -> VendorServer:
        try:
            return self.servers[name]  # type: ignore[index]
        except KeyError:
            state = "not started" if name in self.vendors else "not among the chosen vendors"
            raise LookupError(f"the {name!r} emulator is {state}") from None

    @property
    def close(self) -> VendorServer:
        """The Close emulator."""
        return self["close"]

    @property
    def getraze(self) -> VendorServer:
        """The Getraze emulator."""
        return self["getraze"]

    @property
    def reevo(self) -> VendorServer:
        """The Reevo emulator."""
        return self["reevo"]

    def describe(self) -> dict[str, dict[str, str]]:
        """``{vendor: {"base_url": ..., "api_key": ...}}`` of the running emulators."""
        return {
            name: {"base_url": server.base_url, "api_key": server.api_key}
            for name, server in self.servers.items()
        }

    def reset(self) -> None:
        """:meth:`VendorServer.reset` every running emulator."""
        for server in self.servers.values():
            server.reset()

    def __repr__(self) -> str:
        running = ", ".join(f"{n}={s.base_url}" for n, s in self.servers.items()) or "stopped"
        return f"<Sandbox seed={self.seed} {running}>"


async def serve_forever(
    sandbox: Sandbox | None = None, *, on_ready: Callable[[Sandbox], None] | None = None
) -> None:
    """Run ``sandbox`` (default: all vendors on free ports) until the task is cancelled.

    ``on_ready`` is called once every emulator listens (to print :meth:`Sandbox.describe`,
    say). Stops the emulators cleanly on cancellation.
    """
    async with sandbox or Sandbox() as running:
        if on_ready is not None:
            on_ready(running)
        await asyncio.Event().wait()
