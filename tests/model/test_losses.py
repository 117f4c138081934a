"""Losses on routing traces with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from moelab.model.losses import (
    cross_entropy,
    linear_cross_entropy,
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


def _lce_case(N: int = 37, D: int = 16, V: int = 50, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=gen)
    w = torch.randn(V, D, generator=gen) * 0.3
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[::5] = -100
    return h, w, labels


def _loss_and_grads(fn, h, w, labels, scale: float = 1.0):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w, labels)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 8, 36, 37, 1000])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_linear_cross_entropy_matches_unfused_loss_and_gradients(chunk, scale):
    """Any chunking (one token, uneven last chunk, one chunk) gives the unfused loss and grads;
    a scaled backward (gradient accumulation's 1/accum) scales them."""
    h, w, labels = _lce_case()
    ref = _loss_and_grads(lambda h, w, y: cross_entropy(h @ w.T, y), h, w, labels, scale)
    ours = _loss_and_grads(
        lambda h, w, y: linear_cross_entropy(h, w, y, chunk_tokens=chunk), h, w, labels, scale
    )
    torch.testing.assert_close(ours[0], ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[1], ref[1], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ours[2], ref[2], atol=1e-7, rtol=1e-5)
    # ignored rows get no gradient at all
    assert ours[1][labels == -100].abs().max() == 0


def test_linear_cross_entropy_gradcheck_double():
    """The gradients formed in the forward are the true derivative (finite differences)."""
    h, w, labels = _lce_case(N=6, D=3, V=5)
    h, w = h.double().requires_grad_(), w.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, labels, chunk_tokens=4), (h, w)
    )


def test_linear_cross_entropy_under_bf16_autocast_and_without_grad():
    h, w, labels = _lce_case(N=64, D=32, V=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(lambda h, w, y: cross_entropy(h @ w.T, y), h, w, labels)
        ours = _loss_and_grads(
            lambda h, w, y: linear_cross_entropy(h, w, y, chunk_tokens=16), h, w, labels
        )
    # bf16 matmuls on both sides; the head's gradient is summed in fp32 here, in bf16 there.
    assert ours[1].dtype == ours[2].dtype == torch.float32
    torch.testing.assert_close(ours[0], ref[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(ours[1], ref[1], atol=2e-4, rtol=2e-2)
    torch.testing.assert_close(ours[2], ref[2], atol=2e-4, rtol=2e-2)
    with torch.no_grad():
        assert linear_cross_entropy(h, w, labels).item() == pytest.approx(
            cross_entropy(h @ w.T, labels).item(), rel=1e-6
        )


def test_linear_cross_entropy_rejects_bad_shapes():
    h, w, labels = _lce_case()
    with pytest.raises(ValueError, match=r"h \(N, D\) and labels \(N,\)"):
        linear_cross_entropy(h, w, labels[:-1])


def test_model_with_labels_returns_the_fused_loss_of_its_logits():
    from moelab.model import ModelConfig, build_model

    cfg = ModelConfig.from_dict({"preset": "tiny-olmoe"}, ["num_layers=1", "vocab_size=64"])
    model = build_model(cfg, seed=0)
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    inputs, labels = x[:, :-1], x[:, 1:]
    ref = cross_entropy(model(inputs).logits, labels)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(inputs, labels=labels)
    assert out.logits is None and out.batch_size == 2 and len(out.router) == 1
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-7, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="full sequence"):
        model(inputs, labels=labels, logits_at=torch.zeros(2, dtype=torch.long))
