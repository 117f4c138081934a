"""The step protocol: a step turns a stream of Documents into a stream of Documents.

A ``Step`` is a generator ``run(docs, ctx) -> Iterator[Document]``. A ``Filter`` is a step whose
``filter(doc)`` returns ``True`` (keep) or ``(False, reason)``; the runner counts every drop per
reason and hands the dropped document to the exclusion writer (``ctx.drop``). Steps never open
files or know about shards beyond ``ctx.rank``: the runner owns I/O, completion markers and stats.

``StepStats`` holds one step's funnel numbers (documents and bytes in and out, drop reasons,
modified documents); they are JSON-serialisable and merge by addition across shards.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from moelab.data.document import Document


def text_bytes(text: str) -> int:
    """UTF-8 size of ``text``; cheap for ASCII, which is most of the web."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclass
class StepStats:
    """Funnel counters of one step over one or more shards."""

    name: str
    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    """Reason → number of documents (or raw records, for a reader) removed."""
    counters: Counter = field(default_factory=Counter)
    """Free-form step counters (modified documents, removed lines, ...)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "docs_in": self.docs_in,
            "bytes_in": self.bytes_in,
            "docs_out": self.docs_out,
            "bytes_out": self.bytes_out,
            "dropped": dict(self.dropped),
            "counters": dict(self.counters),
            "seconds": round(self.seconds, 4),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StepStats:
        return cls(
            name=raw["name"],
            docs_in=raw["docs_in"],
            bytes_in=raw["bytes_in"],
            docs_out=raw["docs_out"],
            bytes_out=raw["bytes_out"],
            dropped=Counter(raw.get("dropped", {})),
            counters=Counter(raw.get("counters", {})),
            seconds=raw.get("seconds", 0.0),
        )

    def merge(self, other: StepStats) -> None:
        self.docs_in += other.docs_in
        self.bytes_in += other.bytes_in
        self.docs_out += other.docs_out
        self.bytes_out += other.bytes_out
        self.dropped.update(other.dropped)
        self.counters.update(other.counters)
        self.seconds += other.seconds


DropSink = Callable[[Document, str], None]


@dataclass
class StepContext:
    """What a step may know about where it runs: its shard, its stats, where drops go."""

    rank: int
    world_size: int
    stats: StepStats
    sink: DropSink | None = None

    def drop(self, doc: Document, reason: str) -> None:
        """Count ``doc`` as removed for ``reason`` and pass it to the exclusion writer."""
        self.stats.dropped[reason] += 1
        if self.sink is not None:
            self.sink(doc, reason)


class Step:
    """A named transformation of a document stream. Subclasses override ``run``."""

    name: str = "step"

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        raise NotImplementedError


class Filter(Step):
    """A step that keeps or drops whole documents, always with a reason."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        for doc in docs:
            verdict = self.filter(doc)
            if verdict is True:
                yield doc
            elif isinstance(verdict, tuple) and not verdict[0]:
                ctx.drop(doc, verdict[1])
            elif verdict is False:
                ctx.drop(doc, self.name)
            else:
                yield doc


def counted(docs: Iterable[Document], stats: StepStats, side: str) -> Iterator[Document]:
    """Pass documents through, adding them to ``stats`` as ``in`` or ``out``."""
    if side == "in":
        for doc in docs:
            stats.docs_in += 1
            stats.bytes_in += text_bytes(doc.text)
            yield doc
    else:
        for doc in docs:
            stats.docs_out += 1
            stats.bytes_out += text_bytes(doc.text)
            yield doc


def _timed(docs: Iterable[Document], clock: list[float]) -> Iterator[Document]:
    """Pass documents through, adding the time spent producing each one to ``clock[0]``."""
    it = iter(docs)
    while True:
        start = time.perf_counter()
        try:
            doc = next(it)
        except StopIteration:
            clock[0] += time.perf_counter() - start
            return
        clock[0] += time.perf_counter() - start
        yield doc


def chain_steps(
    docs: Iterable[Document],
    steps: list[Step],
    contexts: list[StepContext],
    source_stats: StepStats | None = None,
) -> Iterator[Document]:
    """Wire ``steps`` one after another, counting documents in and out of each.

    Each step's ``seconds`` is its own time: the time spent pulling its output minus the time
    spent pulling its input (a generator chain interleaves, so wall time per step needs this).
    """
    clocks = [[0.0] for _ in range(len(steps) + 1)]
    stream: Iterable[Document] = _timed(docs, clocks[0])
    for i, (step, ctx) in enumerate(zip(steps, contexts, strict=True)):
        inner = counted(step.run(counted(stream, ctx.stats, "in"), ctx), ctx.stats, "out")
        stream = _timed(inner, clocks[i + 1])
    yield from stream
    for i, ctx in enumerate(contexts):
        ctx.stats.seconds += clocks[i + 1][0] - clocks[i][0]
    if source_stats is not None:
        source_stats.seconds += clocks[0][0]
