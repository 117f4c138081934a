"""The README's first two commands are the contract: .ci/run must call the test one verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "```bash", "the README must open with the two set-up commands"
    end = lines.index("```", 1)
    return lines[1:end]


def test_readme_opens_with_exactly_two_commands():
    demo, tests = _readme_commands()
    assert demo.endswith("moelab demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = _readme_commands()
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert tests in [line.strip() for line in ci]
