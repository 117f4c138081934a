"""Stage-3 document steps driven by a classifier: page type, quality, category tagging.

Each step classifies documents in batches and writes its decision into
``doc.metadata[field] = {"label": ..., "score": ..., "kept": ...}`` for every document, kept or
dropped, so every decision is on record (kept ones flow on, dropped ones go to the exclusion
writer with a reason such as ``page_type:forum`` or ``quality<0.50``).

The steps follow the data stage's step protocol by shape, ``run(docs, ctx)`` with
``ctx.drop(doc, reason)`` and ``ctx.stats.counters``, without importing it, so the data runner
can chain them and this package stays independent of its internals.

What this module does not know: which backend classifies, or where documents come from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from moelab.classify.base import Classifier
from moelab.data.document import Document


class Context(Protocol):
    """What a step needs from its runner (``moelab.data.step.StepContext`` has it)."""

    stats: Any

    def drop(self, doc: Document, reason: str) -> None: ...


class ClassifierStep:
    """Classify documents in batches; keep by label and/or by a label's probability.

    Args:
        classifier: any ``Classifier``.
        field: metadata key for the decision (``page_type``, ``quality``, ``category``).
        keep_labels: keep only documents whose top label is one of these (None: any).
        score_label, min_score: keep only if P(score_label) >= min_score (None: no threshold).
        batch_size: documents per ``predict_proba`` call.
    """

    def __init__(
        self,
        classifier: Classifier,
        field: str,
        keep_labels: Iterable[str] | None = None,
        score_label: str | None = None,
        min_score: float | None = None,
        batch_size: int = 64,
    ):
        self.classifier, self.field, self.name = classifier, field, field
        self.keep_labels = set(keep_labels) if keep_labels is not None else None
        unknown = (self.keep_labels or set()) | ({score_label} if score_label else set())
        unknown -= set(classifier.labels)
        if unknown:
            raise ValueError(f"{field}: labels {sorted(unknown)} not in {classifier.labels}")
        if (score_label is None) != (min_score is None):
            raise ValueError(f"{field}: score_label and min_score go together")
        self.score_label, self.min_score = score_label, min_score
        self.batch_size = batch_size

    def decide(self, proba_row: Any) -> tuple[dict[str, Any], str | None]:
        """The recorded decision for one document and the drop reason (None: keep)."""
        labels = self.classifier.labels
        best = int(proba_row.argmax())
        record: dict[str, Any] = {"label": labels[best], "score": round(float(proba_row[best]), 4)}
        reason = None
        if self.keep_labels is not None and labels[best] not in self.keep_labels:
            reason = f"{self.field}:{labels[best]}"
        if self.score_label is not None and self.min_score is not None:
            p = float(proba_row[labels.index(self.score_label)])
            record[f"p_{self.score_label}"] = round(p, 4)
            if reason is None and p < self.min_score:
                reason = f"{self.field}<{self.min_score:.2f}"
        record["kept"] = reason is None
        return record, reason

    def run(self, docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._flush(batch, ctx)
        yield from self._flush(batch, ctx)

    def _flush(self, batch: list[Document], ctx: Context) -> Iterator[Document]:
        if not batch:
            return
        proba = self.classifier.predict_proba([d.text for d in batch])
        for doc, row in zip(batch, proba, strict=True):
            record, reason = self.decide(row)
            doc.metadata[self.field] = record
            if reason is None:
                yield doc
            else:
                ctx.drop(doc, reason)
        batch.clear()


def page_type_step(classifier: Classifier, keep: Iterable[str] = ("detail",)) -> ClassifierStep:
    """dots.llm1's web-type filter: keep text-rich detail pages, drop tool/video/forum/adult."""
    return ClassifierStep(classifier, "page_type", keep_labels=keep)


def quality_step(
    classifier: Classifier, good_label: str = "high", threshold: float = 0.5
) -> ClassifierStep:
    """Keep documents whose probability of ``good_label`` reaches ``threshold``."""
    return ClassifierStep(classifier, "quality", score_label=good_label, min_score=threshold)


def category_step(classifier: Classifier) -> ClassifierStep:
    """Tag every document with its category (for rebalancing); drops nothing."""
    return ClassifierStep(classifier, "category")
