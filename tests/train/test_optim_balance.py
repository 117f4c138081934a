"""Parameter groups, the bias update's effect on load, and the aux losses' gradients."""

from __future__ import annotations

import torch

from moelab.model import build_model, get_preset
from moelab.model.losses import load_balancing_loss, router_z_loss
from moelab.train.balance import load_metrics, routers, update_expert_bias
from moelab.train.config import OptimConfig
from moelab.train.optim import param_groups


def test_every_parameter_in_exactly_one_group():
    model = build_model(get_preset("tiny-dots"))
    decay, no_decay = param_groups(model, OptimConfig())
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(p.dim() >= 2 for p in decay["params"])
    assert model.embed_tokens.weight in no_decay["params"]
    assert any(p is model.layers["0"].input_layernorm.weight for p in no_decay["params"])
    olmoe_style = param_groups(model, OptimConfig(decay_embeddings=True, decay_norms=True))
    assert len(olmoe_style[1]["params"]) == 0


def _skewed_model(seed=0):
    cfg = get_preset("tiny-dots")
    model = build_model(cfg, seed=seed).eval()
    with torch.no_grad():
        for r in routers(model):
            r.weight[:2] += 0.5  # experts 0 and 1 win most tokens
    return cfg, model


def _max_vio(model, x):
    with torch.no_grad():
        out = model(x)
    return load_metrics(torch.stack([r.tokens_per_expert_E for r in out.router]))["max_vio"]


def test_bias_update_evens_out_load():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4096, (8, 64), generator=gen)
    results = {}
    for rate in (0.0, 1e-2):
        cfg, model = _skewed_model()
        start = _max_vio(model, x)
        for _ in range(60):
            with torch.no_grad():
                out = model(x)
            counts = torch.stack([r.tokens_per_expert_E for r in out.router])
            update_expert_bias(model, counts, rate)
        results[rate] = (start, _max_vio(model, x))
    start, end = results[1e-2]
    assert end < 0.5 * start, results
    assert results[0.0][1] == results[0.0][0]  # γ = 0 changes nothing
    assert all(not r.expert_bias.requires_grad for r in routers(model))


def test_lb_and_z_loss_gradients_reach_the_router_only_through_scores():
    cfg = get_preset("tiny-olmoe")
    model = build_model(cfg)
    out = model(torch.randint(0, 4096, (2, 16)))
    lb = load_balancing_loss(out.router, cfg.moe.num_experts, cfg.moe.top_k)
    z = router_z_loss(out.router)
    (lb + z).backward()
    router_grads = [r.weight.grad for r in routers(model)]
    assert all(g is not None and g.abs().sum() > 0 for g in router_grads)
    # The last layer's experts sit after every router: the aux losses must not reach them.
    last = model.layers[str(cfg.num_layers - 1)].mlp.experts.gate_up_proj
    assert last.grad is None or last.grad.abs().sum() == 0
