"""The MoE layer and the decoder: what the architecture switches must cause."""

from __future__ import annotations

import torch

from moelab.model import build_model, get_preset
from moelab.model.config import ModelConfig, MoEConfig
from moelab.model.layers import SwiGLU
from moelab.model.moe import GATHER_MAX_NUMEL, MoELayer


def _moe_cfg(**moe) -> ModelConfig:
    return ModelConfig(hidden_size=32, intermediate_size=64, moe=MoEConfig(**moe))


def test_one_expert_equals_dense_swiglu():
    layer = MoELayer(_moe_cfg(num_experts=1, top_k=1, expert_intermediate_size=48))
    dense = SwiGLU(32, 48)
    with torch.no_grad():
        layer.gate.weight.normal_()
        layer.experts.gate_up_proj[0].copy_(
            torch.cat([dense.gate_proj.weight, dense.up_proj.weight])
        )
        layer.experts.down_proj[0].copy_(dense.down_proj.weight)
    x = torch.randn(2, 5, 32)
    y, routing = layer(x)
    assert torch.all(routing.weights_TK == 1.0)  # softmax over one expert
    torch.testing.assert_close(y, dense(x), atol=1e-6, rtol=1e-5)


def test_shared_experts_added_unscaled():
    cfg = _moe_cfg(
        num_experts=4,
        top_k=2,
        num_shared_experts=2,
        expert_intermediate_size=16,
        score_func="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        expert_bias=True,
        router_fp32=True,
    )
    layer = MoELayer(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 6, 32)
    y, _ = layer(x)
    assert layer.shared_experts.gate_proj.weight.shape == (32, 32)  # 2 × 16, fused
    shared = layer.shared_experts
    layer.shared_experts = None
    y_routed, _ = layer(x)
    torch.testing.assert_close(y, y_routed + shared(x))


def test_dense_first_layers_and_router_outputs():
    cfg = get_preset("tiny-dots")
    model = build_model(cfg)
    assert not model.layers["0"].is_moe and model.layers["1"].is_moe
    assert not hasattr(model.layers["0"].mlp, "gate")
    out = model(torch.randint(0, cfg.vocab_size, (2, 8)))
    assert out.moe_layers == [1, 2, 3]
    for r in out.router:
        assert r.expert_ids_TK.shape == (16, cfg.moe.top_k)
        assert r.tokens_per_expert_E.sum() == 16 * cfg.moe.top_k
        assert r.logits_TE.shape == (16, cfg.moe.num_experts)


def test_init_is_deterministic_for_a_seed():
    cfg = get_preset("tiny-olmoe")
    a, b, c = build_model(cfg, seed=1), build_model(cfg, seed=1), build_model(cfg, seed=2)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), name
            assert pa.abs().max() <= 3 * cfg.init_std + 1e-7  # truncated at 3σ


def test_backward_reaches_every_parameter_under_bf16_autocast():
    cfg = get_preset("tiny-dots")
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.logits.dtype == torch.bfloat16
    out.logits.float().logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_few_token_gathered_path_equals_grouped_and_runs_only_without_grad():
    """Decode-sized inputs (a weight copy under GATHER_MAX_NUMEL, no autograd) take the gathered path;
    its output equals the sorted grouped path's, in fp32 and bf16, for both router families."""
    for preset in ("tiny-dots", "tiny-olmoe"):
        cfg = get_preset(preset)
        cfg.num_layers = 2
        layer = next(b.mlp for b in build_model(cfg, seed=3).layers.values() if b.is_moe)
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            layer = layer.to(dtype)
            x = torch.randn(3, 1, cfg.hidden_size, dtype=dtype)
            assert not layer._gather(3 * cfg.moe.top_k)  # autograd on
            with torch.no_grad():
                assert layer._gather(3 * cfg.moe.top_k)
                assert layer._gather(cfg.moe.num_experts)  # the copy's size is the bound
                too_many = GATHER_MAX_NUMEL // layer.experts.gathered_numel(1) + 1
                assert not layer._gather(too_many)
            called = []
            original = layer.experts.forward_gathered
            layer.experts.forward_gathered = lambda *a, c=called, f=original: c.append(1) or f(*a)
            with torch.no_grad():
                fast, routing = layer(x)
            with torch.enable_grad():
                slow, _ = layer(x)  # autograd on: the sorted grouped path
            assert len(called) == 1  # only the no-grad call was gathered
            del layer.experts.forward_gathered
            assert fast.dtype == slow.dtype == dtype
            torch.testing.assert_close(fast, slow.detach(), atol=tol, rtol=tol)
            assert routing.expert_ids_TK.shape == (3, cfg.moe.top_k)
