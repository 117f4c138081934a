"""Aux-loss-free load balancing and expert-load metrics.

``update_expert_bias`` runs once per optimizer step, after ``optimizer.step()``, on the token
counts of the whole global batch (all micro batches; all ranks once reduced by the caller):
``b_e += γ · sign(mean_e(c) − c_e)``, in fp32, under no_grad, outside the optimizer
(DeepSeek-V3 §2.1.2; Megatron-Core ``get_updated_expert_bias``).
"""

from __future__ import annotations

import torch

from moelab.model.router import Router


def routers(model: torch.nn.Module) -> list[Router]:
    return [m for m in model.modules() if isinstance(m, Router)]


@torch.no_grad()
def update_expert_bias(model: torch.nn.Module, counts_LE: torch.Tensor, rate: float) -> None:
    """Move each MoE layer's selection bias towards balance; counts_LE has one row per router."""
    if rate == 0:
        return
    layers = routers(model)
    if counts_LE.shape[0] != len(layers):
        raise ValueError(f"{counts_LE.shape[0]} count rows for {len(layers)} MoE layers")
    for router, counts in zip(layers, counts_LE, strict=True):
        if router.expert_bias is None:
            raise ValueError("balance.bias_update_rate > 0 needs model.moe.expert_bias: true")
        counts = counts.float()
        router.expert_bias += rate * torch.sign(counts.mean() - counts).to(
            router.expert_bias.device
        )


def load_metrics(counts_LE: torch.Tensor) -> dict[str, float | list]:
    """MaxVio (max load / mean load − 1) per layer and its mean, and the dead-expert count."""
    counts = counts_LE.float()
    mean = counts.mean(dim=1, keepdim=True).clamp_min(1e-9)
    max_vio = (counts.max(dim=1, keepdim=True).values / mean - 1).squeeze(1)
    return {
        "max_vio": max_vio.mean().item(),
        "max_vio_per_layer": [round(v, 4) for v in max_vio.tolist()],
        "dead_experts": int((counts == 0).sum().item()),
        "load_per_layer": counts.long().tolist(),
    }
