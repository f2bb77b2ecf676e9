"""Every code block of README.md and docs/ runs, against the sandbox, so docs cannot drift.

How blocks are treated, by their fence's language:

- ``python``: run. Placeholders need no editing: the served sandbox accepts the key
  ``api_...`` for every vendor, the adapters' production URLs point at it for the test, and
  ``"oppo_..."`` becomes a real Close id. A block using top-level ``await`` runs in an event
  loop with ``sb`` (the running :class:`~close_opps.sandbox.Sandbox`), ``api_key`` and
  ``aiohttp`` defined; a block defining ``test_*`` functions runs under pytest.
- ``bash``, and ``text`` lines starting with ``$ close-opps``: every ``close-opps`` command
  runs in-process (pipes and redirections cut off) with ``<PROVIDER>_API_KEY`` and
  ``<PROVIDER>_BASE_URL`` pointing at the sandbox; it must exit 0, or 1/2 when the block
  shows an error line under it. ``sandbox serve`` (runs until Ctrl-C) and the set-up
  commands of :data:`NOT_RUN` are not run.
- ``toml`` and ``json``: parsed (a ``json`` block with ``...`` is an abbreviated sample).
- No language, ``text`` without a prompt, ``sql``: output, diagrams and schemas, not code.

An illustration that cannot run is marked, rarely and visibly, by the line before its fence:
``<!-- docs-test: skip (why) -->``.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

import close_opps
from close_opps import CloseAdapter, GetrazeAdapter, ReevoAdapter
from close_opps.sandbox import CloseOptions, GetrazeOptions, ReevoOptions, Sandbox

from .test_cli import ServedSandbox, invoke

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b[^>]*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
#: The key every emulator accepts here: the docs' own placeholder.
KEY = "api_..."
#: Shell commands of the docs that are set-up, not examples (they install or lint).
#: Sample ids of the docs, and the vendor whose first served id stands in for each.
DOC_IDS = {
    "5f0c9e2a-7b1d-4c3e-9a8f-2d6b4e1c7a90": "reevo",
    "ffffffff-0000-0000-0000-000000000001": "getraze",
    "oppo_...": "close",
}
PYTEST = (
    *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"),
    *("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"),
)
NOT_RUN = ("pip ", "python3 -m venv", "python -m pip", "ruff ", "python -m pytest", "python bench")
#: The docs' PostgreSQL URL: a fresh database of the tests' server stands in for it.
DOC_POSTGRES = "postgresql://sync@db.internal/opps"


@attrs.frozen
class Block:
    page: Path
    line: int
    language: str
    code: str
    skipped: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> Iterator[Block]:
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            opening = FENCE.match(lines[index])
            if not opening:
                index += 1
                continue
            end = index + 1
            while not lines[end].startswith("```"):
                end += 1
            skipped = index > 0 and bool(SKIP.search(lines[index - 1]))
            code = "\n".join(lines[index + 1 : end]) + "\n"
            yield Block(page, index + 1, opening.group(1), code, skipped)
            index = end + 1


ALL = list(blocks())


@pytest.fixture(scope="module")
def served() -> Iterator[Sandbox]:
    options: dict[str, Any] = {
        "close": CloseOptions(api_key=KEY),
        "getraze": GetrazeOptions(api_key=KEY),
        "reevo": ReevoOptions(api_key=KEY),
    }
    with ServedSandbox(seed=0, **options) as sandbox:
        yield sandbox


@pytest.fixture
def at_sandbox(served: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    for cls in (CloseAdapter, GetrazeAdapter, ReevoAdapter):
        monkeypatch.setattr(cls, "default_base_url", served[cls.provider].base_url)
        monkeypatch.setenv(f"{cls.provider.upper()}_API_KEY", KEY)
        monkeypatch.setenv(f"{cls.provider.upper()}_BASE_URL", served[cls.provider].base_url)
    served.reset()
    return served


def _real_ids(text: str, sandbox: Sandbox) -> str:
    """The docs' sample ids replaced by ids the sandbox serves."""
    for sample, vendor in DOC_IDS.items():
        text = text.replace(sample, sandbox[vendor].ids[0])
    return text


