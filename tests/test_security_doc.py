"""docs/security.md and docs/reliability.md back each claim with a test: every
``tests/FILE.py::test_NAME`` they name must exist, so a claim cannot outlive its test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"tests/(\w+\.py)::(test_\w+)")


def functions_in(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


@pytest.mark.parametrize("doc", ["docs/security.md", "docs/reliability.md"])
def test_every_named_test_exists(doc: str) -> None:
    text = (ROOT / doc).read_text()
    references = set(REFERENCE.findall(text))
    assert len(references) >= 10, f"{doc} should name the tests behind its claims"
    missing = sorted(
        f"tests/{file}::{name}"
        for file, name in references
        if not (ROOT / "tests" / file).exists() or name not in functions_in(ROOT / "tests" / file)
    )
    assert missing == [], f"{doc} names tests that do not exist: {missing}"
