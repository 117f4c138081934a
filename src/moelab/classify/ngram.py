"""A fastText-style classifier that trains and runs on a CPU: hashed word n-grams → softmax.

Features are the lower-cased words of a text (``\\w+``) and their n-grams up to ``ngrams``,
hashed into ``dim`` buckets; each occurrence weighs ``1/sqrt(#features)`` so long and short
texts score on one scale. The model is one weight row per bucket and class plus a bias, trained
with mini-batch SGD on softmax cross-entropy, deterministic for a seed.

Words hash with CRC-32 (stable across processes, unlike ``hash()``), cached per word; n-gram
hashes are combined in numpy. That keeps it at thousands of documents per second per core,
which is what a demo-scale stage 3 needs; the 1.5B models of dots.llm1 run through the
transformers backend instead.

What this module does not know: documents, labels' meaning, or steps. Texts in, probabilities out.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moelab.config import Config, ConfigError

WORD_RE = re.compile(r"\w+", re.UNICODE)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_WORD_CACHE: dict[str, int] = {}
_CACHE_LIMIT = 1_000_000


@dataclass
class NgramConfig(Config):
    """Hyper-parameters of the n-gram linear classifier (fastText-like defaults)."""

    dim: int = 2**17
    """Hash buckets; weights take dim x classes x 4 bytes."""
    ngrams: int = 2
    """Longest word n-gram (1: bag of words)."""
    epochs: int = 20
    lr: float = 5.0
    """SGD step size, decayed linearly to zero over training. Large because each feature weighs
    1/sqrt(#features): at 0.5 and 8 epochs, 300-word pages stayed near the majority class."""
    batch_size: int = 32
    l2: float = 0.0
    seed: int = 0

    def validate(self, path: str) -> None:
        at = (path + ".") if path else ""
        for name in ("dim", "ngrams", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{at}{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.l2 < 0:
            raise ConfigError(f"{at}lr", f"lr must be > 0 and l2 >= 0, got {self.lr}, {self.l2}")


def _word_hash(word: str) -> int:
    h = _WORD_CACHE.get(word)
    if h is None:
        h = zlib.crc32(word.encode("utf-8"))
        if len(_WORD_CACHE) < _CACHE_LIMIT:
            _WORD_CACHE[word] = h
    return h


def text_features(text: str, dim: int, ngrams: int) -> np.ndarray:
    """Bucket ids of the word 1..n-grams of ``text`` (int64, possibly repeated)."""
    words = WORD_RE.findall(text.lower())
    if not words:
        return np.zeros(1, dtype=np.int64)  # bucket 0 stands for "empty"
    h = np.fromiter((_word_hash(w) for w in words), dtype=np.uint64, count=len(words))
    parts, cur = [h], h
    with np.errstate(over="ignore"):
        for n in range(2, ngrams + 1):
            if len(h) < n:
                break
            cur = (cur[:-1] * _MIX + h[n - 1 :] + np.uint64(n)) ^ (cur[:-1] >> np.uint64(29))
            parts.append(cur)
    return (np.concatenate(parts) % np.uint64(dim)).astype(np.int64)


def featurize(
    texts: Sequence[str], dim: int, ngrams: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR-like batch: ``offsets`` (N+1), ``indices`` and per-occurrence ``values``."""
    feats = [text_features(t, dim, ngrams) for t in texts]
    lengths = np.array([len(f) for f in feats], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.repeat(1.0 / np.sqrt(lengths), lengths).astype(np.float32)
    return offsets, np.concatenate(feats), values


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class NgramClassifier:
    """Hashed n-gram linear model over ``labels``; ``predict_proba`` gives (N, C) probabilities."""

    backend = "ngram"

    def __init__(self, labels: Sequence[str], cfg: NgramConfig | None = None):
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"need at least two distinct labels, got {list(labels)}")
        self.labels = list(labels)
        self.cfg = cfg or NgramConfig()
        self.weight = np.zeros((self.cfg.dim, len(labels)), dtype=np.float32)
        self.bias = np.zeros(len(labels), dtype=np.float32)

    def _logits(self, batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        offsets, indices, values = batch
        contrib = self.weight[indices] * values[:, None]
        return np.add.reduceat(contrib, offsets[:-1], axis=0) + self.bias

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities; shape (len(texts), len(labels)), columns in ``labels`` order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return _softmax(self._logits(featurize(texts, self.cfg.dim, self.cfg.ngrams)))

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """The most likely label of each text and its probability."""
        proba = self.predict_proba(texts)
        best = proba.argmax(axis=1)
        return [(self.labels[int(b)], float(proba[i, b])) for i, b in enumerate(best)]

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> NgramClassifier:
        """Train from scratch with mini-batch SGD; deterministic for ``cfg.seed``."""
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} are not among {self.labels}")
        if len(texts) != len(labels) or not texts:
            raise ValueError("need one label per text and at least one text")
        y = np.array([index[label] for label in labels])
        feats = [text_features(t, self.cfg.dim, self.cfg.ngrams) for t in texts]
        rng = np.random.default_rng(self.cfg.seed)
        steps = self.cfg.epochs * -(-len(texts) // self.cfg.batch_size)
        step = 0
        for _ in range(self.cfg.epochs):
            order = rng.permutation(len(texts))
            for start in range(0, len(order), self.cfg.batch_size):
                rows = order[start : start + self.cfg.batch_size]
                lr = self.cfg.lr * (1.0 - step / steps)
                self._sgd_step([feats[r] for r in rows], y[rows], lr)
                step += 1
        return self

    def _sgd_step(self, feats: list[np.ndarray], y: np.ndarray, lr: float) -> None:
        lengths = np.array([len(f) for f in feats], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.repeat(1.0 / np.sqrt(lengths), lengths).astype(np.float32)
        indices = np.concatenate(feats)
        proba = _softmax(self._logits((offsets, indices, values)))
        proba[np.arange(len(y)), y] -= 1.0  # d loss / d logits
        grad_rows = np.repeat(proba, lengths, axis=0) * values[:, None] / len(y)
        if self.cfg.l2:
            uniq = np.unique(indices)
            self.weight[uniq] *= 1.0 - lr * self.cfg.l2
        np.add.at(self.weight, indices, -lr * grad_rows)
        self.bias -= lr * proba.mean(axis=0)

    # -- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """``classifier.json`` (backend, labels, config, hash) + ``weights.npz``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "weights.npz", weight=self.weight, bias=self.bias)
        meta = {
            "backend": self.backend,
            "labels": self.labels,
            "config": self.cfg.to_dict(),
            "hash": self.content_hash(),
        }
        (directory / "classifier.json").write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> NgramClassifier:
        directory = Path(directory)
        meta = json.loads((directory / "classifier.json").read_text())
        if meta.get("backend") != cls.backend:
            raise ValueError(f"{directory} holds a {meta.get('backend')!r} classifier, not ngram")
        model = cls(meta["labels"], NgramConfig.from_dict(meta["config"]))
        with np.load(directory / "weights.npz") as data:
            model.weight, model.bias = data["weight"], data["bias"]
        if model.weight.shape != (model.cfg.dim, len(model.labels)):
            raise ValueError(f"{directory}/weights.npz does not match its classifier.json")
        return model

    def content_hash(self) -> str:
        h = hashlib.sha256(json.dumps([self.labels, self.cfg.to_dict()]).encode())
        h.update(self.weight.tobytes())
        h.update(self.bias.tobytes())
        return f"sha256:{h.hexdigest()[:16]}"
