"""Line-level web clutter removal: score each line, drop clutter, drop pages that lose too much.

dots.llm1 scores every line 0..1 with a fine-tuned model to remove navigation, ads, borders
and boilerplate. Here two scorers share one interface, ``score(lines) -> P(clutter)`` per line:

* :class:`HeuristicLineScorer`: the baseline, C4/RefinedWeb-style rules (few words, no
  terminal punctuation, boilerplate keywords);
* :class:`LearnedLineScorer`: an n-gram linear classifier over the line's words *plus* its
  layout features written as pseudo-words (``__len3``, ``__punct_end``, ``__pos_first`` ...),
  so one hashed linear model learns both what a line says and how it looks.

``line_f1`` scores either against gold line labels; ``ClutterStep`` applies a scorer to
documents in a step pipeline.

What this module does not know: where gold labels come from (the synthetic web, or a test).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from moelab.classify.ngram import NgramClassifier, NgramConfig
from moelab.data.document import Document

CLUTTER, CONTENT = "clutter", "content"
TERMINAL = (".", "!", "?", '"', "'", "”", "。", "！", "？", ":")
BOILERPLATE = re.compile(
    r"cookie|javascript|log ?in|sign (in|up)|subscribe|newsletter|all rights reserved|©|"
    r"privacy policy|terms of (use|service)|share (on|this)|follow us|click here|read more|"
    r"skip to|menu|advertisement|sponsored",
    re.IGNORECASE,
)


class LineScorer(Protocol):
    def score(self, lines: Sequence[str]) -> np.ndarray: ...


class HeuristicLineScorer:
    """1.0 for a line that looks like clutter by rule, else 0.0 (the baseline)."""

    def __init__(self, min_words: int = 4):
        self.min_words = min_words

    def is_clutter(self, line: str) -> bool:
        text = line.strip()
        if not text:
            return False
        if BOILERPLATE.search(text):
            return True
        return len(text.split()) < self.min_words or not text.endswith(TERMINAL)

    def score(self, lines: Sequence[str]) -> np.ndarray:
        return np.array([float(self.is_clutter(line)) for line in lines])


def _bucket(x: float) -> int:
    return min(9, int(math.log2(1 + x)))


def line_features(line: str, position: int, n_lines: int) -> str:
    """The line's text preceded by pseudo-words describing its shape and place."""
    text = line.strip()
    words = text.split()
    n_chars = max(1, len(text))
    shape = [
        f"__len{_bucket(len(text))}",
        f"__words{_bucket(len(words))}",
        f"__digits{int(10 * sum(c.isdigit() for c in text) / n_chars)}",
        f"__upper{int(10 * sum(c.isupper() for c in text) / n_chars)}",
        f"__punct{int(10 * sum(not c.isalnum() and not c.isspace() for c in text) / n_chars)}",
        "__punct_end" if text.endswith(TERMINAL) else "__no_punct_end",
        "__pos_first"
        if position == 0
        else ("__pos_last" if position == n_lines - 1 else "__pos_mid"),
        f"__pos{int(4 * position / max(1, n_lines))}",
        "__pipes" if "|" in text or "»" in text or ">" in text else "__no_pipes",
    ]
    return " ".join(shape) + " " + text


def _doc_features(lines: Sequence[str]) -> list[str]:
    return [line_features(line, i, len(lines)) for i, line in enumerate(lines)]


class LearnedLineScorer:
    """P(clutter) from an n-gram linear model over line text and layout pseudo-words."""

    def __init__(self, model: NgramClassifier):
        if CLUTTER not in model.labels:
            raise ValueError(f"a clutter model needs the label {CLUTTER!r}, has {model.labels}")
        self.model = model
        self._column = model.labels.index(CLUTTER)

    @classmethod
    def train(
        cls, docs: Iterable[Sequence[tuple[str, bool]]], cfg: NgramConfig | None = None
    ) -> LearnedLineScorer:
        """Train on documents given as ``[(line, is_clutter), ...]``."""
        texts, labels = [], []
        for doc in docs:
            texts += _doc_features([line for line, _ in doc])
            labels += [CLUTTER if gold else CONTENT for _, gold in doc]
        model = NgramClassifier([CONTENT, CLUTTER], cfg or NgramConfig(dim=2**16, epochs=5))
        return cls(model.fit(texts, labels))

    def score(self, lines: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(_doc_features(lines))[:, self._column]


def line_f1(
    scorer: LineScorer, docs: Iterable[Sequence[tuple[str, bool]]], threshold: float = 0.5
) -> dict[str, float]:
    """Precision, recall and F1 (in %) of flagging clutter lines, over all lines of ``docs``."""
    tp = fp = fn = 0
    for doc in docs:
        flagged = scorer.score([line for line, _ in doc]) >= threshold
        gold = np.array([g for _, g in doc], dtype=bool)
        tp += int((flagged & gold).sum())
        fp += int((flagged & ~gold).sum())
        fn += int((~flagged & gold).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1}


class ClutterStep:
    """Drop clutter lines; drop a document whose removed share of characters is too large.

    Records ``metadata["clutter"] = {"lines_removed", "chars_removed_fraction"}``.
    """

    name = "clutter"

    def __init__(self, scorer: LineScorer, threshold: float = 0.5, max_removed: float = 0.6):
        self.scorer, self.threshold, self.max_removed = scorer, threshold, max_removed

    def clean(self, doc: Document) -> tuple[Document, str | None]:
        lines = doc.text.split("\n")
        flagged = self.scorer.score(lines) >= self.threshold
        kept = [line for line, bad in zip(lines, flagged, strict=True) if not bad]
        removed_chars = sum(len(line) for line, bad in zip(lines, flagged, strict=True) if bad)
        fraction = removed_chars / max(1, len(doc.text))
        doc.metadata["clutter"] = {
            "lines_removed": int(flagged.sum()),
            "chars_removed_fraction": round(fraction, 4),
        }
        if fraction > self.max_removed or not "".join(kept).strip():
            return doc, f"clutter>{self.max_removed:.2f}"
        doc.text = "\n".join(kept)
        return doc, None

    def run(self, docs: Iterable[Document], ctx: Any) -> Iterator[Document]:
        for doc in docs:
            doc, reason = self.clean(doc)
            ctx.stats.counters["clutter_lines_removed"] += doc.metadata["clutter"]["lines_removed"]
            if reason is None:
                yield doc
            else:
                ctx.drop(doc, reason)
