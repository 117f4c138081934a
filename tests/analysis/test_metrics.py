"""Routing metrics on hand-built traces whose answers are known (OLMoE §5 definitions)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from moelab.analysis import metrics as m

E, K = 4, 2


def fixed(n: int, t: int, experts=(0, 1)) -> np.ndarray:
    """A router that always picks the same experts: (N, T, K)."""
    return np.broadcast_to(np.array(experts), (n, t, len(experts))).copy()


def test_a_fixed_router_has_known_load_saturation_and_coactivation():
    ids = fixed(3, 5)
    load = m.expert_load(ids, E)
    assert load.tolist() == [15, 15, 0, 0]
    assert m.max_vio(load) == pytest.approx(1.0)  # max 15 over mean 7.5
    assert m.saturation(ids, ids, E) == 1.0
    co = m.coactivation(ids, E)
    assert co.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m.distinct_experts_per_sequence(ids, E).tolist() == [2, 2, 2]
    tokens = np.arange(15).reshape(3, 5) % 3
    assert m.vocab_concentration(ids, tokens, E, min_count=1) == 1.0


def test_balanced_round_robin_has_zero_maxvio_and_a_ring_of_coactivation():
    i = np.arange(8)
    ids = np.stack([i % E, (i + 1) % E], axis=-1)[None]  # (1, 8, 2)
    assert m.max_vio(m.expert_load(ids, E)) == 0.0
    co = m.coactivation(ids, E)
    # expert 0 is paired with 1 (tokens 0, 4) and with 3 (tokens 3, 7): half each
    assert co[0].tolist() == [0, 0.5, 0, 0.5]
    assert m.distinct_experts_per_sequence(ids, E).tolist() == [4]


@pytest.mark.parametrize(
    ("final", "expected"), [([[0, 1]], 1.0), ([[1, 2]], 0.5), ([[2, 3]], 0.0), ([[1, 0]], 1.0)]
)
def test_saturation_is_the_shared_share_of_the_top_k_set(final, expected):
    assert m.saturation(np.array([[0, 1]]), np.array(final), E) == expected


def test_saturation_refuses_traces_of_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        m.saturation(np.zeros((2, 2), int), np.zeros((3, 2), int), E)


def test_domains_routed_to_disjoint_experts_are_fully_specialized():
    ids = np.concatenate([fixed(1, 6, (0, 1)), fixed(1, 6, (2, 3))])  # (2, 6, 2)
    domains = np.array([[0] * 6, [1] * 6])
    share = m.domain_share(ids, domains, 2, E)
    assert share.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]  # a row sums to K; uniform is K/E
    assert m.domain_tv(ids, domains, 2, E) == pytest.approx(0.5)
    same = fixed(2, 6)
    assert m.domain_tv(same, domains, 2, E) == 0.0  # routing ignores the domain


def test_vocab_concentration_and_top_tokens():
    # token 7 four times: experts 0, 0, 0, 1 (K=1); token 9 twice: expert 2 both times
    tokens = np.array([[7, 7, 7, 7, 9, 9]])
    ids = np.array([[[0], [0], [0], [1], [2], [2]]])
    assert m.vocab_concentration(ids, tokens, E, min_count=1) == pytest.approx((0.75 + 1) / 2)
    assert m.vocab_concentration(ids, tokens, E, min_count=3) == pytest.approx(0.75)
    assert m.vocab_concentration(ids, tokens, E, min_count=5) is None
    top = m.expert_top_tokens(ids, tokens, E, n=2, min_count=1)
    assert top[0] == [{"id": 7, "share": 0.75, "count": 3}]
    assert top[1] == [{"id": 7, "share": 0.25, "count": 1}]
    assert top[2] == [{"id": 9, "share": 1.0, "count": 2}]
    assert top[3] == []


def trace(name, ids_LNTK, step):
    return SimpleNamespace(
        name=name,
        step=step,
        tokens=step * 100,
        expert_ids=ids_LNTK,
        layers=[1, 2],
        num_experts=E,
        top_k=K,
        tokens_per_s=10.0,
    )


def test_compute_metrics_builds_the_json_contract():
    rng = np.random.default_rng(0)
    final = np.stack([fixed(2, 6, (0, 1)), fixed(2, 6, (2, 3))])  # layer 1: {0,1}; layer 2: {2,3}
    early = np.stack([rng.permuted(np.tile(np.arange(E), (2, 6, 1)), axis=-1)[..., :K]] * 2)
    tokens = np.arange(12).reshape(2, 6) % 4
    domains = np.array([[0] * 6, [1] * 6])
    out = m.compute_metrics(
        [trace("step_1", early, 1), trace("step_2", final, 2)],
        tokens,
        domains,
        ["a.org", "b.org"],
        min_count=1,
        top_tokens=3,
    )
    json.dumps(out)  # plain JSON
    assert out["uniform_share"] == K / E and out["layers"] == [1, 2]
    last = out["checkpoints"][-1]["per_layer"]
    assert [layer["saturation"] for layer in last] == [1.0, 1.0]
    assert out["checkpoints"][0]["per_layer"][0]["saturation"] < 1.0
    assert last[0]["load"] == [12, 12, 0, 0] and last[1]["dead_experts"] == 2
    assert last[0]["domain_tv"] == 0.0  # both domains use the same experts
    fin = out["final"]["per_layer"][1]
    assert fin["coactivation"][2][3] == 1.0 and fin["domain_share"][0] == [0, 0, 1, 1]
    assert out["domains"] == [{"name": "a.org", "tokens": 6}, {"name": "b.org", "tokens": 6}]
