"""Import rules between packages (STYLE.md §4.3): data flows one way, model/ is pure math."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "moelab"

# package -> moelab packages it may import (besides itself). None: no rule yet.
ALLOWED: dict[str, set[str]] = {
    "common": {"config"},
    # data chains stage 3 (classify) after MinHash; classify itself uses only data.document
    # (tests/classify/test_layout.py), so no module imports its own importer.
    "data": {"common", "config", "classify"},
    "tokens": {"common", "config", "data.document"},
    "classify": {"common", "config", "data", "tokens"},
    "model": {"config"},
    "parallel": {"model", "common", "config"},
    "checkpoint": {"model", "common", "config"},
    "train": {"model", "tokens", "parallel", "checkpoint", "common", "config"},
    "infer": {"model", "checkpoint", "tokens.tokenizer", "parallel", "common", "config"},
    "eval": {"model", "checkpoint", "tokens", "infer", "parallel", "common", "config"},
    "analysis": {"model", "checkpoint", "tokens", "infer", "common", "config"},
    "posttrain": {"model", "tokens", "train", "checkpoint", "infer", "common", "config"},
}
NO_TORCH = {"data"}
NO_TORCH_AT_IMPORT = {"common"}  # may import torch inside a function, never at module level


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if len(rel.parts) > 1 and rel.parts[0] in ALLOWED:
            yield rel.parts[0], path


@pytest.mark.parametrize(
    ("package", "path"), list(_modules()), ids=lambda v: str(v).split("moelab/")[-1]
)
def test_imports_follow_the_layering(package, path):
    allowed = ALLOWED[package] | {package}
    bad = []
    if package in NO_TORCH_AT_IMPORT:
        bad += [n for n in _top_level_imports(path) if n.split(".")[0] == "torch"]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "torch" and package in NO_TORCH:
            bad.append(name)
        if parts[0] != "moelab" or len(parts) == 1:
            continue
        target = ".".join(parts[1:])
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            bad.append(name)
    assert not bad, (
        f"{path.relative_to(SRC)} imports {sorted(bad)}; {package} may use {sorted(allowed)}"
    )


def test_model_never_imports_distributed():
    for path in (SRC / "model").rglob("*.py"):
        assert not any(n.startswith("torch.distributed") for n in _imports(path)), path
