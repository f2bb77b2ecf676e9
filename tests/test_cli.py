"""The ``close-opps`` command line: commands, formats, exit codes and one-line errors.

Most tests run the typer app in-process (``CliRunner``) against the embedded sandbox
(``--sandbox``) or against a sandbox served from a background thread (``--base-url`` and
``--api-key``, as against a real CRM). A few run the installed ``close-opps`` script.
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from close_opps.cli import _app, _render, _runtime, app
from close_opps.model import Money, Opportunity, OpportunityStatus, Ref
from close_opps.sandbox import Fault, Sandbox

#: Every variable the command line reads, unset for each in-process run.
_ENV_NAMES = [
    f"{provider}_{suffix}"
    for provider in ("CLOSE", "GETRAZE", "REEVO")
    for suffix in ("API_KEY", "BASE_URL")
]
CLEAN_ENV: dict[str, str | None] = dict.fromkeys(_ENV_NAMES)

SCRIPT = Path(sys.executable).with_name("close-opps")
#: A line of ``close-opps sandbox serve`` naming one emulator: vendor, base URL, key.
SERVED_LINE = re.compile(r"^\s+(close|getraze|reevo)\s+(http://127\.0\.0\.1:\d+\S*)\s+key: (\S+)")


# ------------------------------------------------------------------------------ helpers


#: click < 8.2 (typer < 0.26) mixes stderr into stdout unless told not to.
_RUNNER_OPTIONS: dict[str, Any] = (
    {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
)


def invoke(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    """Run ``close-opps ARGS`` in-process, with no key or base URL in the environment."""
    runner = CliRunner(**_RUNNER_OPTIONS)
    return runner.invoke(app, list(args), env={**CLEAN_ENV, "COLUMNS": "200", **(env or {})})


def assert_one_error_line(result: Result, *, exit_code: int, contains: str) -> str:
    """The run failed with ``exit_code`` and exactly one ``close-opps: error:`` line."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("close-opps: error: "), lines[0]
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return lines[0]


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ServedSandbox:
    """A :class:`Sandbox` running on its own event loop in a background thread, so that
    in-process ``close-opps`` runs (each with its own ``asyncio.run``) can call it."""

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.sandbox = Sandbox(**options)

    def __enter__(self) -> Sandbox:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sandbox.start(), self._loop).result(10)
        return self.sandbox

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def _served() -> Iterator[Sandbox]:
    with ServedSandbox(seed=11, records=40) as sandbox:
        yield sandbox


@pytest.fixture
def served(_served: Sandbox) -> Sandbox:
    """The background sandbox, its request logs and counters cleared."""
    _served.reset()
    return _served


def at(server: Any, key: str | None = None) -> list[str]:
    """``--base-url`` and ``--api-key`` of one emulator (its own key unless given)."""
    return ["--base-url", server.base_url, "--api-key", key or server.api_key]


# ------------------------------------------------------------------------ the program


