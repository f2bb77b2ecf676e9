"""Every Python block of ``docs/webhooks.md`` runs as it is (against the sandbox)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"


def _blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_page_has_runnable_blocks() -> None:
    assert len(_blocks()) >= 4


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: b.splitlines()[0][:40])
def test_a_docs_block_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block, str(DOC), "exec"), {"__name__": "__main__"})  # noqa: S102
    printed = capsys.readouterr().out
    assert "5766b2447c7b51c5" not in printed
