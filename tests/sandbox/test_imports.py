"""The sandbox emulates the vendors on its own: no module of it imports the SDK."""

from __future__ import annotations

import ast
from pathlib import Path

import close_opps.sandbox

SANDBOX = Path(close_opps.sandbox.__file__).parent


def test_no_sandbox_module_imports_the_sdk() -> None:
    offenders = []
    for path in sorted(SANDBOX.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                outside = node.level >= 2 or (
                    node.level == 0
                    and (node.module or "").startswith("close_opps")
                    and not (node.module or "").startswith("close_opps.sandbox")
                )
                if outside:
                    offenders.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("close_opps") and not alias.name.startswith(
                        "close_opps.sandbox"
                    ):
                        offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
    assert len(list(SANDBOX.glob("*.py"))) >= 10
