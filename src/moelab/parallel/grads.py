"""Gradients that FSDP does not reduce, and the global gradient norm over every kind of shard.

After the backward of a step, three kinds of gradients live on a rank:

* FSDP-sharded (DTensor) dense gradients, already averaged over the data-parallel ranks;
* expert-parallel gradients (plain tensors, this rank's slice of the experts). The all-to-all
  backward already summed every EP peer's contribution, so they are summed over the ranks that
  hold the same slice (``efsdp_dp``) and divided by the data-parallel size: the mean, as FSDP's;
* plain dense gradients on a pipeline rank (its stages' layers only), disjoint across ``pp``.

``clip_grad_norm_`` computes the norm of the *whole* model's gradient, as one process would:
squares of disjoint pieces are summed over the groups that split them, never over replicas.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from moelab.parallel.expert import EP_GROUP_ATTR


@torch.no_grad()
def reduce_expert_grads_(
    params: list[torch.Tensor], dp_size: int, replica_group: dist.ProcessGroup | None
) -> None:
    """Sum EP gradients over the replicas of the same slice, then divide by the dp size."""
    grads = [p.grad for p in params if hasattr(p, EP_GROUP_ATTR) and p.grad is not None]
    if not grads:
        return
    if replica_group is not None and dist.get_world_size(replica_group) > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=replica_group)
        pieces = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [x.view_as(g) for x, g in zip(pieces, grads, strict=True)])
    torch._foreach_div_(grads, float(dp_size))


@torch.no_grad()
def clip_grad_norm_(
    params: list[torch.Tensor],
    max_norm: float,
    *,
    ep_group: dist.ProcessGroup | None = None,
    pp_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Scale gradients so the global L2 norm is at most ``max_norm``; return that norm (fp32).

    Same formula as ``torch.nn.utils.clip_grad_norm_`` (coefficient max/(norm+1e-6), clamped
    to 1) on the norm the single-process model would have.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    sq_dtensor = None  # a Partial DTensor until one all-reduce at the end
    sq_plain = torch.zeros((), dtype=torch.float32, device=device)
    sq_expert = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            sq = g.float().pow(2).sum()
            sq_dtensor = sq if sq_dtensor is None else sq_dtensor + sq
        elif hasattr(p, EP_GROUP_ATTR):
            sq_expert += g.float().pow(2).sum()
        else:
            sq_plain += g.float().pow(2).sum()
    if ep_group is not None and dist.get_world_size(ep_group) > 1:
        dist.all_reduce(sq_expert, group=ep_group)
    total_sq = sq_plain + sq_expert
    if sq_dtensor is not None:
        total_sq = total_sq + sq_dtensor.full_tensor()
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(total_sq, group=pp_group)
    total = total_sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.item() if isinstance(g, DTensor) else coef.to(g.device))
    return total
