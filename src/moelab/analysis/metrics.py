"""Routing metrics of OLMoE §5 on recorded expert choices: pure numpy, results as plain JSON.

Every function takes expert ids of shape (M, K) (M tokens, K slots) or (N, T, K) for one MoE
layer and returns numbers; ``compute_metrics`` assembles the JSON document that plots read.

* **Load and MaxVio**: assignments per expert; MaxVio = max load / mean load - 1 (the formula of
  ``moelab.train.balance.load_metrics``, repeated here because analysis never imports train);
  dead experts get no assignment.
* **Router saturation** (OLMoE Fig. 6): the share of a checkpoint's top-k set that the final
  checkpoint also picks for the same token, averaged over tokens; 1 at the final checkpoint.
* **Co-activation** (OLMoE Fig. 8): ``C[i, j]`` = of the tokens routed to expert i, the share
  also routed to j; the diagonal is 0 and a never-used expert has a zero row.
* **Domain specialization** (OLMoE Fig. 9): ``share[d, e]`` = of domain d's tokens, the share
  routed to e (a row sums to K); uniform routing gives K/E everywhere. The scalar per checkpoint
  is the mean total-variation distance between each domain's expert distribution and the
  distribution of all tokens (0: experts ignore the domain; 1: disjoint experts).
* **Vocabulary specialization** (OLMoE Fig. 10): for a token id occurring at least
  ``min_count`` times, the share of its occurrences routed to its most frequent expert; its mean
  over such ids (1: every occurrence of an id uses the same expert; K/E under uniform routing).
  Each expert's top tokens are the ids with the largest share of their occurrences routed to it.
* **Distinct experts per sequence**: how many different experts one sequence uses in a layer.

What this module does not know: models, files or plotting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = "moelab.analysis/1"


def _flat(ids: np.ndarray) -> np.ndarray:
    return ids.reshape(-1, ids.shape[-1]).astype(np.int64)


def one_hot(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """(M, E) bool: which experts each token uses."""
    flat = _flat(ids)
    mask = np.zeros((len(flat), num_experts), dtype=bool)
    np.put_along_axis(mask, flat, True, axis=1)
    return mask


def expert_load(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """(E,) int64 assignments per expert; sums to M*K."""
    return np.bincount(_flat(ids).ravel(), minlength=num_experts)


def max_vio(load: np.ndarray) -> float:
    """max load / mean load - 1 (0 when perfectly balanced)."""
    mean = max(float(load.mean()), 1e-9)
    return float(load.max()) / mean - 1.0


def saturation(ids: np.ndarray, final_ids: np.ndarray, num_experts: int) -> float:
    """Mean share of each token's top-k that the final checkpoint also chose."""
    if ids.shape != final_ids.shape:
        raise ValueError(f"routing shapes differ: {ids.shape} vs {final_ids.shape}")
    both = one_hot(ids, num_experts) & one_hot(final_ids, num_experts)
    return float(both.sum(axis=1).mean() / ids.shape[-1])


