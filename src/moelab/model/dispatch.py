"""Token dispatch for dropless token-choice MoE: the seam expert parallelism replaces.

``dispatch`` sorts the T·K (token, slot) assignments by expert so each expert's tokens are one
contiguous block, and returns the per-expert counts that define the blocks. ``combine`` undoes
the permutation, multiplies each expert output by its routing weight and sums over the K slots.

The combine matches transformers' grouped_mm experts path bit for bit: the product
``expert_out * weight`` takes the wider of the two dtypes (fp32 for dots, whose weights are fp32),
the K products are summed with ``sum(dim=1)`` and cast once to the activation dtype.

An all-to-all dispatcher for expert parallelism implements the same methods; the experts only
ever see (sorted tokens, counts). ``run`` (dispatch → experts → combine) is what ``MoELayer``
calls, so an EP dispatcher can pipeline the three over chunks of tokens.

Shapes: T tokens, K top_k, S = T*K assignments, D hidden, E experts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moelab.model import dispatch_cpu


@dataclass
class DispatchState:
    """What ``combine`` needs to undo ``dispatch``."""

    order_S: torch.Tensor
    """Assignment index (t*K + k) of each sorted row."""
    inverse_S: torch.Tensor
    """Sorted row of each assignment (the inverse permutation of order_S)."""
    weights_TK: torch.Tensor
    num_tokens: int
    top_k: int
    out_dtype: torch.dtype


class LocalDispatcher:
    """Single-device dispatch: a stable sort by expert id, no communication."""

    def __init__(self, num_experts: int):
        self.num_experts = num_experts

    def dispatch(
        self, x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, DispatchState]:
        """Return (x_SD sorted by expert, tokens_per_expert_E, state for combine)."""
        T, K = expert_ids_TK.shape
        order, inverse, counts_E = sort_by_expert(expert_ids_TK, self.num_experts)
        if dispatch_cpu.use_cpu_kernels(x_TD):
            x_sorted_SD = dispatch_cpu.gather(x_TD, order, inverse, K)
        else:  # index_select, not x[idx]: several times faster on CPU; its backward is index_add.
            x_sorted_SD = x_TD.index_select(0, order // K)
        return x_sorted_SD, counts_E, DispatchState(order, inverse, weights_TK, T, K, x_TD.dtype)

    def run(
        self,
        x_TD: torch.Tensor,
        expert_ids_TK: torch.Tensor,
        weights_TK: torch.Tensor,
        experts: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """dispatch → ``experts(x_SD, counts_E)`` → combine; an EP dispatcher may pipeline these."""
        x_sorted_SD, counts_E, state = self.dispatch(x_TD, expert_ids_TK, weights_TK)
        return self.combine(experts(x_sorted_SD, counts_E), state)

    def combine(self, y_SD: torch.Tensor, state: DispatchState) -> torch.Tensor:
        """Weighted sum over each token's K expert outputs, in the original token order."""
        if dispatch_cpu.use_cpu_kernels(y_SD, state.weights_TK):
            return dispatch_cpu.combine(y_SD, state.weights_TK, state.order_S, state.inverse_S)
        y_TKD = y_SD.index_select(0, state.inverse_S).view(state.num_tokens, state.top_k, -1)
        return weighted_sum(y_TKD, state.weights_TK, state.out_dtype)


def weighted_sum(
    y_TKD: torch.Tensor, weights_TK: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """sum_k weight_k · y_k in the wider dtype of the two, cast once (transformers' op order)."""
    return (y_TKD * weights_TK.unsqueeze(-1)).sum(dim=1).to(out_dtype)


def sort_by_expert(
    expert_ids_TK: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order_S, inverse_S, tokens_per_expert_E): the stable sort of the T·K assignments by
    expert id, its inverse permutation, and the block sizes. Every dispatcher starts here."""
    flat_ids = expert_ids_TK.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    counts_E = torch.zeros(num_experts, dtype=torch.int64, device=flat_ids.device)
    counts_E.scatter_add_(0, flat_ids, torch.ones_like(flat_ids))
    return order, inverse_permutation(order), counts_E


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] = i`` (a scatter, cheaper than a second argsort)."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse
