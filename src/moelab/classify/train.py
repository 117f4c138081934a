"""Training a stage-3 n-gram classifier from labelled documents, with a held-out report.

Input: ``Document`` JSONL(.gz) files (a file or a folder of them) whose
``metadata[label_field]`` holds the label (the synthetic web writes such labels). A hash of the
document id holds out ``holdout_fraction`` of them; the report gives accuracy, per-class
precision/recall/F1 and documents/s of prediction on one core.

What this module does not know: what the labels mean or which step will use the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moelab.classify.ngram import NgramClassifier, NgramConfig
from moelab.config import Config, ConfigError
from moelab.data.document import Document, read_documents


@dataclass
class TrainClassifierConfig(Config):
    """``train-classifier``: labelled documents → ``classifier.json`` + ``weights.npz`` + report."""

    docs: str = ""
    """A labelled ``.jsonl``/``.jsonl.gz`` file or a folder of them."""
    out_dir: str = ""
    kind: Literal["document", "clutter"] = "document"
    """``document``: one label per document. ``clutter``: a line model; ``metadata[label_field]``
    is a list with one 0/1 (1 = clutter) per line of the text."""
    label_field: str = "label"
    """``metadata`` key holding each document's label (or line labels)."""
    holdout_fraction: float = 0.1
    model: NgramConfig = field(default_factory=NgramConfig)

    def validate(self, path: str) -> None:
        at = (path + ".") if path else ""
        for name in ("docs", "out_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{at}{name}", "is required")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(
                f"{at}holdout_fraction", f"must be in [0, 1), got {self.holdout_fraction}"
            )


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"no labelled *.jsonl(.gz) at {path}")
    return files


def _held_out(doc_id: str, fraction: float) -> bool:
    digest = hashlib.blake2b(f"holdout\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def load_labelled(path: str | Path, label_field: str) -> list[tuple[Document, str]]:
    out = []
    for file in _files(Path(path)):
        for doc in read_documents(file):
            label = doc.metadata.get(label_field)
            if not isinstance(label, str):
                raise ValueError(
                    f"{file}: document {doc.id} has no string metadata[{label_field!r}]"
                )
            out.append((doc, label))
    return out


def evaluate(model: NgramClassifier, texts: list[str], gold: list[str]) -> dict[str, Any]:
    """Accuracy, per-class P/R/F1 (%), and prediction docs/s."""
    start = time.perf_counter()
    pred = [label for label, _ in model.predict(texts)] if texts else []
    seconds = time.perf_counter() - start
    per_class = {}
    for c in model.labels:
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        n_pred, n_gold = pred.count(c), gold.count(c)
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[c] = {"precision": 100 * p, "recall": 100 * r, "f1": 100 * f1, "support": n_gold}
    accuracy = float(np.mean([p == g for p, g in zip(pred, gold, strict=True)])) if gold else 0.0
    return {
        "accuracy": 100 * accuracy,
        "per_class": per_class,
        "docs": len(texts),
        "docs_per_s": len(texts) / seconds if seconds > 0 else None,
    }


def _line_docs(path: str, label_field: str) -> list[tuple[Document, list[tuple[str, bool]]]]:
    out = []
    for file in _files(Path(path)):
        for doc in read_documents(file):
            lines, gold = doc.text.split("\n"), doc.metadata.get(label_field)
            if not isinstance(gold, list) or len(gold) != len(lines):
                raise ValueError(
                    f"{file}: document {doc.id} needs metadata[{label_field!r}] with one 0/1 "
                    f"per line ({len(lines)} lines)"
                )
            out.append((doc, [(line, bool(g)) for line, g in zip(lines, gold, strict=True)]))
    return out


def train_clutter(cfg: TrainClassifierConfig) -> dict[str, Any]:
    """Train the learned line scorer; report its held-out line F1 next to the heuristic's."""
    from moelab.classify.clutter import HeuristicLineScorer, LearnedLineScorer, line_f1

    data = _line_docs(cfg.docs, cfg.label_field)
    train = [lines for d, lines in data if not _held_out(d.id, cfg.holdout_fraction)]
    test = [lines for d, lines in data if _held_out(d.id, cfg.holdout_fraction)]
    start = time.perf_counter()
    scorer = LearnedLineScorer.train(train, cfg.model)
    report = {
        "labels": scorer.model.labels,
        "train_docs": len(train),
        "train_seconds": time.perf_counter() - start,
        "heldout_docs": len(test),
        "heldout_line_f1": {
            "learned": line_f1(scorer, test),
            "heuristic": line_f1(HeuristicLineScorer(), test),
        },
    }
    return _save(scorer.model, report, cfg)


def _save(model: NgramClassifier, report: dict[str, Any], cfg: TrainClassifierConfig) -> dict:
    out = model.save(cfg.out_dir)
    report["hash"] = model.content_hash()
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    cfg.to_yaml(out / "config.yaml")
    return report


def train_classifier(cfg: TrainClassifierConfig) -> dict[str, Any]:
    """Train, evaluate on the held-out share, save model and ``report.json``; return the report."""
    if cfg.kind == "clutter":
        return train_clutter(cfg)
    data = load_labelled(cfg.docs, cfg.label_field)
    train = [(d.text, y) for d, y in data if not _held_out(d.id, cfg.holdout_fraction)]
    test = [(d.text, y) for d, y in data if _held_out(d.id, cfg.holdout_fraction)]
    labels = sorted({y for _, y in data})
    start = time.perf_counter()
    model = NgramClassifier(labels, cfg.model).fit([t for t, _ in train], [y for _, y in train])
    report = {
        "labels": labels,
        "train_docs": len(train),
        "train_seconds": time.perf_counter() - start,
        "heldout": evaluate(model, [t for t, _ in test], [y for _, y in test]),
    }
    return _save(model, report, cfg)
