"""The fixed token sample every checkpoint is run on, and the domain label of each of its tokens.

Rows are ``seq_len`` consecutive tokens of the shard stream starting at multiples of ``seq_len``,
drawn without replacement by a seeded generator and kept in stream order, so two analyses with
the same shards and settings see the same tokens. Each token carries the index of its document
(``doc_ends`` of the shards) and, when labels are known, its document's domain.

Domain labels. Shards keep no per-document metadata, so labels come from the documents folder
the shards were tokenized from: ``moelab tokens tokenize`` turns input file ``i`` into shard
``i`` of each split, keeping document order, and sends a document to a split by a hash of its
id (``tokens.pipeline.split_of``) with the rule recorded in ``completions/*.json`` beside the
split folders. Re-reading the documents with that rule gives one label per shard document; the
per-shard document counts must match, or the folder is refused (it is not the one the shards
were made from). A label is ``metadata[domain_field]`` (or its ``"label"``), else the URL host
(``www.`` dropped), else ``source``, else ``"unknown"``. Callers may also pass labels directly.

What this module does not know: models or routing; it produces token ids and labels.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from moelab.tokens.pipeline import MARKERS, split_of
from moelab.tokens.shards import ShardReader

OTHER = "other"


@dataclass
class Sample:
    """Token ids of the fixed sample and what is known about each token."""

    token_ids: np.ndarray
    """(N, T) int64 token ids."""
    doc_index: np.ndarray
    """(N, T) int64 index of each token's document in the shard stream."""
    domain_ids: np.ndarray | None = None
    """(N, T) int64 index into ``domains``; None when no labels were given."""
    domains: list[str] | None = None

    def save(self, path: Path) -> None:
        arrays = {"token_ids": self.token_ids, "doc_index": self.doc_index}
        if self.domain_ids is not None and self.domains is not None:
            arrays.update(domain_ids=self.domain_ids, domains=np.array(self.domains, dtype=str))
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Sample:
        with np.load(path) as z:
            domains = [str(d) for d in z["domains"]] if "domains" in z else None
            domain_ids = z["domain_ids"] if "domain_ids" in z else None
            return cls(z["token_ids"], z["doc_index"], domain_ids, domains)


def draw_sample(
    reader: ShardReader,
    num_sequences: int,
    seq_len: int,
    seed: int,
    doc_labels: list[str] | None = None,
    max_domains: int = 8,
) -> Sample:
    """``num_sequences`` rows of ``seq_len`` tokens (fewer if the stream is short), in stream order.

    Raises:
        ValueError: if the stream is shorter than one row or labels do not match the documents.
    """
    rows = reader.num_tokens // seq_len
    if rows < 1:
        raise ValueError(f"{reader.directory}: {reader.num_tokens} tokens < one row of {seq_len}")
    picked = np.sort(np.random.default_rng(seed).choice(rows, min(rows, num_sequences), False))
    starts = picked * seq_len
    tokens = np.stack([reader.read(int(s), seq_len).astype(np.int64) for s in starts])
    positions = starts[:, None] + np.arange(seq_len)[None, :]
    doc_index = np.searchsorted(reader.doc_ends, positions, side="right").astype(np.int64)
    sample = Sample(tokens, doc_index)
    if doc_labels is not None:
        if len(doc_labels) != reader.num_docs:
            raise ValueError(
                f"{len(doc_labels)} document labels for {reader.num_docs} documents in "
                f"{reader.directory}"
            )
        sample.domains, sample.domain_ids = _domain_ids(doc_labels, doc_index, max_domains)
    return sample


def _domain_ids(
    doc_labels: list[str], doc_index: np.ndarray, max_domains: int
) -> tuple[list[str], np.ndarray]:
    """Label names (largest by sampled tokens first; the tail pooled as "other") and ids."""
    labels = np.array(doc_labels, dtype=object)[doc_index]
    counts = Counter(labels.ravel().tolist())
    ranked = [name for name, _ in counts.most_common()]
    keep = ranked if len(ranked) <= max_domains else ranked[: max_domains - 1]
    names = keep + ([OTHER] if len(keep) < len(ranked) else [])
    index = {name: i for i, name in enumerate(keep)}
    ids = np.vectorize(lambda x: index.get(x, len(keep)), otypes=[np.int64])(labels)
    return names, ids


def domain_of(record: dict, field: str | None = None) -> str:
    """A document record's domain: metadata field, else URL host, else source, else unknown."""
    if field is not None:
        value = (record.get("metadata") or {}).get(field)
        if isinstance(value, dict):
            value = value.get("label")
        if value is not None:
            return str(value)
    url = record.get("url")
    if url:
        host = urlparse(url).netloc.lower()
        if host:
            return host.removeprefix("www.")
    return str(record.get("source") or "unknown")


def _records(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def labels_from_documents(
    docs_dir: str | Path, shards_dir: str | Path, field: str | None = None
) -> list[str]:
    """One domain label per document of ``shards_dir``, in stream order (see module docstring).

    Raises:
        FileNotFoundError: no completion markers beside the split folder.
        ValueError: the documents do not reproduce the shards' document counts.
    """
    docs_dir, shards_dir = Path(docs_dir), Path(shards_dir)
    reader = ShardReader(shards_dir)
    split = shards_dir.name
    markers = sorted((shards_dir.parent / MARKERS).glob("*.json"))
    if not markers:
        raise FileNotFoundError(
            f"no {MARKERS}/*.json beside {shards_dir}: not a `moelab tokens tokenize` output"
        )
    by_shard = {}
    for path in markers:
        marker = json.loads(path.read_text())
        by_shard[f"shard_{int(marker['index']):05d}"] = marker
    labels: list[str] = []
    for info in reader.meta.shards:
        if info.docs == 0:
            continue
        marker = by_shard.get(info.name)
        if marker is None:
            raise ValueError(f"{shards_dir}: no completion marker for {info.name}")
        rule = marker["split_rule"]
        mine = [
            domain_of(rec, field)
            for rec in _records(docs_dir / marker["input"])
            if split_of(str(rec["id"]), rule["validation_fraction"], rule["salt"]) == split
        ]
        if len(mine) != info.docs:
            raise ValueError(
                f"{docs_dir / marker['input']} gives {len(mine)} {split} documents but "
                f"{info.name} holds {info.docs}: not the documents these shards were made from"
            )
        labels.extend(mine)
    return labels