def coactivation(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """(E, E) C[i, j]: share of expert i's tokens that also go to j; zero diagonal."""
    mask = one_hot(ids, num_experts).astype(np.float64)
    joint = mask.T @ mask
    counts = np.diag(joint).copy()
    out = np.divide(joint, counts[:, None], out=np.zeros_like(joint), where=counts[:, None] > 0)
    np.fill_diagonal(out, 0.0)
    return out


def domain_share(
    ids: np.ndarray, domain_ids: np.ndarray, num_domains: int, num_experts: int
) -> np.ndarray:
    """(D, E) share of domain d's tokens routed to e; a row sums to K (0 for an absent domain)."""
    flat, dom = _flat(ids), domain_ids.reshape(-1).astype(np.int64)
    counts = np.zeros((num_domains, num_experts), dtype=np.float64)
    np.add.at(counts, (np.repeat(dom, flat.shape[1]), flat.ravel()), 1.0)
    tokens = np.bincount(dom, minlength=num_domains).astype(np.float64)
    return np.divide(counts, tokens[:, None], out=np.zeros_like(counts), where=tokens[:, None] > 0)


def domain_tv(ids: np.ndarray, domain_ids: np.ndarray, num_domains: int, num_experts: int) -> float:
    """Mean (over present domains) total-variation distance from the all-token expert distribution."""
    share = domain_share(ids, domain_ids, num_domains, num_experts)
    present = np.bincount(domain_ids.reshape(-1), minlength=num_domains) > 0
    overall = expert_load(ids, num_experts) / _flat(ids).size
    dist = share[present] / ids.shape[-1]
    return float(0.5 * np.abs(dist - overall[None, :]).sum(axis=1).mean())


def token_expert_counts(
    ids: np.ndarray, token_ids: np.ndarray, num_experts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct token ids, their occurrence counts, and (U, E) routings of each id to each expert."""
    flat = _flat(ids)
    vocab, inverse, occurrences = np.unique(
        token_ids.reshape(-1), return_inverse=True, return_counts=True
    )
    counts = np.zeros((len(vocab), num_experts), dtype=np.int64)
    np.add.at(counts, (np.repeat(inverse, flat.shape[1]), flat.ravel()), 1)
    return vocab, occurrences, counts


def vocab_concentration(
    ids: np.ndarray, token_ids: np.ndarray, num_experts: int, min_count: int
) -> float | None:
    """Mean over frequent token ids of the share of occurrences sent to their top expert."""
    _, occurrences, counts = token_expert_counts(ids, token_ids, num_experts)
    keep = occurrences >= min_count
    if not keep.any():
        return None
    return float((counts[keep].max(axis=1) / occurrences[keep]).mean())


def expert_top_tokens(
    ids: np.ndarray, token_ids: np.ndarray, num_experts: int, n: int, min_count: int
) -> list[list[dict[str, Any]]]:
    """Per expert, up to ``n`` frequent ids by share of their occurrences routed to it."""
    vocab, occurrences, counts = token_expert_counts(ids, token_ids, num_experts)
    keep = occurrences >= min_count
    vocab, occurrences, counts = vocab[keep], occurrences[keep], counts[keep]
    out = []
    for e in range(num_experts):
        share = counts[:, e] / np.maximum(occurrences, 1)
        order = np.lexsort((-counts[:, e], -share))[:n]
        out.append(
            [
                {
                    "id": int(vocab[i]),
                    "share": round(float(share[i]), 4),
                    "count": int(counts[i, e]),
                }
                for i in order
                if counts[i, e] > 0
            ]
        )
    return out


def distinct_experts_per_sequence(ids_NTK: np.ndarray, num_experts: int) -> np.ndarray:
    """(N,) number of different experts each sequence uses."""
    N = ids_NTK.shape[0]
    return one_hot(ids_NTK, num_experts).reshape(N, -1, num_experts).any(axis=1).sum(axis=1)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def layer_metrics(
    ids_NTK: np.ndarray,
    final_NTK: np.ndarray,
    token_ids: np.ndarray,
    domain_ids: np.ndarray | None,
    num_domains: int,
    num_experts: int,
    min_count: int,
) -> dict[str, Any]:
    """The per-checkpoint numbers of one layer (what the curves over training plot)."""
    load = expert_load(ids_NTK, num_experts)
    distinct = distinct_experts_per_sequence(ids_NTK, num_experts)
    out = {
        "load": load.tolist(),
        "max_vio": _r(max_vio(load)),
        "dead_experts": int((load == 0).sum()),
        "saturation": _r(saturation(ids_NTK, final_NTK, num_experts)),
        "vocab_concentration": _r(vocab_concentration(ids_NTK, token_ids, num_experts, min_count)),
        "distinct_experts_per_seq": {
            "mean": _r(distinct.mean(), 2),
            "min": int(distinct.min()),
            "max": int(distinct.max()),
        },
        "domain_tv": None,
    }
    if domain_ids is not None:
        out["domain_tv"] = _r(domain_tv(ids_NTK, domain_ids, num_domains, num_experts))
    return out


def final_layer_metrics(
    ids_NTK: np.ndarray,
    token_ids: np.ndarray,
    domain_ids: np.ndarray | None,
    num_domains: int,
    num_experts: int,
    min_count: int,
    top_tokens: int,
) -> dict[str, Any]:
    """The matrices kept for the final checkpoint only (co-activation, domain shares, top tokens)."""
    out: dict[str, Any] = {
        "coactivation": np.round(coactivation(ids_NTK, num_experts), 4).tolist(),
        "top_tokens": expert_top_tokens(ids_NTK, token_ids, num_experts, top_tokens, min_count),
        "domain_share": None,
    }
    if domain_ids is not None:
        share = domain_share(ids_NTK, domain_ids, num_domains, num_experts)
        out["domain_share"] = np.round(share, 4).tolist()
    return out


def compute_metrics(
    traces: list,
    token_ids: np.ndarray,
    domain_ids: np.ndarray | None = None,
    domains: list[str] | None = None,
    *,
    min_count: int = 8,
    top_tokens: int = 8,
) -> dict[str, Any]:
    """The metrics JSON for traces in training order (objects with ``expert_ids`` (L, N, T, K),
    ``layers``, ``num_experts``, ``top_k``, ``name``, ``step``, ``tokens``, ``tokens_per_s``)."""
    if not traces:
        raise ValueError("no routing traces")
    final = traces[-1]
    E, K, D = final.num_experts, final.top_k, len(domains or [])
    for t in traces:
        if t.expert_ids.shape != final.expert_ids.shape or t.num_experts != E:
            raise ValueError(f"{t.name}: routing shape {t.expert_ids.shape} differs from the final")
    checkpoints = []
    for t in traces:
        per_layer = [
            {"layer": layer}
            | layer_metrics(
                t.expert_ids[i], final.expert_ids[i], token_ids, domain_ids, D, E, min_count
            )
            for i, layer in enumerate(t.layers)
        ]
        checkpoints.append(
            {
                "name": t.name,
                "step": t.step,
                "tokens": t.tokens,
                "tokens_per_s": _r(t.tokens_per_s, 1),
                "per_layer": per_layer,
            }
        )
    finals = [
        {"layer": layer}
        | final_layer_metrics(
            final.expert_ids[i], token_ids, domain_ids, D, E, min_count, top_tokens
        )
        for i, layer in enumerate(final.layers)
    ]
    domain_tokens = (
        np.bincount(domain_ids.reshape(-1), minlength=D).tolist() if domain_ids is not None else []
    )
    return {
        "format": FORMAT,
        "num_experts": E,
        "top_k": K,
        "uniform_share": K / E,
        "layers": list(final.layers),
        "sample": {
            "sequences": int(token_ids.shape[0]),
            "seq_len": int(token_ids.shape[1]),
            "tokens": int(token_ids.size),
            "min_token_count": min_count,
        },
        "domains": [
            {"name": n, "tokens": c} for n, c in zip(domains or [], domain_tokens, strict=False)
        ],
        "checkpoints": checkpoints,
        "final": {"name": final.name, "per_layer": finals},
    }
