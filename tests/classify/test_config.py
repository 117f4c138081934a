"""Stage-3 config: strict loading, named errors, and build() wiring the enabled steps in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from moelab.classify.clutter import ClutterStep, LearnedLineScorer
from moelab.classify.config import Stage3Config
from moelab.classify.ngram import NgramClassifier, NgramConfig
from moelab.config import ConfigError

from .synthetic import clutter_docs, page_type_docs


def test_everything_is_off_by_default() -> None:
    assert Stage3Config().build() == []


def test_build_loads_models_in_pipeline_order(tmp_path: Path) -> None:
    train = page_type_docs(40)
    labels = sorted({d.metadata["label"] for d in train})
    model = NgramClassifier(labels, NgramConfig(dim=2**12, epochs=1))
    model.fit([d.text for d in train], [d.metadata["label"] for d in train]).save(tmp_path / "pt")
    LearnedLineScorer.train(clutter_docs(20), NgramConfig(dim=2**12, epochs=1)).model.save(
        tmp_path / "cl"
    )
    cfg = Stage3Config.from_dict(
        {
            "page_type": {"enabled": True, "model": str(tmp_path / "pt")},
            "clutter": {"enabled": True, "model": str(tmp_path / "cl")},
            "semantic": {"enabled": True},
            "category": {"enabled": True, "model": str(tmp_path / "pt"), "weights": {"detail": 1}},
        }
    )
    built = cfg.build()
    assert [name for name, _ in built] == ["page_type", "clutter", "semantic_dedup", "category"]
    assert [step.name for _, step in built] == [
        "page_type",
        "clutter",
        "semantic_dedup",
        "category",
    ]
    assert isinstance(built[1][1], ClutterStep)
    # classifiers load on first use; their labels are known at once (for keep-label checks)
    page_type = built[0][1].classifier
    assert page_type.labels == labels and page_type._model is None
    assert page_type.predict_proba(["watch video 3:20"]).shape == (1, len(labels))


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"quality": {"enabled": True}}, "quality.model"),
        ({"quality": {"threshold": 1.5}}, "quality.threshold"),
        ({"category": {"weights": {"a": -1.0}}}, "category.weights"),
        ({"semantic": {"treshold": 0.9}}, "semantic.treshold"),
    ],
)
def test_errors_name_the_field(data: dict, path: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{path}"):
        Stage3Config.from_dict(data)
