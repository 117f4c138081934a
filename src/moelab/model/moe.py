"""The MoE feed-forward layer: router → dispatcher → grouped experts → combine (+ shared experts).

Dropless token choice: every token reaches its top-k experts, however uneven the load.
Shared experts (dots.llm1) see the same normed input as the router and are added unscaled.
The dispatcher is an attribute so expert parallelism can swap in an all-to-all version
without touching this file.

Shapes: B batch, T sequence, N = B*T tokens, D hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from moelab.model.config import ModelConfig
from moelab.model.dispatch import LocalDispatcher
from moelab.model.experts import GroupedExperts
from moelab.model.layers import SwiGLU
from moelab.model.router import Router, RouterOutput


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
        x_sorted, counts, state = self.dispatcher.dispatch(
            x_ND, routing.expert_ids_TK, routing.weights_TK
        )
        y_ND = self.dispatcher.combine(self.experts(x_sorted, counts), state)
        y_BTD = y_ND.view(B, T, D)
        if self.shared_experts is not None:
            y_BTD = y_BTD + self.shared_experts(x_BTD)
        return y_BTD, routing
