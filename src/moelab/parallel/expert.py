"""Expert parallelism: experts split over the ``ep`` ranks, tokens exchanged by all-to-all.

``AllToAllDispatcher`` has the interface of ``moelab.model.dispatch.LocalDispatcher``:

* dispatch: sort this rank's (token, slot) assignments by global expert, exchange the per-expert
  counts (one all-to-all of E integers), then the tokens (one variable-split all-to-all), and
  regroup what arrived from every source rank into local-expert order;
* combine: the exact reverse (regroup back, all-to-all back), then the same weighted sum over
  the k slots as the local dispatcher, so results equal the single-device model's.

The sliced expert weights stay plain local tensors (the grouped GEMM sees them unchanged);
each is tagged with ``common.sharding.LOCAL_SHARD_ATTR`` = the ep mesh, so gradient reduction,
clipping and DCP (which presents them as DTensors ``Shard(0)`` over the ``ep`` mesh) find them.

Dropless: split sizes are whatever the routing gives (a host sync reads them). The router still
scores all experts on every rank, so routing, losses and the bias update are unchanged; expert
counts for the bias update are reduced over the data-parallel group by the trainer.

Shapes: T tokens, K top_k, S = T*K assignments, R received rows, D hidden, E experts,
El = E / ep local experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc
from torch import nn

from moelab.common.sharding import LOCAL_SHARD_ATTR
from moelab.model.moe import MoELayer


@dataclass
class A2AState:
    inverse_S: torch.Tensor
    regroup_back_R: torch.Tensor
    weights_TK: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    num_tokens: int
    top_k: int
    out_dtype: torch.dtype


def _a2a(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    out = fc.all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)
    return fc.wait_tensor(out) if hasattr(fc, "wait_tensor") else out


class AllToAllDispatcher:
    def __init__(self, num_experts: int, group: dist.ProcessGroup):
        self.group = group
        self.ep = dist.get_world_size(group)
        if num_experts % self.ep:
            raise ValueError(
                f"{num_experts} experts do not split over {self.ep} expert-parallel ranks"
            )
        self.num_experts, self.local_experts = num_experts, num_experts // self.ep

    def dispatch(self, x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor):
        T, K = expert_ids_TK.shape
        flat = expert_ids_TK.reshape(-1)
        order = torch.argsort(flat, stable=True)
        x_sorted = x_TD.index_select(0, order // K)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts_E = torch.zeros(self.num_experts, dtype=torch.int64, device=x_TD.device)
        counts_E.scatter_add_(0, flat, torch.ones_like(flat))
        recv_counts = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_counts, counts_E, group=self.group)  # (ep, El) after the view
        send_mat = counts_E.view(self.ep, self.local_experts)
        recv_mat = recv_counts.view(self.ep, self.local_experts)
        send_splits = send_mat.sum(1).tolist()
        recv_splits = recv_mat.sum(1).tolist()
        x_recv = _a2a(x_sorted, recv_splits, send_splits, self.group)
        regroup = _source_to_expert_order(recv_mat)
        regroup_back = torch.empty_like(regroup)
        regroup_back[regroup] = torch.arange(regroup.numel(), device=regroup.device)
        x_local = x_recv.index_select(0, regroup.to(x_recv.device))
        state = A2AState(
            inverse, regroup_back, weights_TK, send_splits, recv_splits, T, K, x_TD.dtype
        )
        return x_local, recv_mat.sum(0), state

    def combine(self, y_RD: torch.Tensor, state: A2AState) -> torch.Tensor:
        y_recv = y_RD.index_select(0, state.regroup_back_R.to(y_RD.device))
        y_sorted = _a2a(y_recv, state.send_splits, state.recv_splits, self.group)
        y_TKD = y_sorted.index_select(0, state.inverse_S).view(state.num_tokens, state.top_k, -1)
        weighted = y_TKD * state.weights_TK.unsqueeze(-1)
        return weighted.sum(dim=1).to(state.out_dtype)


def _source_to_expert_order(recv_mat: torch.Tensor) -> torch.Tensor:
    """Row permutation from (source rank, local expert) blocks to (local expert, source rank)."""
    counts = recv_mat.cpu()
    ep, el = counts.shape
    starts = torch.cumsum(counts.reshape(-1), 0) - counts.reshape(-1)
    starts = starts.view(ep, el)
    pieces = [
        torch.arange(int(starts[s, e]), int(starts[s, e] + counts[s, e]))
        for e in range(el)
        for s in range(ep)
    ]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


EP_GROUP_ATTR = LOCAL_SHARD_ATTR


def expert_params(model: nn.Module) -> list[nn.Parameter]:
    """The expert-parallel (sliced, plain) parameters of ``model``."""
    return [p for p in model.parameters() if hasattr(p, EP_GROUP_ATTR)]


def apply_expert_parallel(
    model: nn.Module, group: dist.ProcessGroup | None = None, mesh=None
) -> None:
    """Keep this rank's slice of every MoE layer's experts and swap in the all-to-all dispatcher.

    Pass either a process ``group`` or a 1-D ``mesh`` (the ``ep`` DeviceMesh); with a mesh the
    parameters remember it, which DCP checkpoints need.
    """
    if mesh is not None:
        group = mesh.get_group()
    if group is None:
        raise ValueError("apply_expert_parallel needs a process group or an ep mesh")
    ep_rank = dist.get_rank(group)
    for module in model.modules():
        if not isinstance(module, MoELayer):
            continue
        experts = module.experts
        dispatcher = AllToAllDispatcher(experts.num_experts, group)
        lo = ep_rank * dispatcher.local_experts
        hi = lo + dispatcher.local_experts
        with torch.no_grad():
            experts.gate_up_proj = nn.Parameter(experts.gate_up_proj[lo:hi].clone())
            experts.down_proj = nn.Parameter(experts.down_proj[lo:hi].clone())
        for p in (experts.gate_up_proj, experts.down_proj):
            setattr(p, EP_GROUP_ATTR, mesh)
        experts.num_experts = dispatcher.local_experts
        experts.expert_offset = lo
        module.dispatcher = dispatcher
