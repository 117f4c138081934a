"""Inference-only MoE feed-forward: the model's router, then the cheapest expert kernel for the
number of (token, expert) assignments, then the combine.

The math per token is the model's (``MoELayer``): the same ``Router`` module picks the experts
and weights, each expert is ``down(silu(gate(x)) * up(x))`` with the stacked weights of
``GroupedExperts``, outputs are weighted and summed over the K slots in slot order. What
changes is how the expert products are batched:

* **CPU, fp32, the C kernel built** (``moelab.infer.cpu_kernel``): the router with the kernel's
  top-k and oneDNN logits, then the routed experts and their weighted sum in one C call, any
  number of tokens (it picks its own form per expert);
* otherwise, **few assignments** (decode; while the copy stays under ``GATHER_MAX_NUMEL``, the
  model's rule in ``MoELayer._gather``): copy just the selected experts' weights and run one
  batched matrix-vector product per assignment (``GroupedExperts.forward_gathered``): a grouped
  GEMM would run one small GEMM per expert, empty ones included;
* otherwise, **many** (prefill, big decode batches): sort assignments by expert once, one
  grouped GEMM per projection over each expert's contiguous block (``GroupedExperts.forward``,
  which falls back to a per-expert loop where grouped_mm can't run), and unsort with the
  inverse permutation. The router's per-expert counts are the group sizes (no second count).

The torch paths' combine is a (N, 1, K) @ (N, K, D) ``bmm`` in fp32 (as the model's CPU
combine), else the model's ``weighted_sum``, whose op order bf16 rounding depends on. Shared
experts (dots) use a fused gate/up weight.

Shapes: N tokens, K top_k, S = N·K assignments, D hidden, E experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moelab.infer import cpu_kernel
from moelab.infer.fast_layers import FastSwiGLU, linear
from moelab.model.dispatch import weighted_sum
from moelab.model.moe import GATHER_MAX_NUMEL, MoELayer


class FastMoE:
    def __init__(self, layer: MoELayer):
        self.gate, self.experts = layer.gate, layer.experts
        self.E, self.K = self.experts.num_experts, self.gate.top_k
        self.shared = None if layer.shared_experts is None else FastSwiGLU(layer.shared_experts)
        kernel = cpu_kernel.load() if self.experts.gate_up_proj.device.type == "cpu" else None
        weights = (self.experts.gate_up_proj, self.experts.down_proj)
        self.kernel = None if kernel is None or kernel.unsupported_weights(*weights) else kernel

    def __call__(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        kernel, experts = self.kernel, self.experts
        if kernel is not None and (x_ND.dtype != torch.float32 or torch.is_grad_enabled()):
            kernel = None  # weights were checked once, in __init__
        routing = self.gate(x_ND, topk=None if kernel is None else kernel.topk, linear=linear)
        ids_NK, w_NK = routing.expert_ids_TK, routing.weights_TK
        if kernel is not None:
            weights = (experts.gate_up_proj, experts.down_proj)
            y_ND = kernel.experts(x_ND, ids_NK, w_NK, *weights, trusted=True)
        else:
            if experts.gathered_numel(B * T * self.K) <= GATHER_MAX_NUMEL:
                y_NKD = experts.forward_gathered(x_ND, ids_NK)
            else:
                y_NKD = self._sorted(x_ND, ids_NK, routing.tokens_per_expert_E)
            y_ND = combine(y_NKD, w_NK, x_ND.dtype)
        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)
        return y_ND.view(B, T, D)

    def _sorted(
        self, x_ND: torch.Tensor, ids_NK: torch.Tensor, counts_E: torch.Tensor
    ) -> torch.Tensor:
        """Every expert's tokens as one contiguous block, one grouped GEMM, back in slot order."""
        N, K = ids_NK.shape
        order_S = torch.argsort(ids_NK.reshape(-1), stable=True)
        # F.embedding: ATen's fastest row gather on CPU (see model/dispatch_cpu.py).
        x_SD = F.embedding(torch.div(order_S, K, rounding_mode="floor"), x_ND)
        y_SD = self.experts(x_SD, counts_E)
        return F.embedding(torch.argsort(order_S), y_SD).view(N, K, -1)


def combine(y_NKD: torch.Tensor, w_NK: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """sum_k w_k · y_k: one bmm in fp32, the model's op order (and rounding) otherwise."""
    if y_NKD.dtype == w_NK.dtype == torch.float32:
        return torch.bmm(w_NK.unsqueeze(1), y_NKD).squeeze(1).to(out_dtype)
    return weighted_sum(y_NKD, w_NK, out_dtype)
