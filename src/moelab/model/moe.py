"""The MoE feed-forward layer: router → dispatcher → grouped experts → combine (+ shared experts).

Dropless token choice: every token reaches its top-k experts, however uneven the load.
Shared experts (dots.llm1) see the same normed input as the router and are added unscaled.
The dispatcher is an attribute so expert parallelism can swap in an all-to-all version
without touching this file.

Few tokens without autograd (a decode step) take ``GroupedExperts.forward_gathered`` instead of
sort → grouped GEMM → unsort while the selected experts' weights are small to copy
(``GATHER_MAX_NUMEL``); the math is the same per token, and the combine is the same function.

Shapes: B batch, T sequence, N = B*T tokens, D hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from moelab.model.config import ModelConfig
from moelab.model.dispatch import LocalDispatcher, weighted_sum
from moelab.model.experts import GroupedExperts
from moelab.model.layers import SwiGLU
from moelab.model.router import Router, RouterOutput

GATHER_MAX_NUMEL = 1 << 21
"""Most weight elements the few-token path may copy per layer (8 MiB in fp32)."""


class MoELayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.gate = Router(cfg.hidden_size, m)
        self.experts = GroupedExperts(
            m.num_experts, cfg.hidden_size, m.expert_intermediate_size, impl=m.dispatch
        )
        self.shared_experts = (
            SwiGLU(cfg.hidden_size, m.num_shared_experts * m.expert_intermediate_size)
            if m.num_shared_experts > 0
            else None
        )
        self.dispatcher = LocalDispatcher(m.num_experts)

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        routing = self.gate(x_ND)
        if self._gather(B * T * routing.expert_ids_TK.shape[1]):
            y_TKD = self.experts.forward_gathered(x_ND, routing.expert_ids_TK)
            y_ND = weighted_sum(y_TKD, routing.weights_TK, x_ND.dtype)
            return self._add_shared(y_ND.view(B, T, D), x_BTD), routing
        y_ND = self.dispatcher.run(x_ND, routing.expert_ids_TK, routing.weights_TK, self.experts)
        return self._add_shared(y_ND.view(B, T, D), x_BTD), routing

    def _gather(self, assignments: int) -> bool:
        """Take the few-token path: inference only, local experts, a small weight copy.

        The copy's size is the only bound: on CPU, grouped_mm runs one small GEMM per expert
        (empty ones included) at a few microseconds each, which outweighs copying up to
        ``GATHER_MAX_NUMEL`` weights even with more assignments than experts. Measured on one
        core, all MoE layers of a model in turn (so weights are not cache-hot), per decode step:
        tiny-olmoe at 8 tokens (64 assignments, 64 experts) ties (2.59 vs 2.57 ms), at 10
        tokens 3.0 vs 4.2 ms; tiny-dots at 16 and 24 tokens (96, 144 assignments over 128
        experts) 0.8 vs 2.1 and 1.5 vs 2.1 ms; with the skewed routing of a randomly
        initialised model, gathered wins more (benchmarks/generate.py).
        """
        return (
            not torch.is_grad_enabled()
            and type(self.dispatcher) is LocalDispatcher
            and self.experts.gathered_numel(assignments) <= GATHER_MAX_NUMEL
        )

    def _add_shared(self, y_BTD: torch.Tensor, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.shared_experts is not None:
            y_BTD = y_BTD + self.shared_experts(x_BTD)
        return y_BTD
