"""``close-opps changes``: JSON lines on stdout, the cursor on stderr or in a file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from close_opps.sandbox import Sandbox
from tests.test_cli import ServedSandbox, assert_one_error_line, invoke, jsonl


@pytest.fixture
def served() -> Iterator[Sandbox]:
    with ServedSandbox(seed=4, records=20) as sandbox:
        yield sandbox


def _env(sandbox: Sandbox, provider: str) -> dict[str, str]:
    server = sandbox[provider]
    return {
        f"{provider.upper()}_API_KEY": server.api_key,
        f"{provider.upper()}_BASE_URL": server.base_url,
    }


def test_changes_prints_json_lines_and_the_cursor_on_stderr() -> None:
    result = invoke(["changes", "reevo", "--sandbox", "--no-raw"])
    assert result.exit_code == 0, result.stderr
    lines = jsonl(result.stdout)
    assert len(lines) == 60
    assert {line["kind"] for line in lines} == {"upsert"}
    first = lines[0]
    assert set(first) == {"kind", "provider", "id", "occurred_at", "opportunity"}
    assert first["opportunity"]["id"] == first["id"]
    assert "raw" not in first["opportunity"]
    summary, cursor_line = result.stderr.splitlines()[-2:]
    assert summary.startswith("reevo: 60 upserts, 0 deletes (full reconciliation")
    assert cursor_line.startswith("cursor: coc1.")

    again = invoke(["changes", "reevo", "--sandbox", "--since", cursor_line.split(": ", 1)[1]])
    assert again.exit_code == 0, again.stderr
    assert again.stdout == ""  # the same seeded records: nothing changed
    assert again.stderr.splitlines()[-2] == "reevo: 0 upserts, 0 deletes"


@pytest.mark.parametrize("provider", ["close", "getraze"])
def test_changes_with_a_cursor_file_delivers_deletions(
    served: Sandbox, tmp_path: Path, provider: str
) -> None:
    cursor_file = tmp_path / f"{provider}.cursor"
    args = ["changes", provider, "--cursor-file", str(cursor_file)]
    first = invoke(args, env=_env(served, provider))
    assert first.exit_code == 0, first.stderr
    assert len(jsonl(first.stdout)) == 20
    assert cursor_file.read_text().startswith("coc1.")
    assert "cursor:" not in first.stderr

    gone = served[provider].ids[0]
    served[provider].delete(gone)
    second = invoke(args, env=_env(served, provider))
    assert second.exit_code == 0, second.stderr
    lines = jsonl(second.stdout)
    assert [(line["kind"], line["id"], line["opportunity"]) for line in lines] == [
        ("delete", gone, None)
    ]


def test_a_bad_cursor_is_a_usage_error() -> None:
    result = invoke(["changes", "getraze", "--sandbox", "--since", "not-a-cursor"])
    assert_one_error_line(result, exit_code=2, contains="invalid change cursor")


def test_the_mass_deletion_guard_is_one_line_with_a_hint(served: Sandbox, tmp_path: Path) -> None:
    cursor_file = tmp_path / "g.cursor"
    args = ["changes", "getraze", "--cursor-file", str(cursor_file), "--no-raw"]
    assert invoke(args, env=_env(served, "getraze")).exit_code == 0
    before = cursor_file.read_text()
    for record_id in served.getraze.ids[:15]:
        served.getraze.delete(record_id)
    refused = invoke(args, env=_env(served, "getraze"))
    assert refused.exit_code == 1
    assert "would delete 15 of the 20 known records" in refused.stderr
    assert "--allow-mass-deletion" in refused.stderr
    assert all(line["kind"] == "upsert" for line in jsonl(refused.stdout))
    assert cursor_file.read_text() == before  # the old cursor is kept

    allowed = invoke([*args, "--allow-mass-deletion"], env=_env(served, "getraze"))
    assert allowed.exit_code == 0, allowed.stderr
    deletes = [line for line in jsonl(allowed.stdout) if line["kind"] == "delete"]
    assert len(deletes) == 15
    assert json.loads(json.dumps(deletes[0]))["opportunity"] is None


def test_the_sync_summary_shows_deletions(served: Sandbox, tmp_path: Path) -> None:
    db = str(tmp_path / "opps.db")
    env = _env(served, "reevo")
    first = invoke(["sync", "--db", db, "reevo"], env=env)
    assert first.exit_code == 0, first.stderr
    header = next(line for line in first.stdout.splitlines() if "provider" in line).split()
    assert header[:6] == ["provider", "inserted", "updated", "unchanged", "deleted", "total"]
    served.reevo.delete(served.reevo.ids[0])
    second = invoke(["sync", "--db", db, "reevo"], env=env)
    assert second.exit_code == 0, second.stderr
    row = next(line for line in second.stdout.splitlines() if line.split()[:1] == ["reevo"])
    assert row.split()[1:6] == ["0", "0", "0", "1", "0"]
    assert "19 opportunities stored" in second.stdout