def _python(
    block: Block, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files an example writes (a sync database) land here
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt"))  # dlt's pipelines, not ~/.dlt
    code = _real_ids(block.code, sandbox).replace('api_key="..."', f'api_key="{KEY}"')
    if re.search(r"^(async )?def test_", code, re.M):
        path = tmp_path / "test_block.py"
        path.write_text(code, encoding="utf-8")
        done = subprocess.run(  # noqa: S603
            [*PYTEST, str(path)],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return
    compiled = compile(code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if "asyncio.run(" in code:  # a whole program
        printed = io.StringIO()
        # a module of its own, as ``python example.py`` gives it (attrs and cattrs look
        # names up in sys.modules[cls.__module__])
        main = types.ModuleType("__main__")
        monkeypatch.setitem(sys.modules, "__main__", main)
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(printed):
            exec(compiled, main.__dict__)  # noqa: S102 - our own docs
        if "days=7" in code:  # "the last 7 days" must find the sandbox's recent records
            assert printed.getvalue().strip(), "the example printed nothing"
        return

    async def fragment() -> None:
        """A fragment: run with the names the surrounding text talks about."""
        adapters = [
            close_opps.connect(name, api_key=KEY, base_url=sandbox[name].base_url)
            for name in ("close", "getraze", "reevo")
        ]
        async with close_opps.OpportunityHub(adapters) as hub:
            namespace: dict[str, Any] = {
                name: getattr(close_opps, name) for name in close_opps.__all__
            }
            namespace.update(
                close_opps=close_opps,
                aiohttp=aiohttp,
                sb=sandbox,
                api_key=KEY,
                hub=hub,
                opp=await adapters[0].get(sandbox.close.ids[0]),
                since=datetime(2025, 1, 1, tzinfo=UTC),
            )
            result = eval(compiled, namespace)  # noqa: S307 - our own docs
            if compiled.co_flags & inspect.CO_COROUTINE:
                await result

    asyncio.run(fragment())


def _commands(block: Block) -> Iterator[tuple[str, bool]]:
    """Each ``close-opps`` command of a shell or console block, and whether the block shows
    it failing (an error line right under it)."""
    lines = block.code.splitlines()
    for number, line in enumerate(lines):
        text = line.strip()
        if block.language == "text":
            if not text.startswith("$ close-opps"):
                continue
            text = text[2:]
        elif not text.startswith("close-opps") or text.startswith(NOT_RUN):
            continue
        following = lines[number + 1] if number + 1 < len(lines) else ""
        yield text, following.startswith("close-opps: error:")


def _shell(block: Block, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt"))
    for command, fails in _commands(block):
        command = _real_ids(command, sandbox)
        command = re.split(r"\s[|>]\s|\s#\s", command)[0]
        args = shlex.split(command)[1:]
        if args[:2] == ["sandbox", "serve"]:
            continue  # runs until Ctrl-C: covered by tests/test_cli.py
        if args[:1] == ["worker"]:
            continue  # runs until stopped: covered by tests/test_cli_connections.py
        env = {k: v for k, v in os.environ.items() if k.endswith(("_API_KEY", "_BASE_URL"))}
        # the key variables the block's connections name hold the sandbox's key
        env.update(dict.fromkeys(re.findall(r"--key-env\s+(\w+)", block.code), KEY))
        # a failure shown in the docs happens in its own setting: no keys but its own
        result = invoke(args, env={} if fails else {**env, "COLUMNS": "120"})
        if fails:
            assert result.exit_code in (1, 2), (command, result.stdout, result.stderr)
        else:
            assert result.exit_code == 0, (command, result.stderr)


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_code_block_runs(
    block: Block,
    at_sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if block.skipped:
        pytest.skip("marked <!-- docs-test: skip --> in the page")
    if DOC_POSTGRES in block.code:
        url = str(request.getfixturevalue("postgres_url"))
        block = attrs.evolve(block, code=block.code.replace(DOC_POSTGRES, url))
    if block.language == "python":
        _python(block, at_sandbox, tmp_path, monkeypatch)
    elif block.language in ("bash", "sh", "text"):
        _shell(block, at_sandbox, tmp_path, monkeypatch)
    elif block.language == "toml":
        tomllib.loads(block.code)
    elif block.language == "json" and "..." not in block.code:
        json.loads(block.code)


def test_the_readme_starts_with_the_two_commands_that_work() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = next(b for b in ALL if b.page.name == "README.md" and b.language == "bash")
    commands = [line for line in first.code.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'python3 -m venv .venv && . .venv/bin/activate && python -m pip install ".[cli]" '
        "&& close-opps demo",
        'python3 -m venv .venv && . .venv/bin/activate && python -m pip install -e ".[test]" '
        "&& python -m pytest",
    ]
    assert "pip install close-opps" not in readme


def test_install_lines_work_without_a_release() -> None:
    """Until close-opps is on PyPI, no page and no message says ``pip install close-opps``."""
    texts = [page.read_text(encoding="utf-8") for page in PAGES]
    texts += [path.read_text(encoding="utf-8") for path in (ROOT / "close_opps").rglob("*.py")]
    pattern = re.compile(r"pip install ['\"]?close-opps")
    assert not [text for text in texts if pattern.search(text)]
