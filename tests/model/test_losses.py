"""Losses on routing traces with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from moelab.model.losses import (
    cross_entropy,
    load_balancing_loss,
    load_balancing_loss_hf,
    router_z_loss,
    sequence_balance_loss,
)
from moelab.model.router import RouterOutput


def _routing(ids: torch.Tensor, logits: torch.Tensor, sigmoid: bool = False) -> RouterOutput:
    scores = logits.sigmoid() if sigmoid else logits.softmax(-1)
    E = logits.shape[-1]
    counts = torch.bincount(ids.flatten(), minlength=E)
    return RouterOutput(logits, scores, ids, scores.gather(1, ids), counts)


def test_balanced_routing_values():
    E, K, T = 4, 2, 8
    logits = torch.zeros(T, E)  # uniform probabilities
    ids = torch.tensor([[0, 1], [2, 3]] * 4)  # every expert gets T*K/E
    r = _routing(ids, logits)
    assert load_balancing_loss([r, r], E, K).item() == pytest.approx(1.0)
    assert load_balancing_loss_hf([logits, logits], E, K).item() == pytest.approx(K)
    assert router_z_loss([r]).item() == pytest.approx(math.log(E) ** 2)
    assert router_z_loss([r], divide_by_top_k=True).item() == pytest.approx(math.log(E) ** 2 / K)


def test_collapsed_routing_is_penalised():
    E, K, T = 4, 1, 8
    logits = torch.tensor([[5.0, 0, 0, 0]]).repeat(T, 1)
    r = _routing(torch.zeros(T, K, dtype=torch.long), logits)
    p0 = logits.softmax(-1)[0, 0].item()
    assert load_balancing_loss([r], E, K).item() == pytest.approx(E * p0)


def test_sequence_balance_loss_per_sequence():
    """DeepSeek-V3 eq. 17-20 computed per sequence with explicit loops, then averaged."""
    E, K, T, B = 4, 2, 5, 3
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B * T, E, generator=gen)
    ids = logits.topk(K, dim=-1).indices
    r = _routing(ids, logits, sigmoid=True)
    total = 0.0
    for b in range(B):
        s = logits[b * T : (b + 1) * T].sigmoid()
        s = s / s.sum(-1, keepdim=True)
        for e in range(E):
            f = E / (K * T) * sum(int(e in ids[b * T + t].tolist()) for t in range(T))
            total += f * s[:, e].mean().item()
    assert sequence_balance_loss([r], batch_size=B).item() == pytest.approx(total / B, rel=1e-6)
    # Pooling the batch as one sequence is a different number: the grouping matters.
    assert sequence_balance_loss([r], batch_size=1).item() != pytest.approx(total / B, rel=1e-6)
    with pytest.raises(ValueError, match="do not split"):
        sequence_balance_loss([r], batch_size=4)


def test_cross_entropy_uniform_and_ignore():
    V = 50
    logits = torch.zeros(2, 3, V, dtype=torch.bfloat16)
    labels = torch.tensor([[1, 2, -100], [4, -100, -100]])
    assert cross_entropy(logits, labels).item() == pytest.approx(math.log(V), rel=1e-6)


def test_empty_router_list_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        load_balancing_loss([], 4, 2)


def _router_from_logits(logits: torch.Tensor, k: int) -> RouterOutput:
    scores = logits.softmax(-1)
    ids = scores.detach().topk(k).indices
    counts = torch.bincount(ids.flatten(), minlength=logits.shape[-1])
    return RouterOutput(logits, scores, ids, scores.gather(1, ids), counts)


def test_aux_loss_gradients_match_their_closed_forms():
    """The LB and z losses are differentiated exactly where they should be: through the router
    probabilities (LB, with the token counts held constant) and the logits (z)."""
    T, E, K = 12, 6, 2
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(T, E, generator=gen, requires_grad=True)
    r = _router_from_logits(logits, K)
    n = r.tokens_per_expert_E.float()
    (g_lb,) = torch.autograd.grad(load_balancing_loss([r], E, K), logits)
    # LB = E/(T·K) Σ_e n_e · mean_t p_te  ⇒  dLB/dz_tj = E/(T²K) · p_tj · (n_j − Σ_e n_e p_te)
    p = logits.detach().softmax(-1)
    expected = E / (T * T * K) * p * (n - (p * n).sum(-1, keepdim=True))
    torch.testing.assert_close(g_lb, expected, atol=1e-7, rtol=1e-5)
    (g_z,) = torch.autograd.grad(router_z_loss([_router_from_logits(logits, K)]), logits)
    # z = mean_t lse_t²  ⇒  dz/dz_tj = 2 · lse_t · p_tj / T
    lse = torch.logsumexp(logits.detach(), -1, keepdim=True)
    torch.testing.assert_close(g_z, 2 * lse * p / T, atol=1e-7, rtol=1e-5)
    # LB pushes probability away from the busiest expert: descent lowers its logits on average.
    assert g_lb[:, n.argmax()].mean() > 0
