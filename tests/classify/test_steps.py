"""Page-type, quality and category steps: keep/drop by label and threshold, every decision kept."""

from __future__ import annotations

import numpy as np
import pytest

from moelab.classify.ngram import NgramClassifier, NgramConfig
from moelab.classify.steps import category_step, page_type_step, quality_step
from moelab.data.document import Document

from .synthetic import FakeContext, page_type_docs


class FixedClassifier:
    """Probabilities read from the text: "a=0.7" → P(a) = 0.7."""

    labels = ["high", "low"]

    def predict_proba(self, texts):
        p = np.array([float(t.split("=")[1]) for t in texts])
        return np.stack([p, 1 - p], axis=1)


def test_page_type_keeps_detail_pages_and_records_why() -> None:
    train = page_type_docs(200, seed=0)
    model = NgramClassifier(sorted({"detail", "tool", "video", "forum"}), NgramConfig(dim=2**14))
    model.fit([d.text for d in train], [d.metadata["label"] for d in train])
    docs = page_type_docs(80, seed=1)
    gold = {d.id: d.metadata["label"] for d in docs}
    ctx = FakeContext()
    kept = list(page_type_step(model).run(docs, ctx))
    assert kept and all(gold[d.id] == "detail" for d in kept)
    assert {r for _, r in ctx.dropped} == {"page_type:tool", "page_type:video", "page_type:forum"}
    assert len(kept) + len(ctx.dropped) == 80
    assert all(d.metadata["page_type"]["kept"] for d in kept)
    assert all(not d.metadata["page_type"]["kept"] for d, _ in ctx.dropped)


def test_quality_threshold_is_applied_to_the_good_label() -> None:
    docs = [Document(str(i), f"p={p}") for i, p in enumerate([0.9, 0.55, 0.4, 0.1])]
    ctx = FakeContext()
    kept = list(quality_step(FixedClassifier(), threshold=0.5).run(docs, ctx))
    assert [d.id for d in kept] == ["0", "1"]
    assert [r for _, r in ctx.dropped] == ["quality<0.50", "quality<0.50"]
    assert ctx.dropped[0][0].metadata["quality"] == {
        "label": "low",
        "score": 0.6,
        "p_high": 0.4,
        "kept": False,
    }


def test_category_step_tags_and_never_drops() -> None:
    docs = [Document(str(i), f"p={p}") for i, p in enumerate([0.9, 0.2])]
    ctx = FakeContext()
    kept = list(category_step(FixedClassifier()).run(docs, ctx))
    assert [d.metadata["category"]["label"] for d in kept] == ["high", "low"]
    assert ctx.dropped == []


def test_unknown_labels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"labels \['detail'\] not in"):
        page_type_step(FixedClassifier())
