"""AdamW with parameter groups: decay on matrices only (by default), each parameter in one group."""

from __future__ import annotations

import torch
from torch import nn

from moelab.train.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into decay / no-decay groups; raises if any is lost or doubled."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None:
        embeddings.add(id(lm_head.weight))
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            (decay if cfg.decay_norms else no_decay).append(p)
        elif id(p) in embeddings:
            (decay if cfg.decay_embeddings else no_decay).append(p)
        else:
            decay.append(p)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for p in decay + no_decay]
    if len(grouped) != len(set(grouped)) or set(grouped) != trainable:
        raise RuntimeError("parameter groups must hold every trainable parameter exactly once")
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``param_groups``: one fused kernel per step (``fused``), or foreach kernels."""
    return torch.optim.AdamW(
        param_groups(model, cfg),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        **({"fused": True} if fused else {"foreach": True}),
    )