def test_importing_the_package_has_no_side_effects() -> None:
    code = (
        "import sys, close_opps.cli\n"
        "assert 'typer' not in sys.modules and 'rich' not in sys.modules, 'eager import'\n"
        "assert callable(close_opps.cli.main)\n"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""


def test_help_lists_every_command() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("demo", "list", "get", "sync", "providers", "sandbox"):
        assert command in result.stdout


def test_no_command_prints_help() -> None:
    result = invoke([])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_version_and_providers() -> None:
    version = invoke(["--version"])
    assert version.exit_code == 0
    assert version.stdout.startswith("close-opps ")
    names = invoke(["providers"])
    assert names.exit_code == 0
    assert {"close", "getraze", "reevo"} <= set(names.stdout.split())


# ------------------------------------------------------------------------------- list


@pytest.mark.parametrize("provider", ["close", "getraze", "reevo"])
def test_list_jsonl_carries_the_normalized_record(provider: str) -> None:
    result = invoke(["list", provider, "--sandbox", "--format", "jsonl", "--limit", "5"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    records = jsonl(result.stdout)
    assert len(records) == 5
    for record in records:
        assert record["provider"] == provider
        assert record["id"]
        assert "raw" in record
        datetime.fromisoformat(record["updated_at"])
        if record["amount"] is not None:
            assert isinstance(record["amount"]["amount"], str)  # exact decimal, as text
            Decimal(record["amount"]["amount"])


def test_list_jsonl_without_raw() -> None:
    result = invoke(["list", "close", "--sandbox", "-f", "jsonl", "--limit", "2", "--no-raw"])
    assert result.exit_code == 0
    assert all("raw" not in record for record in jsonl(result.stdout))


def test_list_defaults_to_jsonl_when_stdout_is_not_a_terminal() -> None:
    result = invoke(["list", "reevo", "--sandbox", "--limit", "3"])
    assert result.exit_code == 0
    assert [r["provider"] for r in jsonl(result.stdout)] == ["reevo"] * 3


def test_list_csv_has_a_header_and_flat_columns() -> None:
    result = invoke(["list", "getraze", "--sandbox", "--format", "csv", "--limit", "4"])
    assert result.exit_code == 0, result.stderr
    reader = csv.DictReader(io.StringIO(result.stdout))
    rows = list(reader)
    assert reader.fieldnames == [column.name for column in _render.csv_columns()]
    for name in ("provider", "id", "amount", "currency", "owner_name", "stage_name", "status"):
        assert name in reader.fieldnames
    assert "raw" not in reader.fieldnames
    assert len(rows) == 4
    assert {row["provider"] for row in rows} == {"getraze"}
    for row in rows:
        if row["amount"]:
            Decimal(row["amount"])
            assert row["currency"]


def test_list_csv_of_nothing_is_the_header_alone() -> None:
    result = invoke(["list", "close", "--sandbox", "-f", "csv", "--limit", "0"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [",".join(c.name for c in _render.csv_columns())]


def test_list_table_renders() -> None:
    ids = [r["id"] for r in jsonl(invoke(["list", "close", "--sandbox", "--limit", "3"]).stdout)]
    result = invoke(["list", "close", "--sandbox", "--format", "table", "--limit", "3"])
    assert result.exit_code == 0, result.stderr
    assert "updated (UTC)" in result.stdout
    assert "3 opportunities" in result.stdout
    for opportunity_id in ids:
        assert opportunity_id in result.stdout


def test_list_options_reach_the_adapter(served: Sandbox) -> None:
    result = invoke(
        [
            "list",
            "close",
            "--since",
            "2025-06-01",
            "--status",
            "won",
            "--limit",
            "3",
            *at(served.close),
        ]
    )
    assert result.exit_code == 0, result.stderr
    records = jsonl(result.stdout)
    assert 0 < len(records) <= 3
    since = datetime(2025, 6, 1, tzinfo=UTC)
    for record in records:
        assert record["status"] == "won"
        assert datetime.fromisoformat(record["updated_at"]) >= since
    (request,) = served.close.requests
    assert request.query["status_type"] == "won"
    assert request.query["date_updated__gte"] == "2025-06-01T00:00:00+00:00"
    assert request.query["_limit"] == "3"


def test_list_naive_since_is_utc_and_statuses_repeat(served: Sandbox) -> None:
    args = ["list", "close", "--since", "2025-03-01T08:30", "--status", "won", "--status", "lost"]
    result = invoke([*args, *at(served.close)])
    assert result.exit_code == 0, result.stderr
    assert {r["status"] for r in jsonl(result.stdout)} <= {"won", "lost"}
    query = served.close.requests[0].query
    assert query["date_updated__gte"] == "2025-03-01T08:30:00+00:00"


def test_keys_and_base_urls_come_from_the_environment(served: Sandbox) -> None:
    env = {"REEVO_API_KEY": served.reevo.api_key, "REEVO_BASE_URL": served.reevo.base_url}
    result = invoke(["list", "reevo", "--limit", "2"], env=env)
    assert result.exit_code == 0, result.stderr
    assert len(jsonl(result.stdout)) == 2
    assert served.reevo.request_count >= 1


def test_progress_display_keeps_stdout_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runtime, "stderr_is_terminal", lambda: True)
    result = invoke(["list", "close", "--sandbox", "-f", "jsonl", "--limit", "30"])
    assert result.exit_code == 0, result.stderr
    assert len(jsonl(result.stdout)) == 30


# -------------------------------------------------------------------------------- get


def test_get_jsonl_and_table(served: Sandbox) -> None:
    opportunity_id = served.getraze.ids[0]
    result = invoke(["get", "getraze", opportunity_id, "--format", "jsonl", *at(served.getraze)])
    assert result.exit_code == 0, result.stderr
    (record,) = jsonl(result.stdout)
    assert (record["provider"], record["id"]) == ("getraze", opportunity_id)

    table = invoke(["get", "getraze", opportunity_id, "-f", "table", *at(served.getraze)])
    assert table.exit_code == 0, table.stderr
    assert opportunity_id in table.stdout
    for field in ("field", "value", "amount", "currency", "owner_name", "updated_at"):
        assert field in table.stdout


def test_get_with_the_sandbox() -> None:
    first = jsonl(invoke(["list", "reevo", "--sandbox", "--limit", "1"]).stdout)[0]
    result = invoke(["get", "reevo", first["id"], "--sandbox", "--no-raw"])
    assert result.exit_code == 0, result.stderr
    assert jsonl(result.stdout) == [{k: v for k, v in first.items() if k != "raw"}]


# ----------------------------------------------------------------------------- errors


def test_bad_key_is_one_line_and_never_shows_the_key(served: Sandbox) -> None:
    result = invoke(["list", "close", *at(served.close, key="wrong-key-4242")])
    line = assert_one_error_line(result, exit_code=1, contains="close: HTTP 401")
    assert "wrong-key-4242" not in result.output
    assert line.startswith("close-opps: error: close: HTTP 401")


def test_verbose_logs_go_to_stderr_and_never_show_the_key(served: Sandbox) -> None:
    served.close.script(Fault.server_error(503), Fault.server_error(503))
    result = invoke(["-vv", "list", "close", "--limit", "1", *at(served.close)])
    assert result.exit_code == 0, result.stderr
    assert len(jsonl(result.stdout)) == 1
    assert "retrying" in result.stderr  # the SDK's retry warnings, shown at -v and above
    assert served.close.api_key not in result.stderr

    wrong = invoke(["-vv", "list", "close", *at(served.close, key="secret-vv-key")])
    assert wrong.exit_code == 1
    assert wrong.stderr.splitlines()[-1].startswith("close-opps: error: close: HTTP 401")
    assert "secret-vv-key" not in wrong.output


def test_not_found() -> None:
    result = invoke(["get", "close", "oppo_does_not_exist", "--sandbox"])
    assert_one_error_line(result, exit_code=1, contains="HTTP 404")


def test_unreachable_host_after_retries_is_one_line() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/api/v1"
    result = invoke(["list", "close", "--base-url", base_url, "--api-key", "k-123456"])
    assert_one_error_line(result, exit_code=1, contains="Cannot connect")


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["list", "close", "--sandbox", "--status", "bogus"], "--status"),
        (["list", "close", "--sandbox", "--since", "yesterday"], "ISO 8601"),
        (["list", "close", "--sandbox", "--limit", "-1"], "--limit"),
        (["list", "close", "--sandbox", "--format", "xml"], "--format"),
        (["list", "close"], "CLOSE_API_KEY"),
        (["sync", "--db", "x.db", "close", "getraze", "--api-key", "k"], "GETRAZE_API_KEY"),
        (["list", "nocrm", "--sandbox"], "unknown provider 'nocrm'"),
        (["list", "close", "--sandbox", "--base-url", "http://127.0.0.1:1"], "--sandbox"),
        (["list", "close", "--api-key", "k", "--base-url", "http://example.com/"], "https"),
        (["list"], "PROVIDER"),
        (["get", "close", " ", "--sandbox"], "ID"),
        (["sync", "--sandbox"], "--db"),
        (["lisst"], "No such command"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], contains: str) -> None:
    assert_one_error_line(invoke(args), exit_code=2, contains=contains)


def test_keyboard_interrupt_exits_130_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(main: Any) -> Any:
        main.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(_app, "run", interrupted)
    result = invoke(["list", "close", "--sandbox"])
    assert result.exit_code == 130
    assert result.output == ""


# ------------------------------------------------------------------------------- demo


def test_demo_shows_the_latest_and_the_summary() -> None:
    result = invoke(["demo", "--records", "20", "--top", "5"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Read 60 opportunities from 3 CRM emulators" in out
    assert "The 5 most recently updated" in out
    assert "By provider and status" in out
    assert "Open pipeline by currency" in out
    for provider in ("close", "getraze", "reevo"):
        assert re.search(rf"^\s*{provider}\s+\d+\s+\d+\s+\d+\s+20\s*$", out, re.M), out
    assert re.search(r"^\s*all\s+\d+\s+\d+\s+\d+\s+60\s*$", out, re.M), out
    assert re.search(r"^\s*USD\s+\d+\s+[\d,]+\.\d\d\s*$", out, re.M), out


def test_summary_sums_exact_decimals() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)

    def opp(n: int, amount: str | None, currency: str | None, status: str) -> Opportunity:
        return Opportunity(
            provider="close" if n % 2 else "reevo",
            id=str(n),
            created_at=now,
            updated_at=now + timedelta(minutes=n),
            status=OpportunityStatus(status),
            amount=Money(amount=Decimal(amount), currency=currency) if amount else None,
            owner=Ref(name="Ana"),
        )

    records = [
        opp(1, "0.10", "USD", "open"),
        opp(2, "0.20", "USD", "open"),
        opp(3, "1000000.005", "EUR", "open"),
        opp(4, "7", None, "open"),
        opp(5, "99", "USD", "won"),
        opp(6, None, None, "open"),
    ]
    summary = _render.summarize(records)
    assert summary.open_by_currency == {
        "(none)": (1, Decimal("7")),
        "EUR": (1, Decimal("1000000.005")),
        "USD": (2, Decimal("0.30")),
    }
    assert summary.open_without_amount == 1
    assert summary.counts["close"] == {OpportunityStatus.OPEN: 2, OpportunityStatus.WON: 1}
    assert summary.counts["reevo"] == {OpportunityStatus.OPEN: 3}
    buffer = io.StringIO()
    stdout, sys.stdout = sys.stdout, buffer
    try:
        _render.print_summary(summary)
    finally:
        sys.stdout = stdout
    assert "0.30" in buffer.getvalue()
    assert "1,000,000.005" in buffer.getvalue()


# ------------------------------------------------------------------------------- sync


def _sync_rows(stdout: str) -> dict[str, list[int]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("close", "getraze", "reevo"):
            rows[parts[0]] = [int(n) for n in parts[1:6]]  # inserted ... deleted, total
    return rows


def test_sync_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    db = tmp_path / "opps.db"
    first = invoke(["sync", "--db", str(db), "--sandbox"])
    assert first.exit_code == 0, first.stderr
    rows = _sync_rows(first.stdout)
    assert set(rows) == {"close", "getraze", "reevo"}
    assert all(inserted == 60 and updated == 0 for inserted, updated, *_ in rows.values())
    assert "180 opportunities stored" in first.stdout

    second = invoke(["sync", "--db", str(db), "--sandbox"])
    assert second.exit_code == 0, second.stderr
    for inserted, updated, unchanged, _deleted, total in _sync_rows(second.stdout).values():
        assert (inserted, updated) == (0, 0)
        assert unchanged == total
    assert "180 opportunities stored" in second.stdout


def test_sync_of_named_providers_against_a_server(served: Sandbox, tmp_path: Path) -> None:
    env = {
        "CLOSE_API_KEY": served.close.api_key,
        "CLOSE_BASE_URL": served.close.base_url,
        "REEVO_API_KEY": served.reevo.api_key,
        "REEVO_BASE_URL": served.reevo.base_url,
    }
    result = invoke(["sync", "--db", str(tmp_path / "two.db"), "close", "reevo"], env=env)
    assert result.exit_code == 0, result.stderr
    assert _sync_rows(result.stdout) == {"close": [40, 0, 0, 0, 40], "reevo": [40, 0, 0, 0, 40]}


def test_sync_reports_the_providers_that_failed(served: Sandbox, tmp_path: Path) -> None:
    env = {
        "CLOSE_API_KEY": served.close.api_key,
        "CLOSE_BASE_URL": served.close.base_url,
        "GETRAZE_API_KEY": "not-the-key",
        "GETRAZE_BASE_URL": served.getraze.base_url,
    }
    result = invoke(["sync", "--db", str(tmp_path / "o.db"), "close", "getraze"], env=env)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("close-opps: error: sync failed: getraze: HTTP 401")
    assert "not-the-key" not in result.output
    assert _sync_rows(result.stdout) == {"close": [40, 0, 0, 0, 40]}


def test_sync_to_an_unusable_database_is_one_line(tmp_path: Path) -> None:
    result = invoke(["sync", "--db", str(tmp_path / "missing" / "o.db"), "--sandbox"])
    assert_one_error_line(result, exit_code=1, contains="cannot use the database")


# ---------------------------------------------------------------------- parse helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC)),
        ("2025-01-31T09:30", datetime(2025, 1, 31, 9, 30, tzinfo=UTC)),
        ("2025-01-31T09:30:00Z", datetime(2025, 1, 31, 9, 30, tzinfo=UTC)),
        (
            "2025-01-31T09:30:00+01:00",
            datetime(2025, 1, 31, 9, 30, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_parse_datetime(text: str, expected: datetime) -> None:
    parsed = _app.parse_datetime(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


def test_parse_datetime_rejects_other_text() -> None:
    with pytest.raises(typer.BadParameter):
        _app.parse_datetime("last tuesday")


def test_csv_columns_cover_every_field_but_raw() -> None:
    fields = {column.field for column in _render.csv_columns()}
    from close_opps.serialize import FIELDS

    assert fields == set(FIELDS) - {"raw"}


# ------------------------------------------------------------- the installed script


def _script_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_NAMES}
    env.pop("COLUMNS", None)
    return env


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e '.[test]' installs it"
    return subprocess.run(  # noqa: S603
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_script_env(),
    )


def test_script_demo() -> None:
    done = _script("demo")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "Read 180 opportunities" in done.stdout
    assert "By provider and status" in done.stdout
    assert "Open pipeline by currency" in done.stdout


def test_script_list_jsonl() -> None:
    done = _script("list", "close", "--sandbox", "--format", "jsonl", "--limit", "5")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    records = jsonl(done.stdout)
    assert len(records) == 5
    assert {r["provider"] for r in records} == {"close"}


def test_script_error_is_one_line() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/api/v1"
    args = ["--base-url", base_url, "--api-key", "s3cr3t-key", "--retries", "0"]
    done = _script("get", "close", "x", *args)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("close-opps: error: close: ")
    assert "s3cr3t-key" not in done.stderr


def test_script_sandbox_serve_until_sigint() -> None:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e '.[test]' installs it"
    proc = subprocess.Popen(  # noqa: S603
        [str(SCRIPT), "sandbox", "serve", "--records", "5", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_script_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None

    def read(stream: io.TextIOBase) -> None:
        for line in stream:
            lines.put(line)

    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        urls: dict[str, tuple[str, str]] = {}
        while len(urls) < 3:
            line = lines.get(timeout=20)
            found = SERVED_LINE.match(line)
            if found:
                urls[found[1]] = (found[2], found[3])
        base_url, key = urls["close"]
        result = invoke(["list", "close", "--base-url", base_url, "--api-key", key, "--limit", "2"])
        assert result.exit_code == 0, result.stderr
        assert len(jsonl(result.stdout)) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in stderr
    assert "sandbox stopped" in stderr
