"""Stage 3 in the data pipeline: the model-based steps of ``moelab.classify``, and rebalancing.

``stage3_steps(cfg)`` appends, after the MinHash pass, the enabled steps of ``DataConfig.stage3``
in dots.llm1's order: page type → clutter → quality model → semantic dedup → category, each a
map step with its own ``removed/`` folder and funnel row; then, when ``category.weights`` is set,
``Rebalance``: a global step, because the plan needs the category counts of the whole corpus.

Rebalance as scan → reduce → apply (``moelab.data.dedup.base``): scan writes each shard's
``(id, category)`` in document order; reduce plans the output count per category for the target
weights (largest remainder, total unchanged) and which documents fill it, deterministically for
the seed (``moelab.classify.rebalance``), and writes per-shard copy counts plus ``plan.json``
(target, before and after mixtures); apply emits each document 0..k times. A category that is
missing from ``weights`` gets weight 0 (all its documents go); a weighted category with no
documents is named in ``plan.json`` and its weight spread over the others.

What this module does not know: how the classifiers were trained, or what the labels mean.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from moelab.classify.config import Stage3Config
from moelab.data.dedup.base import GlobalStep
from moelab.data.document import Document
from moelab.data.step import Step, StepContext
from moelab.data.writers import atomic_write_json


def stage3_steps(cfg: Stage3Config) -> list[tuple[str, Step | GlobalStep]]:
    """The configured stage-3 steps with their names (empty when nothing is enabled)."""
    out: list[tuple[str, Step | GlobalStep]] = list(cfg.build())
    if cfg.category.enabled and cfg.category.weights:
        out.append(("rebalance", Rebalance(cfg.category.weights, cfg.category.seed)))
    return out


class Rebalance(GlobalStep):
    """Resample documents so the category mixture matches ``weights`` (see module docstring)."""

    name = "rebalance"

    def __init__(self, weights: Mapping[str, float], seed: int = 0, field: str = "category"):
        self.weights, self.seed, self.field = dict(weights), seed, field

    def scan(self, docs: Iterable[Document], shard: int, work: Path) -> None:
        from moelab.classify.rebalance import category_of

        rows = [[doc.id, category_of(doc, self.field)] for doc in docs]
        atomic_write_json(work / "scan" / f"{shard:05d}.json", rows)

    def reduce(self, work: Path, num_shards: int) -> None:
        from moelab.classify.rebalance import copies_per_document, mixture, plan_counts

        shards = [
            json.loads((work / "scan" / f"{s:05d}.json").read_text()) for s in range(num_shards)
        ]
        keys: list[list[str]] = []  # a unique key per document (ids may repeat across inputs)
        seen: Counter = Counter()
        by_cat: dict[str, list[str]] = {}
        for rows in shards:
            keys.append([])
            for doc_id, cat in rows:
                key = doc_id if not seen[doc_id] else f"{doc_id}#{seen[doc_id]}"
                seen[doc_id] += 1
                keys[-1].append(key)
                by_cat.setdefault(cat, []).append(key)
        counts = Counter({c: len(v) for c, v in by_cat.items()})
        # A target category with no document cannot be sampled: its weight is spread over the
        # others (renormalised) and the plan names it, rather than failing a finished corpus.
        missing = sorted(c for c, w in self.weights.items() if w > 0 and not counts[c])
        weights = {c: w for c, w in self.weights.items() if c not in missing}
        if not any(w > 0 for w in weights.values()):
            raise ValueError(
                f"rebalance: no document has a category with target weight {self.weights} "
                f"(categories found: {dict(counts)})"
            )
        plan = plan_counts(counts, weights)
        copies = copies_per_document(by_cat, plan, self.seed)
        for s, shard_keys in enumerate(keys):
            atomic_write_json(work / "copies" / f"{s:05d}.json", [copies[k] for k in shard_keys])
        norm = sum(self.weights.values())
        atomic_write_json(
            work / "plan.json",
            {
                "target_pct": {c: 100 * w / norm for c, w in sorted(self.weights.items())},
                "before_pct": mixture(Counter(counts).elements()),
                "after_pct": mixture(Counter(plan).elements()),
                "before": dict(sorted(counts.items())),
                "after": dict(sorted(plan.items())),
                "missing_categories": missing,
                "seed": self.seed,
            },
        )

    def apply(self, work: Path, shard: int) -> Step:
        copies = json.loads((work / "copies" / f"{shard:05d}.json").read_text())
        return _EmitCopies(copies, self.field)


class _EmitCopies(Step):
    """Emit the i-th document of the shard ``copies[i]`` times (0: dropped, with a reason)."""

    name = "rebalance"

    def __init__(self, copies: list[int], field: str):
        self.copies, self.field = copies, field

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        from moelab.classify.rebalance import category_of

        for i, doc in enumerate(docs):
            k, cat = self.copies[i], category_of(doc, self.field)
            ctx.stats.counters[f"in:{cat}"] += 1  # the funnel shows the mixture before/after
            ctx.stats.counters[f"out:{cat}"] += k
            if k == 0:
                ctx.drop(doc, f"rebalance:downsampled:{cat}")
                continue
            ctx.stats.counters["copies_added"] += k - 1
            for c in range(k):
                meta = {**doc.metadata, "rebalance_copy": c}
                yield Document(doc.id, doc.text, doc.url, doc.source, meta)
