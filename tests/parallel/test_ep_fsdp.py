"""Expert parallelism and FSDP2 on 2 gloo processes equal the single-process model."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from moelab.model import ModelConfig, build_model
from moelab.model.losses import cross_entropy

from .distributed import run_distributed

pytestmark = pytest.mark.distributed


def _cfg() -> ModelConfig:
    return ModelConfig.from_dict(
        {
            "preset": "tiny-dots",
            "vocab_size": 256,
            "hidden_size": 64,
            "num_layers": 3,
            "attention": {"num_heads": 4, "num_kv_heads": 4, "head_dim": 16},
            "moe": {"num_experts": 8, "top_k": 2, "expert_intermediate_size": 16},
        }
    )


def _data():
    return torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0))


def _loss(model, x):
    return cross_entropy(model(x[:, :-1]).logits, x[:, 1:])


def _ep_worker(rank, world):
    from moelab.parallel.expert import apply_expert_parallel

    cfg, x = _cfg(), _data()
    ref = build_model(cfg, seed=1)
    total = sum(_loss(ref, x[2 * r : 2 * r + 2]) for r in range(world))
    total.backward()
    model = build_model(cfg, seed=1)
    apply_expert_parallel(model, dist.group.WORLD)
    local = x[2 * rank : 2 * rank + 2]
    with torch.no_grad():
        torch.testing.assert_close(
            model(local[:, :-1]).logits, ref(local[:, :-1]).logits, atol=1e-6, rtol=0
        )
    _loss(model, local).backward()
    el = cfg.moe.num_experts // world
    for name, p in model.named_parameters():
        ref_grad = dict(ref.named_parameters())[name].grad
        if name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")):
            torch.testing.assert_close(
                p.grad, ref_grad[rank * el : (rank + 1) * el], atol=1e-6, rtol=0
            )
        else:
            grad = p.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)


def test_expert_parallel_matches_single_process():
    run_distributed(_ep_worker, world_size=2)


def _fsdp_worker(rank, world):
    from torch.distributed.device_mesh import init_device_mesh

    from moelab.parallel.fsdp import apply_fsdp

    cfg, x = _cfg(), _data()
    ref = build_model(cfg, seed=1)
    model = build_model(cfg, seed=1)
    apply_fsdp(model, init_device_mesh("cpu", (world,)))
    # SGD, not Adam: Adam's normalised update turns last-bit differences in tiny gradients
    # (the reduce-scatter sums in another order) into lr-sized ones.
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        _loss(ref, x).backward()
        _loss(model, x[2 * rank : 2 * rank + 2]).backward()  # FSDP averages the two halves
        if step == 0:
            for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
                torch.testing.assert_close(
                    p.grad.full_tensor(), p_ref.grad, atol=1e-6, rtol=0, msg=name
                )
        for o in (opt_ref, opt):
            o.step()
            o.zero_grad()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert isinstance(p, torch.distributed.tensor.DTensor), name  # really sharded
        torch.testing.assert_close(p.full_tensor(), p_ref, atol=1e-6, rtol=0, msg=name)


def test_fsdp2_matches_single_process_after_three_steps():
    run_distributed(_fsdp_worker, world_size=2)
