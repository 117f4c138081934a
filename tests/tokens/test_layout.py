"""The token stage's boundaries: what it may import, and its YAML configs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from moelab.tokens.config import TokenizeConfig, TrainTokenizerConfig

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = ("moelab.common", "moelab.config", "moelab.data.document", "moelab.tokens")


def _moelab_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] == "moelab"}


@pytest.mark.parametrize(
    "path", sorted((ROOT / "src/moelab/tokens").glob("*.py")), ids=lambda p: p.name
)
def test_tokens_imports_only_common_config_and_document(path: Path) -> None:
    bad = {n for n in _moelab_imports(path) if not n.startswith(ALLOWED)}
    assert not bad, f"{path.name} imports {sorted(bad)} (STYLE §4.3 allows {ALLOWED})"


def test_importing_the_loader_does_not_import_torch() -> None:
    code = "import sys, moelab.tokens.loader, moelab.tokens.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs/tokens").glob("*.yaml")), ids=lambda p: p.name
)
def test_token_configs_load(path: Path) -> None:
    cls = TrainTokenizerConfig if "tokenizer" in path.stem else TokenizeConfig
    cfg = cls.from_yaml(path)
    assert cfg.docs_dir and cfg.out_dir
