"""Reading chat JSONL records: structure checks, line numbers, and the skip-or-raise policy.

Every record is checked before training starts. A malformed one (not JSON, missing or
unknown role, system prompt not first, roles not alternating, empty assistant turn, no
assistant turn, longer than the row) is an error naming ``file:line`` and the reason. With
``on_error: raise`` the first one stops the run; with ``skip`` all of them are reported
(logged and written to ``data_problems.txt`` in the run directory) and left out. Nothing is
ever truncated to fit.

What this module does not know: tokens or templates; the caller's ``parse`` does the encoding
and raises ``RecordError`` for what only it can see (length).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from moelab.infer.chat import ROLES, Message

R = TypeVar("R")


class RecordError(ValueError):
    """One record is malformed; the message says why (the reader adds file and line)."""


class DataError(ValueError):
    """The data file cannot be used (a malformed record under on_error=raise, or nothing left)."""


@dataclass
class Loaded:
    records: list[Any]
    lines: list[int]
    """The 1-based line of each kept record."""
    problems: list[str]
    """``file:line: reason`` of each skipped record."""
    fingerprint: str
    """sha256 of the file's bytes (prefix), recorded so a resume cannot switch data."""


def load_jsonl(
    path: str | Path, parse: Callable[[Any], R], on_error: str = "raise", log=print
) -> Loaded:
    """Parse every non-blank line with ``parse``; raise or skip malformed ones (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    records, lines, problems = [], [], []
    for number, text in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecordError(f"not valid JSON ({err.msg} at column {err.colno})") from None
            records.append(parse(obj))
            lines.append(number)
        except RecordError as err:
            problem = f"{path}:{number}: {err}"
            if on_error == "raise":
                raise DataError(
                    f"{problem} (set data.on_error=skip to leave such records out)"
                ) from None
            problems.append(problem)
    if problems:
        log(f"warning: skipped {len(problems)} malformed record(s) of {path}:")
        for problem in problems[:20]:
            log(f"  {problem}")
        if len(problems) > 20:
            log(f"  ... and {len(problems) - 20} more")
    if not records:
        raise DataError(f"{path}: no usable record ({len(problems)} malformed)")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return Loaded(records, lines, problems, f"sha256:{digest}")


def check_conversation(
    messages: Any, *, end: str = "assistant", name: str = "messages"
) -> list[Message]:
    """Messages as clean {role, content} dicts, or RecordError naming the first bad entry.

    Rules: an optional system prompt first, then user and assistant turns alternating from a
    user turn, ending on ``end``; no empty assistant turn.
    """
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{name} must be a non-empty list of {{role, content}} objects")
    out: list[Message] = []
    expected = "user"
    for i, m in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(f"{where} must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role is None:
            raise RecordError(f"{where} has no role")
        if role not in ROLES:
            raise RecordError(f"{where}: unknown role {role!r} (known: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise RecordError(f"{where} ({role}) has no string content")
        if role == "system":
            if i:
                raise RecordError(f"{where}: a system message may only come first")
        elif role != expected:
            raise RecordError(f"{where}: expected {_a(expected)} turn, got {role}")
        else:
            expected = "assistant" if role == "user" else "user"
        if role == "assistant" and not content.strip():
            raise RecordError(f"{where}: empty assistant turn")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != end:
        raise RecordError(f"{name} must end with {_a(end)} turn")
    return out


def _a(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"
