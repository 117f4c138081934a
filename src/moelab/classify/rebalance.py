"""Category rebalancing: resample documents so the category mixture matches target weights.

dots.llm1 raises knowledge/encyclopedic content and lowers fiction and product pages using a
200-class category model; the report gives no proportions, so targets are configuration.

The plan is exact, not probabilistic: category ``c`` gets ``k_c`` output documents, where the
``k_c`` are ``total * weight_c`` rounded by largest remainder (so they sum to ``total``). A
category with ``n_c`` documents emits each of them ``k_c // n_c`` times, plus one more copy for
the first ``k_c % n_c`` in the order of a seeded hash of their ids. The achieved mixture is
therefore the target up to ``1/total`` and the selection is deterministic for a seed,
independent of input order. Copies keep the document id (so a later id-hash split keeps them
together) and record ``metadata["rebalance_copy"]``.

What this module does not know: how categories were assigned (a classifier's step, or gold).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from moelab.data.document import Document


def plan_counts(
    counts: Mapping[str, int], weights: Mapping[str, float], total: int | None = None
) -> dict[str, int]:
    """Output documents per category for ``weights`` (normalised); ``total`` defaults to the input size."""
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be >= 0 and not all zero, got {dict(weights)}")
    missing = sorted(c for c, w in weights.items() if w > 0 and counts.get(c, 0) == 0)
    if missing:
        raise ValueError(f"categories {missing} have target weight but no documents to sample")
    total = sum(counts.values()) if total is None else total
    norm = sum(weights.values())
    exact = {c: total * w / norm for c, w in weights.items()}
    plan = {c: int(x) for c, x in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - plan[c]), c))
    for c in by_remainder[: total - sum(plan.values())]:
        plan[c] += 1
    return plan


def _rank_key(seed: int, doc_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{doc_id}".encode(), digest_size=8).digest()


def copies_per_document(
    ids_by_category: Mapping[str, list[str]], plan: Mapping[str, int], seed: int
) -> dict[str, int]:
    """How many times each document id is emitted under ``plan`` (0: dropped)."""
    out: dict[str, int] = {}
    for category, ids in ids_by_category.items():
        k = plan.get(category, 0)
        full, extra = divmod(k, len(ids)) if ids else (0, 0)
        ranked = sorted(ids, key=lambda i: _rank_key(seed, i))
        for r, doc_id in enumerate(ranked):
            out[doc_id] = full + (1 if r < extra else 0)
    return out


def rebalance(
    docs: Iterable[Document],
    weights: Mapping[str, float],
    field: str = "category",
    seed: int = 0,
    total: int | None = None,
) -> Iterator[Document]:
    """Resample ``docs`` (category in ``metadata[field]["label"]`` or ``metadata[field]``).

    Two passes over an in-memory list: count, then emit in input order with copies adjacent.
    """
    docs = list(docs)
    cats = [category_of(d, field) for d in docs]
    ids: dict[str, list[str]] = {}
    for doc, cat in zip(docs, cats, strict=True):
        ids.setdefault(cat, []).append(doc.id)
    if sum(len(v) for v in ids.values()) != len({d.id for d in docs}):
        raise ValueError("document ids must be unique to be resampled")
    plan = plan_counts(Counter(cats), weights, total)
    copies = copies_per_document(ids, plan, seed)
    for doc in docs:
        for k in range(copies[doc.id]):
            meta = {**doc.metadata, "rebalance_copy": k}
            yield Document(doc.id, doc.text, doc.url, doc.source, meta)


def category_of(doc: Document, field: str) -> str:
    value = doc.metadata.get(field)
    if isinstance(value, dict):
        value = value.get("label")
    if not isinstance(value, str):
        raise ValueError(f"document {doc.id} has no category in metadata[{field!r}]")
    return value


def mixture(labels: Iterable[str]) -> dict[str, float]:
    """Share of each label, in percent."""
    counts = Counter(labels)
    n = sum(counts.values())
    return {c: 100.0 * k / n for c, k in sorted(counts.items())}
