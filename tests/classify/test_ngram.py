"""The CPU n-gram classifier: learns, is deterministic, survives save/load; train-classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moelab.classify.base import load_classifier
from moelab.classify.commands import main
from moelab.classify.ngram import NgramClassifier, NgramConfig
from moelab.data.document import write_documents

from .synthetic import category_docs

CFG = NgramConfig(dim=2**14, epochs=4)


def _fit(seed: int = 0) -> NgramClassifier:
    docs = category_docs(500, seed=1)
    labels = sorted({d.metadata["label"] for d in docs})
    model = NgramClassifier(labels, CFG.replace(seed=seed))
    return model.fit([d.text for d in docs], [d.metadata["label"] for d in docs])


def test_learns_categories_on_held_out_documents() -> None:
    model = _fit()
    test = category_docs(200, seed=2)
    pred = [label for label, _ in model.predict([d.text for d in test])]
    accuracy = np.mean([p == d.metadata["label"] for p, d in zip(pred, test, strict=True)])
    assert accuracy >= 0.9
    proba = model.predict_proba([d.text for d in test[:5]])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_same_model_and_save_load_round_trip(tmp_path: Path) -> None:
    a, b = _fit(seed=3), _fit(seed=3)
    assert a.content_hash() == b.content_hash()
    assert _fit(seed=4).content_hash() != a.content_hash()
    loaded = load_classifier(a.save(tmp_path / "m"))
    texts = [d.text for d in category_docs(10, seed=5)] + [""]
    np.testing.assert_array_equal(loaded.predict_proba(texts), a.predict_proba(texts))
    assert loaded.content_hash() == a.content_hash()


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least two distinct labels"):
        NgramClassifier(["only"])
    with pytest.raises(ValueError, match=r"labels \['z'\] are not among"):
        NgramClassifier(["a", "b"], CFG).fit(["x"], ["z"])
    with pytest.raises(FileNotFoundError, match="neither classifier.json"):
        load_classifier(tmp_path)


def test_train_classifier_command_writes_model_and_report(tmp_path: Path, capsys) -> None:
    write_documents(tmp_path / "labelled.jsonl.gz", category_docs(400, seed=6))
    out = tmp_path / "model"
    args = [f"docs={tmp_path / 'labelled.jsonl.gz'}", f"out_dir={out}", "model.dim=16384"]
    assert main(["train-classifier", *args, "model.epochs=3", "holdout_fraction=0.2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert printed["heldout_accuracy"] >= 85 and report["heldout"]["docs"] > 40
    assert report["heldout"]["per_class"]["sports"]["f1"] > 80
    assert load_classifier(out).labels == sorted(printed["labels"])
