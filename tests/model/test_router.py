"""Router variants: OLMoE softmax, dots sigmoid + selection bias + groups, fp32 where required."""

from __future__ import annotations

import torch

from moelab.model.config import MoEConfig
from moelab.model.router import Router


def _router(**kw) -> Router:
    r = Router(16, MoEConfig(**kw))
    with torch.no_grad():
        r.weight.copy_(torch.randn(r.weight.shape, generator=torch.Generator().manual_seed(0)))
    return r


def test_softmax_weights_are_not_renormalised():
    r = _router(num_experts=8, top_k=2)
    out = r(torch.randn(10, 16))
    probs = torch.softmax(out.logits_TE.float(), -1)
    torch.testing.assert_close(out.weights_TK, probs.topk(2).values)
    assert (out.weights_TK.sum(-1) < 1).all()
    assert out.tokens_per_expert_E.sum() == 20


def test_sigmoid_renormalised_and_scaled():
    r = _router(
        num_experts=8,
        top_k=3,
        score_func="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        expert_bias=True,
        router_fp32=True,
    )
    out = r(torch.randn(10, 16))
    torch.testing.assert_close(out.weights_TK.sum(-1), torch.full((10,), 2.5))
    assert out.weights_TK.dtype == torch.float32


def test_bias_moves_selection_not_weights():
    r = _router(num_experts=8, top_k=2, score_func="sigmoid", expert_bias=True, router_fp32=True)
    x = torch.randn(64, 16)
    before = r(x)
    r.expert_bias[3] = 10.0  # expert 3 now always wins a slot
    after = r(x)
    assert (after.expert_ids_TK == 3).any(-1).all()
    assert not (before.expert_ids_TK == 3).any(-1).all()
    picked = after.scores_TE.gather(1, after.expert_ids_TK)
    torch.testing.assert_close(after.weights_TK, picked)  # unbiased scores
    assert r.expert_bias.requires_grad is False


def test_group_limited_selection_stays_in_kept_groups():
    r = _router(
        num_experts=16,
        top_k=4,
        score_func="sigmoid",
        n_group=4,
        topk_group=2,
        expert_bias=True,
        router_fp32=True,
    )
    out = r(torch.randn(200, 16))
    groups = out.expert_ids_TK // 4
    assert all(len(set(row.tolist())) <= 2 for row in groups)


def test_bias_and_fp32_router_weight_stay_fp32_when_model_is_cast():
    r = _router(num_experts=8, top_k=2, score_func="sigmoid", expert_bias=True, router_fp32=True)
    r.expert_bias.fill_(0.1234567)
    with torch.no_grad():
        r.weight.fill_(0.1234567)
    weight = r.weight
    r = r.to(torch.bfloat16)
    assert r.expert_bias.dtype == torch.float32 and r.weight.dtype == torch.float32
    assert r.weight is weight  # the same Parameter object: optimizers keep their reference
    assert r.expert_bias[0].item() == torch.tensor(0.1234567).item()
    assert r.weight[0, 0].item() == torch.tensor(0.1234567).item()
    out = r(torch.randn(4, 16, dtype=torch.bfloat16))
    assert out.logits_TE.dtype == torch.float32  # fp32 router math (dots)


def test_olmoe_router_runs_in_model_dtype():
    r = _router(num_experts=8, top_k=2).to(torch.bfloat16)
    out = r(torch.randn(4, 16, dtype=torch.bfloat16))
    assert out.logits_TE.dtype == torch.bfloat16 and out.scores_TE.dtype == torch.float32
    assert out.weights_TK.dtype == torch.bfloat16
