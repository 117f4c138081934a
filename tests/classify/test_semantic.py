"""Semantic dedup: near-copies within a cluster go, distinct documents stay, off by default."""

from __future__ import annotations

import random

import numpy as np

from moelab.classify.semantic import HashedEmbedder, SemanticDedupStep, spherical_kmeans
from moelab.data.document import Document

from .synthetic import FakeContext, category_docs


def _edit(text: str, rng: random.Random, n: int = 1) -> str:
    words = text.split()
    for _ in range(n):
        words[rng.randrange(len(words))] = "edited"
    return " ".join(words)


def _corpus() -> tuple[list[Document], set[str]]:
    """60 distinct documents plus 20 one-word edits of them, shuffled; and which must go."""
    rng = random.Random(0)
    originals = [Document(f"o{i}", " ".join([d.text] * 3)) for i, d in enumerate(category_docs(60))]
    copies = [Document(f"c{i}", _edit(originals[i].text, rng)) for i in range(0, 60, 3)]
    docs = originals + copies
    rng.shuffle(docs)
    position = {d.id: k for k, d in enumerate(docs)}
    later = {max(f"o{i}", f"c{i}", key=position.get) for i in range(0, 60, 3)}
    return docs, later


def test_near_copies_are_dropped_and_the_first_occurrence_kept() -> None:
    docs, later = _corpus()
    ctx = FakeContext()
    step = SemanticDedupStep(HashedEmbedder(), threshold=0.95, docs_per_cluster=20, enabled=True)
    kept = [d.id for d in step.run(docs, ctx)]
    assert {d.id for d, _ in ctx.dropped} == later  # exactly the later member of each pair
    assert len(kept) == 60
    doc, reason = ctx.dropped[0]
    assert reason == "semantic_dup>=0.95" and doc.metadata["semantic_dup"]["cosine"] >= 0.95


def test_off_by_default() -> None:
    docs, _ = _corpus()
    assert [d.id for d in SemanticDedupStep().run(docs, FakeContext())] == [d.id for d in docs]


def test_kmeans_is_deterministic_and_hashed_vectors_are_unit_length() -> None:
    x = HashedEmbedder(dim=64).embed([d.text for d in category_docs(50)])
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(spherical_kmeans(x, 5, seed=1), spherical_kmeans(x, 5, seed=1))
