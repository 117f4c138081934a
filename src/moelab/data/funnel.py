"""`moelab data stats RUN`: the funnel of a run, merged over shards, in step order.

Reads only ``RUN/stats/*/*.json`` (map tasks, plus scan/reduce time of global steps): documents and bytes into and out of each step, and every
drop reason with its count. Works on a partial run too (it shows what has finished).
"""

from __future__ import annotations

import json
from pathlib import Path

from moelab.data.step import StepStats


def load_funnel(run_dir: str | Path) -> list[tuple[str, StepStats]]:
    """(step dir, merged stats) per step, ordered by step number."""
    merged: dict[str, StepStats] = {}
    for path in sorted(Path(run_dir).glob("stats/*/*.json")):
        record = json.loads(path.read_text())
        for raw in record["steps"]:
            step = raw.pop("step")
            st = StepStats.from_dict(raw)
            if step in merged:
                merged[step].merge(st)
            else:
                merged[step] = st
    return sorted(merged.items())


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_funnel(funnel: list[tuple[str, StepStats]]) -> str:
    """A text table: per step docs in/out, kept %, bytes in/out, wall seconds spent in the step
    (summed over shards and workers), then the drop reasons."""
    lines = [
        f"{'step':<16}{'docs in':>10}{'docs out':>10}{'kept':>8}{'bytes in':>12}{'bytes out':>12}"
        f"{'step s':>9}"
    ]
    for step, st in funnel:
        kept = f"{100 * st.docs_out / st.docs_in:.1f}%" if st.docs_in else "-"
        lines.append(
            f"{step:<16}{st.docs_in:>10,}{st.docs_out:>10,}{kept:>8}"
            f"{_size(st.bytes_in):>12}{_size(st.bytes_out):>12}{st.seconds:>9.1f}"
        )
        for reason, n in sorted(st.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"{'':<4}- {reason:<38}{n:>10,}")
        for name, n in sorted(st.counters.items()):
            lines.append(f"{'':<4}* {name:<38}{n:>10,}")
    return "\n".join(lines)
