"""Typed config of stage 3 and ``build()``: which model-based steps run, with which models.

Every step is off until enabled, because each needs a trained model (``train-classifier``) or,
for clutter, at least the heuristic. ``Stage3Config.build()`` returns the named document steps
in the order of dots.llm1's appendix C.3: page type → clutter → quality model → semantic dedup
→ category tagging. Semantic dedup comes before rebalancing on purpose: rebalancing copies
documents, and a dedup after it would undo the upsampling. Rebalancing needs every document's
category first, so the data runner runs it as a corpus-wide pass (``moelab.data.stage3``) when
``category.weights`` is set; ``moelab.classify.rebalance.rebalance`` does the same in memory.

What this module does not know: how the data runner chains, shards or writes the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moelab.config import Config, ConfigError


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@dataclass
class ClassifierStepConfig(Config):
    enabled: bool = False
    model: str = ""
    """A classifier directory: ngram (classifier.json) or transformers (config.json)."""
    batch_size: int = 64

    def validate(self, path: str) -> None:
        if self.enabled and not self.model:
            raise ConfigError(_at(path, "model"), "is required when the step is enabled")
        if self.batch_size < 1:
            raise ConfigError(_at(path, "batch_size"), f"must be >= 1, got {self.batch_size}")

    def load(self) -> Any:
        """The classifier, loaded on first use (batch_size applies to the transformers backend)."""
        from moelab.classify.base import LazyClassifier

        return LazyClassifier(self.model, batch_size=self.batch_size)


@dataclass
class PageTypeConfig(ClassifierStepConfig):
    keep: list[str] = field(default_factory=lambda: ["detail"])
    """Labels kept (dots.llm1 keeps text-rich detail pages)."""


@dataclass
class QualityConfig(ClassifierStepConfig):
    good_label: str = "high"
    threshold: float = 0.5
    """Keep a document when P(good_label) >= threshold (the report gives no value)."""

    def validate(self, path: str) -> None:
        super().validate(path)
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(_at(path, "threshold"), f"must be in [0, 1], got {self.threshold}")


@dataclass
class CategoryConfig(ClassifierStepConfig):
    weights: dict[str, float] = field(default_factory=dict)
    """Target share per category for rebalancing (normalised; empty: tag only)."""
    seed: int = 0

    def validate(self, path: str) -> None:
        super().validate(path)
        bad = {k: v for k, v in self.weights.items() if v < 0}
        if bad or (self.weights and sum(self.weights.values()) <= 0):
            raise ConfigError(
                _at(path, "weights"), f"must be >= 0 and not all zero, got {self.weights}"
            )


@dataclass
class ClutterConfig(Config):
    enabled: bool = False
    model: str | None = None
    """A clutter model directory (ngram, labels content/clutter); null: the heuristic baseline."""
    threshold: float = 0.5
    max_removed: float = 0.6
    """Drop a document that loses more than this share of its characters."""

    def validate(self, path: str) -> None:
        for name in ("threshold", "max_removed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(_at(path, name), f"must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SemanticConfig(Config):
    enabled: bool = False
    embedder: str | None = None
    """A local encoder directory (e.g. BGE-M3); null: the built-in hashed embedder."""
    threshold: float = 0.95
    """Cosine at or above which two documents in a cluster are duplicates (dots.llm1)."""
    docs_per_cluster: int = 1000
    seed: int = 0

    def validate(self, path: str) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(_at(path, "threshold"), f"must be in (0, 1], got {self.threshold}")
        if self.docs_per_cluster < 1:
            raise ConfigError(_at(path, "docs_per_cluster"), "must be >= 1")


@dataclass
class Stage3Config(Config):
    page_type: PageTypeConfig = field(default_factory=PageTypeConfig)
    clutter: ClutterConfig = field(default_factory=ClutterConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    category: CategoryConfig = field(default_factory=CategoryConfig)

    def build(self) -> list[tuple[str, Any]]:
        """``(name, step)`` of the enabled steps, in pipeline order (classifiers load lazily)."""
        from moelab.classify import clutter, semantic, steps
        from moelab.classify.ngram import NgramClassifier

        out: list[tuple[str, Any]] = []
        if self.page_type.enabled:
            pt = self.page_type
            out.append(("page_type", steps.page_type_step(pt.load(), keep=pt.keep)))
        if self.clutter.enabled:
            scorer: Any = clutter.HeuristicLineScorer()
            if self.clutter.model:
                scorer = clutter.LearnedLineScorer(NgramClassifier.load(self.clutter.model))
            step = clutter.ClutterStep(scorer, self.clutter.threshold, self.clutter.max_removed)
            out.append(("clutter", step))
        if self.quality.enabled:
            q = self.quality
            out.append(("quality_model", steps.quality_step(q.load(), q.good_label, q.threshold)))
        if self.semantic.enabled:
            s = self.semantic
            embedder = semantic.TransformersEmbedder(s.embedder) if s.embedder else None
            step = semantic.SemanticDedupStep(
                embedder, s.threshold, s.docs_per_cluster, s.seed, True
            )
            out.append(("semantic_dedup", step))
        if self.category.enabled:
            out.append(("category", steps.category_step(self.category.load())))
        return out
