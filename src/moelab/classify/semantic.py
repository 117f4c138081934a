"""Semantic dedup (optional, off by default): embed, cluster with k-means, drop near-copies.

dots.llm1 follows Llama 3: BGE-M3 embeddings → k-means → within each cluster, pairs above cosine
0.95 are duplicates. Here the embedder is either a local transformers encoder directory (CLS
pooling, as BGE models use) or a built-in hashed embedder (signed feature hashing of word
1..2-grams, L2-normalised), which needs no model and catches light edits of the same text.

Within a cluster, documents are visited in input order and one is dropped if its cosine to an
already kept document reaches the threshold, so the first occurrence survives and the result
is deterministic for a seed.

What this module does not know: which documents are "better"; the first one wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moelab.classify.base import encoded_batches
from moelab.classify.ngram import text_features
from moelab.common.deps import require
from moelab.data.document import Document


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class HashedEmbedder:
    """Signed hashing of word n-grams into ``dim`` dimensions; unit-length rows."""

    def __init__(self, dim: int = 512, ngrams: int = 2):
        self.dim, self.ngrams = dim, ngrams

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            feats = text_features(text, 2**31, self.ngrams)
            signs = np.where(feats & 1, 1.0, -1.0)
            np.add.at(out[i], (feats >> 1) % self.dim, signs)
        return _normalise(out)


class TransformersEmbedder:
    """CLS embeddings of a local encoder (e.g. a BGE-M3 copy), batched, on CUDA when present."""

    def __init__(self, directory: str | Path, batch_size: int = 32, max_length: int = 512):
        require("transformers", "hf")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True).to(
            self.device
        )
        self.model.eval()
        self.batch_size, self.max_length = batch_size, max_length

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        rows = []
        for enc in encoded_batches(
            self.tokenizer, texts, self.batch_size, self.max_length, self.device
        ):
            with torch.inference_mode():
                rows.append(self.model(**enc).last_hidden_state[:, 0].float().cpu().numpy())
        return _normalise(np.concatenate(rows)) if rows else np.zeros((0, 1), np.float32)


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 20) -> np.ndarray:
    """Cluster id per row of unit vectors ``x`` (N, D); deterministic for ``seed``."""
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), size=k, replace=False)]
    assign = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        new = (x @ centroids.T).argmax(axis=1)
        if _ > 0 and np.array_equal(new, assign):
            break
        assign = new
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centroids[c] = _normalise(members.sum(axis=0, keepdims=True))[0]
    return assign


def find_duplicates(
    x: np.ndarray, clusters: np.ndarray, threshold: float = 0.95
) -> dict[int, tuple[int, float]]:
    """Row → (the kept row it duplicates, cosine), within clusters, first occurrence kept."""
    dupes: dict[int, tuple[int, float]] = {}
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        sims = x[rows] @ x[rows].T
        kept: list[int] = []
        for j in range(len(rows)):
            if kept:
                best = max(kept, key=lambda i: sims[j, i])
                if sims[j, best] >= threshold:
                    dupes[int(rows[j])] = (int(rows[best]), float(sims[j, best]))
                    continue
            kept.append(j)
    return dupes


class SemanticDedupStep:
    """Drop documents within ``threshold`` cosine of an earlier one in the same cluster.

    ``enabled=False`` (the default) passes documents through untouched. The step holds all
    documents of a shard in memory (embeddings are ``N x dim`` floats).
    """

    name = "semantic_dedup"

    def __init__(
        self,
        embedder: Embedder | None = None,
        threshold: float = 0.95,
        docs_per_cluster: int = 1000,
        seed: int = 0,
        enabled: bool = False,
    ):
        self.embedder = embedder or HashedEmbedder()
        self.threshold, self.docs_per_cluster = threshold, docs_per_cluster
        self.seed, self.enabled = seed, enabled

    def run(self, docs: Iterable[Document], ctx: Any) -> Iterator[Document]:
        if not self.enabled:
            yield from docs
            return
        docs = list(docs)
        if not docs:
            return
        x = self.embedder.embed([d.text for d in docs])
        k = -(-len(docs) // self.docs_per_cluster)
        dupes = find_duplicates(x, spherical_kmeans(x, k, self.seed), self.threshold)
        for i, doc in enumerate(docs):
            if i in dupes:
                j, sim = dupes[i]
                doc.metadata["semantic_dup"] = {"of": docs[j].id, "cosine": round(sim, 4)}
                ctx.drop(doc, f"semantic_dup>={self.threshold}")
            else:
                yield doc
