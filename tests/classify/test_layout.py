"""Stage 3's import boundary: only common, config, data.document and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src/moelab/classify"
ALLOWED = ("moelab.common", "moelab.config", "moelab.data.document", "moelab.classify")


@pytest.mark.parametrize("path", sorted(SRC.glob("*.py")), ids=lambda p: p.name)
def test_classify_imports_stay_inside_the_rules(path: Path) -> None:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    bad = {n for n in names if n.startswith("moelab") and not n.startswith(ALLOWED)}
    assert not bad, f"{path.name} imports {sorted(bad)}"
