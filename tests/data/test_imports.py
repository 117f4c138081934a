"""moelab.data imports no torch (STYLE §4.3), and the CLI's data command imports lazily."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "moelab.data.pipeline",
    "moelab.data.runner",
    "moelab.data.readers",
    "moelab.data.extract",
    "moelab.data.filters.language",
    "moelab.data.filters.quality",
    "moelab.data.filters.url",
    "moelab.data.dedup.exact",
    "moelab.data.dedup.lines",
    "moelab.data.dedup.minhash",
    "moelab.data.synth.web",
    "moelab.data.synth.evaluate",
    "moelab.data.ray_executor",
    "moelab.commands.data",
]


def test_data_package_never_imports_torch():
    code = (
        f"import importlib, sys\nfor m in {MODULES!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import moelab.commands.data\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
