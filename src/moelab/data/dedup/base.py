"""Global steps: decisions that need the whole corpus, made in on-disk passes.

A global step runs as ``scan`` (one task per shard: write what the decision needs, in document
order) → ``reduce`` (combine the shards, write per-shard decisions) → ``apply`` (a map step per
shard that reads its decisions and drops or edits documents). Because scan and apply read the same
shard file in the same order, decisions are addressed by document index within the shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from moelab.data.document import Document
from moelab.data.step import Step, StepContext


class GlobalStep:
    """Base of a corpus-wide step; ``work`` is its private directory in the run."""

    name: str = "global"

    def scan(self, docs: Iterable[Document], shard: int, work: Path) -> None:
        raise NotImplementedError

    def reduce(self, work: Path, num_shards: int) -> None:
        raise NotImplementedError

    def apply(self, work: Path, shard: int) -> Step:
        raise NotImplementedError


def write_drops(work: Path, shard: int, drops: dict[int, tuple[str, dict]]) -> None:
    """Per-shard ``{index: [reason, metadata]}`` decisions, as JSON."""
    from moelab.data.writers import atomic_write_json

    atomic_write_json(work / "drops" / f"{shard:05d}.json", {str(k): v for k, v in drops.items()})


def read_drops(work: Path, shard: int) -> dict[int, tuple[str, dict]]:
    path = work / "drops" / f"{shard:05d}.json"
    if not path.exists():
        return {}
    return {int(k): (v[0], v[1]) for k, v in json.loads(path.read_text()).items()}


class DropByIndex(Step):
    """Drop the documents at given indices of the shard, with their reasons and metadata."""

    def __init__(self, name: str, drops: dict[int, tuple[str, dict]]):
        self.name = name
        self.drops = drops

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        for i, doc in enumerate(docs):
            decision = self.drops.get(i)
            if decision is None:
                yield doc
            else:
                doc.metadata.update(decision[1])
                ctx.drop(doc, decision[0])


def run_in_memory(
    step: GlobalStep, shards: list[list[Document]], work: Path, copy_docs: bool = True
) -> tuple[list[Document], list[tuple[str, str, dict]]]:
    """scan → reduce → apply over in-memory shards (tests, benchmarks): kept docs and drops.

    Documents are deep-copied first unless ``copy_docs`` is False (apply may edit them).
    """
    import copy

    from moelab.data.step import StepStats

    if copy_docs:
        shards = copy.deepcopy(shards)
    for s, docs in enumerate(shards):
        step.scan(iter(docs), s, work)
    step.reduce(work, len(shards))
    kept: list[Document] = []
    drops: list[tuple[str, str, dict]] = []
    for s, docs in enumerate(shards):
        ctx = StepContext(s, len(shards), StepStats(step.name))
        ctx.sink = lambda d, r: drops.append((d.id, r, dict(d.metadata)))
        kept.extend(step.apply(work, s).run(iter(docs), ctx))
    return kept, drops


def split_contiguous(docs: list[Document], n: int) -> list[list[Document]]:
    """``n`` contiguous shards of ``docs`` (corpus order preserved), sizes as equal as possible."""
    bounds = [len(docs) * k // n for k in range(n + 1)]
    return [docs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
